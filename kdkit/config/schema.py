"""The engine's declared keys: what every method's config holds (:func:`base_config`), the
optimisation keys of one stage (:func:`train_section`), and which sections configure a registered
component (:data:`COMPONENT_SECTIONS`, :data:`ENGINE_KEYS`)."""
from __future__ import annotations

from kdkit.config.keys import ConfigKey

__all__ = ["base_config", "train_section", "TRAIN_KEYS", "COMPONENT_SECTIONS", "ENGINE_KEYS", "OPTIMIZERS", "SCHEDULERS",
           "SELECT_ON"]

#: Config paths whose keys are extended with the options of a registered component.
#: ``"teachers[]"`` means "every item of the list at ``teachers``".  Methods may extend this by
#: setting a class attribute ``component_sections`` (same format) on the method class.
COMPONENT_SECTIONS: dict[str, str] = {
    "data": "datasets",
    "student": "students",
    "teacher": "teachers",
    "teachers[]": "teachers",
}

#: Keys of a component section that the engine consumes (never passed to the factory).
ENGINE_KEYS = {
    "datasets": {"name", "root", "val_fraction", "num_workers"},
    "students": {"name"},
    "teachers": {"name", "train", "cache"},
}

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step", "multistep")
SELECT_ON = ("val", "test", "last")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def base_config() -> dict:
    """The keys every method shares, declared once (:class:`ConfigKey`).  A method starts from this
    and adds its own; a plain value it writes over one of these keys becomes that key's default
    (see :func:`inherit_declarations`)."""
    return {
        "method": ConfigKey("", "the method's name (filled in from --method)", type=str),
        "seed": ConfigKey(0, "seed of every random stream (data order, initialisation, augmentation)",
                          range="[0, inf)"),
        "device": ConfigKey("auto", "auto (cuda when available), cpu, cuda or cuda:N",
                            pattern=r"auto|cpu|cuda(:\d+)?"),
        "deterministic": ConfigKey(True, "torch.use_deterministic_algorithms where possible"),
        "data": {
            "name": ConfigKey("shapes", "dataset: a name of the datasets registry (kdkit plugins lists them)"),
            "root": ConfigKey(None, "directory of the dataset's files (null: the dataset's default)", type=str),
            "val_fraction": ConfigKey(0.1, "share of the training split held out to select checkpoints",
                                      range="[0, 1)"),
            "num_workers": ConfigKey(0, "DataLoader worker processes", range="[0, inf)"),
        },
        "train": train_section(),
        "checkpoint": {
            "select_on": ConfigKey("val", "split that picks the best epoch: val (held out from training), "
                                          "test (an optimistic, explicit opt-in) or last", choices=SELECT_ON),
            "save_best": ConfigKey(True, "write the best epoch's weights to checkpoints/<stage>/best.pt"),
        },
        "logging": {
            "progress": ConfigKey(True, "tqdm progress bars (rank 0, only when stderr is a terminal)"),
            "log_every": ConfigKey(0, "print a line every N optimiser steps (0: once per epoch)", range="[0, inf)"),
            "tensorboard": ConfigKey(False, "write TensorBoard event files to <run>/tensorboard "
                                            "(the kdkit_tensorboard plugin)"),
        },
    }


