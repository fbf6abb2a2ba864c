"""Every hook a kdkit plugin can implement — the one place they are specified.

Plugins mark implementations with :data:`kdkit.hookimpl` and implement any subset of these
functions (argument names must match; a plugin may accept fewer arguments than listed).

Two families:

* **Registration hooks** ``kdkit_register_<kind>(register)``: called once when the plugin
  manager builds its registries.  Call ``register(name, target, description="", options={...},
  **metadata)`` once per component — the one way every component is declared:

  - ``target``: a lazy import path ``"package.module:attribute"`` (imported when the component is
    first built, so registering imports no torch) or the callable itself;
  - ``options``: the keyword options the component takes, ``{name: kdkit.ConfigKey(default, help,
    type=..., range=..., choices=...)}``.  The config checks a component section against it, ``kdkit
    train --help-config`` lists it, and building through the registry checks and completes the
    options.  Without ``options`` the section is open: every option is passed on unchecked.

  The host records which plugin registered what, rejects duplicate names (naming both plugins)
  and lists valid choices for an unknown name.
* **Lifecycle hooks**: called by the trainer while a run proceeds.  They receive live objects
  and may change them (for example the learning rate of ``trainer.optimizer``); their return
  values are ignored.
"""
from __future__ import annotations

import pluggy

PROJECT_NAME = "kdkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- registration hooks -------------------------------------------------------------------

@hookspec
def kdkit_register_teachers(register):
    """Register teacher model factories.

    :param register: ``register(name, target, description="", options={...})``.
        ``target(num_classes: int, **options) -> torch.nn.Module`` builds the model; ``options``
        come from the config section of the teacher.  Every model also takes ``pretrained`` (a local
        weights file), ``pretrained_key`` and ``pretrained_strict``: unless ``options`` declares
        ``pretrained`` itself, kdkit loads the file with ``kdkit.load_weights`` after ``target`` returns.
        A name ending with a colon (``"mysource:"``) registers a source of names ``mysource:REST``:
        ``target(REST)`` returns ``(factory, options, description)`` (kdkit's own: ``torchvision:``,
        ``timm:``, ``hf:``, ``py:``).
    """


@hookspec
def kdkit_register_students(register):
    """Register student model factories.

    :param register: ``register(name, target, description="", options={...})``, with the same
        signature as for teachers: ``target(num_classes: int, **options) -> torch.nn.Module``.
    """


@hookspec
def kdkit_register_text_relaxers(register):
    """Register text relaxers: components that turn class names into relaxed text embeddings.

    :param register: ``register(name, target, description="", options={...})``.  ``target(**options)``
        returns an object the method that uses it documents (``wordnet_relax`` documents its
        own interface).
    """


@hookspec
def kdkit_register_losses(register):
    """Register distillation losses.

    :param register: ``register(name, target, description="", options={...})``.  ``target(**options)``
        returns a callable ``loss(inputs) -> Tensor``: ``inputs`` is a ``kdkit.distill.DistillInputs``
        (student and teacher logits, the term's tapped ``student_feature`` / ``teacher_feature``,
        labels, sample indices, temperature, epoch, step), the result a scalar already multiplied
        by whatever scale the loss defines (e.g. ``T**2``).  A loss with trainable parts is an
        ``nn.Module`` that may build them on its first call; they train with the student and are
        checkpointed with the stage.  Metadata ``inputs="features"`` declares a loss that reads the
        term's tapped features (it needs ``student:`` and ``teacher:`` module paths): a term without
        them is refused when the config is checked, before anything trains.
    """


@hookspec
def kdkit_register_datasets(register):
    """Register datasets.

    :param register: ``register(name, target, description="", options={...})``.  ``target(split: str,
        root: str | None, **options)`` returns a ``torch.utils.data.Dataset`` for ``split`` in
        ``{"train", "test"}``; classification datasets expose ``classes: list[str]`` and
        yield ``(image_tensor, label)``.
    """


@hookspec
def kdkit_register_methods(register):
    """Register distillation methods — what ``kdkit train --method NAME`` selects.

    :param register: ``register(name, target, description="")``, ``target`` the method class or its
        import path (methods take no ``options``: their keys are their config).  The class implements
        the method protocol, declared once by :class:`kdkit.Method` (subclass it): ``default_config()``
        (the full config tree: ``kdkit.base_config()`` plus the method's keys, declared with
        ``kdkit.ConfigKey``), optional ``check_config(config, registry)`` (rules across keys, checked
        before a run directory exists), ``run(ctx) -> dict`` (the run summary) and, optionally,
        ``evaluate(ctx)`` and ``encode(...)``.
    """


# --- lifecycle hooks ----------------------------------------------------------------------

@hookspec
def kdkit_configure(config, run_dir):
    """Called once per run after the config is resolved and before any training.

    :param config: the resolved config (a nested ``dict``; changes here take effect).  This is the
        last place to change it: the run then reads a frozen view of it (``ctx.config.train.lr``,
        :class:`kdkit.config.view.FrozenConfig`).
    :param run_dir: ``pathlib.Path`` of the run directory (``None`` on non-zero ranks).
    """


@hookspec
def kdkit_before_epoch(trainer, epoch):
    """Called at the start of every training epoch of every stage.

    :param trainer: the :class:`kdkit.engine.Trainer` running the stage (``trainer.stage``
        names it; ``trainer.model``, ``trainer.optimizer``, ``trainer.scheduler`` are live).
    :param epoch: the 0-based epoch about to run.
    """


@hookspec
def kdkit_after_step(trainer, step, loss, logs):
    """Called after every optimisation step.

    :param trainer: the running :class:`kdkit.engine.Trainer`.
    :param step: the global 0-based step just finished within the stage.
    :param loss: the loss of the step as a Python ``float``.
    :param logs: ``dict[str, float]`` of extra per-step values the method reported.
    """


@hookspec
def kdkit_after_evaluation(trainer, epoch, metrics):
    """Called after every evaluation on the validation split.

    :param trainer: the running :class:`kdkit.engine.Trainer`.
    :param epoch: the 0-based epoch that was evaluated.
    :param metrics: ``dict[str, float]`` as written to ``metrics.jsonl`` (e.g. ``val.top1``).
    """


@hookspec
def kdkit_after_epoch(trainer, epoch, metrics):
    """Called at the end of every training epoch, after evaluation and checkpointing.

    :param trainer: the running :class:`kdkit.engine.Trainer`.
    :param epoch: the 0-based epoch just finished.
    :param metrics: ``dict[str, float]`` of the epoch (train loss, validation metrics).
    """


@hookspec
def kdkit_run_finished(run_dir, summary):
    """Called once when a run ends successfully, after ``summary.json`` is written.

    :param run_dir: ``pathlib.Path`` of the run directory (``None`` on non-zero ranks).
    :param summary: the run summary ``dict`` as written to ``summary.json``.
    """