#: The optimisation keys of one stage, declared once (:func:`train_section`, :class:`kdkit.config.settings.TrainSettings`).
TRAIN_KEYS = {
    "epochs": ConfigKey(10, "training epochs of the stage", range="[1, inf)"),
    "batch_size": ConfigKey(64, "training batch size (global: split across DDP processes)", range="[1, inf)"),
    "eval_batch_size": ConfigKey(256, "batch size of evaluation and of teacher-output caching", range="[1, inf)"),
    "optimizer": ConfigKey("sgd", "optimiser: sgd, adam, adamw (kdkit's names) or a torch.optim class name "
                                  "(AdamW, RMSprop, ...)", type=str),
    "optimizer_options": ConfigKey({}, "keyword options of the optimiser class (its lr and weight_decay are "
                                       "train.lr and train.weight_decay)", type=dict),
    "lr": ConfigKey(0.05, "peak learning rate", range="(0, inf)"),
    "momentum": ConfigKey(0.9, "momentum of the sgd optimiser (a class name takes optimizer_options)",
                          range="[0, 1)"),
    "nesterov": ConfigKey(False, "Nesterov momentum of the sgd optimiser"),
    "weight_decay": ConfigKey(5e-4, "weight decay (L2 for SGD/Adam, decoupled for AdamW)", range="[0, inf)"),
    "scheduler": ConfigKey("cosine", "learning-rate schedule, stepped every optimiser step: none, cosine, step, "
                                     "multistep or a torch.optim.lr_scheduler class name (OneCycleLR, ...)", type=str),
    "scheduler_options": ConfigKey({}, "keyword options of a scheduler class, counted in optimiser steps (kdkit "
                                       "fills T_max, total_steps, total_iters, OneCycleLR's max_lr)", type=dict),
    "milestones": ConfigKey([], "epochs at which multistep multiplies the rate by gamma", items=int,
                            range="[0, inf)"),
    "step_size": ConfigKey(30, "epochs between decays of the step schedule", range="[1, inf)"),
    "gamma": ConfigKey(0.1, "decay factor of the step and multistep schedules", range="(0, 1]"),
    "warmup_epochs": ConfigKey(0.0, "linear warm-up length in epochs (fractions allowed)", range="[0, inf)"),
    "grad_clip": ConfigKey(None, "clip the gradient norm to this value (null: no clipping)", type=float,
                           range="(0, inf)"),
    "accumulate": ConfigKey(1, "micro-batches of batch_size per optimiser step (gradient accumulation: the "
                               "effective batch is batch_size x accumulate)", range="[1, inf)"),
    "precision": ConfigKey("auto", "autocast precision: fp32, bf16, fp16 (with GradScaler) or auto (train.amp: "
                                   "fp16 on CUDA, fp32 on CPU)", choices=PRECISIONS),
    "amp": ConfigKey(True, "deprecated, read only when precision is auto: fp16 autocast + GradScaler on CUDA"),
    "channels_last": ConfigKey(False, "channels_last memory format for the model and 4-D inputs"),
    "compile": ConfigKey(False, "train a torch.compile'd model (checkpoints keep the plain model's keys)"),
    "early_stop": {
        "patience": ConfigKey(0, "stop after this many epochs without improvement (0: never stop early)",
                              range="[0, inf)"),
        "metric": ConfigKey(None, "validation metric watched (null: the stage's selection metric)", type=str),
        "mode": ConfigKey(None, "max or min (null: the stage's select_mode)", type=str, choices=("max", "min")),
        "min_delta": ConfigKey(0.0, "the smallest change that counts as an improvement", range="[0, inf)"),
    },
}


def train_section(**overrides) -> dict:
    """The optimisation keys of one stage, with ``overrides`` as their defaults; ``train`` and every
    extra stage of a method (``teacher_train``, ...) use it."""
    unknown = sorted(set(overrides) - set(TRAIN_KEYS))
    if unknown:
        raise TypeError(f"train_section(): unknown key {unknown[0]!r}; valid: {', '.join(TRAIN_KEYS)}")
    return {k: _with_default(key, overrides[k]) if k in overrides else key for k, key in TRAIN_KEYS.items()}


def _with_default(declared, default):
    if isinstance(declared, dict):  # a nested section (early_stop): a default per key given
        unknown = sorted(set(default) - set(declared))
        if unknown:
            raise TypeError(f"train_section(): unknown key {unknown[0]!r}; valid: {', '.join(declared)}")
        return {k: key.with_default(default[k]) if k in default else key for k, key in declared.items()}
    return declared.with_default(default)
