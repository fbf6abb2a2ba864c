#!/usr/bin/env python
"""Training-step benchmark: images/s of one knowledge-distillation step, three ways, in one run.

One step = teacher forward under ``no_grad`` (online, not cached) + student forward/backward +
optimiser step, on one Fashion-MNIST batch (128 images, replicated to 3 x 28 x 28), with the
same models (kdkit's ``resnet14`` teacher, ``resnet8`` width-8 student), the same initial weights
(built once, deep-copied), the same SGD (lr 0.05, momentum 0.9, no weight decay) and the same
objective ``alpha * CE + (1 - alpha) * T^2 * KL`` (alpha 0.5, T 4) [+ a FitNet hint term]:

* ``plain``       — a hand-written PyTorch loop: the floor;
* ``kdkit``       — what a ``kd`` run executes per batch: ``build_distiller`` + ``DistillStep``
  (``FeatureTaps``, ``Distiller``, the teacher-agreement guard) driven by the ``Trainer``'s own
  batch loop (``Trainer.train_model_step`` and the ``kdkit_after_step`` hook per batch), with the
  process's plugin manager (its ``kdkit_after_step`` hook relay) and ``teacher_cache: false``;
* ``torchdistill`` — torchdistill's ``DistillationBox`` (``get_distillation_box``) with
  ``WeightedSumLoss`` / ``KDLoss``; the hint term through its forward-hook I/O dicts, a
  ``Connector4DAB`` regressor and ``SimpleLossWrapper(MSELoss)``.

Models (``--models``): ``fashion`` (the default, the CPU case above) or ``cifar-x4``: RepDistiller's
``resnet32x4`` teacher and ``resnet8x4`` student on random CIFAR-size data (3 x 32 x 32, 100 classes).
``--device cuda``, ``--precision bf16`` (autocast; each implementation's forward passes and loss
under it, as ``train.precision: bf16`` runs kdkit's) and ``--channels-last`` (models and batch; kdkit
through ``train.channels_last``) make the GPU case; ``--gpu`` is all of them at batch 256 (issue 24:
kdkit within 3 % of the plain loop).  On CUDA each timed round ends with a synchronisation, and
every implementation's host synchronisations per step are counted once (torch's sync debug mode):
a training loop that waits for the GPU every step cannot queue work ahead of it.

Two configurations: ``kl`` (logits only) and ``kl+fitnet`` (plus ``MSE(1x1 conv(student layer2),
teacher layer2)``, weight 1; student and teacher ``layer2`` taps included).

Method: the three are checked to compute the same loss (first three steps, from the same weights),
warmed up, then timed in interleaved rounds (the order rotates every round) of ``--steps`` steps
each, so that load on the (shared) machine hits them alike; per implementation the median
images/s over the rounds and its spread are reported, with kdkit/plain and kdkit/torchdistill
(the median of the per-round ratios).  Each round also records the minor page faults per step and
the share of the machine's CPU that other processes used meanwhile (from ``/proc/stat``): on a
shared machine a round with a busy neighbour is many times slower, and the table says so.

Allocator: on CPU a large part of a step is glibc malloc handing freed activations back to the
kernel and faulting them in again (tens of thousands of page faults per step), which depends on
the order of allocations more than on the framework.  ``--allocator both`` (the default) measures
in two processes: glibc as it comes, and with ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
pinned (no faults: the low-noise comparison of the frameworks' own work).

Usage::

    .venv/bin/python benchmarks/train_step.py [--steps 10 --rounds 7 --warmup 5 --allocator both --json out.json]
    python benchmarks/train_step.py --gpu --json train-step-cuda.json     # on a GPU machine

torchdistill is optional (``pip install kdkit[bench]``); without it its rows say so.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

FASHION_IMAGES = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
FASHION_LABELS = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530

ALPHA = 0.5          # distill.alpha: weight of CE; the KD term gets 1 - alpha
TEMPERATURE = 4.0    # distill.temperature
HINT_WEIGHT = 1.0    # weight of the FitNet hint term
HINT_STUDENT, HINT_TEACHER = "layer2", "layer2"
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 0.0
NUM_CLASSES = 10
#: ``--models``: (teacher, student and its width option, classes, input size, data)
MODEL_SETS = {
    "fashion": {"teacher": ("resnet14", {}), "student": ("resnet8", {"width": 8}), "classes": NUM_CLASSES,
                "size": 28, "data": "fashion-mnist"},
    "cifar-x4": {"teacher": ("resnet32x4", {}), "student": ("resnet8x4", {}), "classes": 100, "size": 32,
                 "data": "random"},
}
#: ``--gpu``: the issue-24 case (what it sets, applied over the command line's own values)
GPU_PRESET = {"device": "cuda", "models": "cifar-x4", "batch_size": 256, "precision": "bf16", "channels_last": True,
              "allocator": "default"}
#: the most kdkit may add to the plain loop's time per step (README's targets), by device
OVERHEAD_TARGET_PCT = {"cpu": 5.0, "cuda": 3.0}
#: relative tolerance of the first losses' agreement; under bf16 autocast the weights drift apart in the
#: last bits after one step (atomics in cuDNN's weight gradients), bf16 activations magnify it
LOSS_RTOL = {"fp32": 1e-4, "bf16": 2e-2}
TD_MISSING = "not installed (pip install kdkit[bench])"
CHECK_STEPS = 3      # steps whose losses must agree across the implementations
#: glibc malloc settings of ``--allocator tuned`` (read by glibc at process start)
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
CONFIGS = ("kl", "kl+fitnet")
IMPLS = ("plain", "kdkit", "torchdistill", "plain+item")


# --- data and models ----------------------------------------------------------------------------

def load_batch(batch_size: int, seed: int = 0, models: str = "fashion"):
    """``(x, y, source)``: ``batch_size`` Fashion-MNIST training images (normalised, 3 channels)
    and labels, or random data of that shape when the files are missing or the models are
    ``cifar-x4`` (random CIFAR-size images and 100 classes)."""
    spec = MODEL_SETS[models]
    if spec["data"] == "fashion-mnist" and os.path.exists(FASHION_IMAGES) and os.path.exists(FASHION_LABELS):
        with gzip.open(FASHION_IMAGES, "rb") as fh:
            images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_LABELS, "rb") as fh:
            labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
        pick = np.random.default_rng(seed).choice(len(images), batch_size, replace=False)
        x = torch.from_numpy(images[pick].astype(np.float32) / 255.0)
        x = ((x - FASHION_MEAN) / FASHION_STD).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        return x, torch.from_numpy(labels[pick].astype(np.int64)), FASHION_IMAGES
    g = torch.Generator().manual_seed(seed)
    size = spec["size"]
    source = "random" if spec["data"] == "random" else "random (Fashion-MNIST files not found)"
    return (torch.randn(batch_size, 3, size, size, generator=g),
            torch.randint(0, spec["classes"], (batch_size,), generator=g), source)


def build_models(seed: int = 0, models: str = "fashion"):
    """The teacher (frozen, eval mode) and the student (train mode), built once."""
    from kdkit.models.zoo import build_model

    spec = MODEL_SETS[models]
    torch.manual_seed(seed)
    teacher = build_model(spec["teacher"][0], spec["classes"], **spec["teacher"][1])
    student = build_model(spec["student"][0], spec["classes"], **spec["student"][1])
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    return teacher, student


class Placement:
    """Where and how every implementation runs: the device, the autocast dtype (``None``: fp32) and
    the memory format of the models and the batch."""

    def __init__(self, device: str = "cpu", precision: str = "fp32", channels_last: bool = False):
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        self.channels_last = channels_last

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def model(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# --- the implementations (three, and plain+item on CUDA) ---------------------------------------------

class Plain:
    """The floor: a hand-written PyTorch KD loop (forward hooks on layer2 for the hint term)."""

    name = "plain"

    def __init__(self, teacher, student, x, y, place: Placement, regressor=None):
        self.teacher, self.student, self.x, self.y = teacher, student, x, y
        self.place, self.regressor = place, regressor
        params = list(student.parameters()) + (list(regressor.parameters()) if regressor is not None else [])
        self.opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.feats: dict = {}
        if regressor is not None:
            student.get_submodule(HINT_STUDENT).register_forward_hook(self._store("s"))
            teacher.get_submodule(HINT_TEACHER).register_forward_hook(self._store("t"))

    def _store(self, key):
        def hook(module, inputs, output):
            self.feats[key] = output
        return hook

    def _step(self) -> torch.Tensor:
        with self.place.autocast():
            s = self.student(self.x)
            with torch.no_grad():
                t = self.teacher(self.x)
            ce = F.cross_entropy(s, self.y)
            kl = F.kl_div(F.log_softmax(s / TEMPERATURE, dim=1), F.log_softmax(t / TEMPERATURE, dim=1),
                          reduction="batchmean", log_target=True)
            loss = ALPHA * ce + (1.0 - ALPHA) * TEMPERATURE * TEMPERATURE * kl
            if self.regressor is not None:
                loss = loss + HINT_WEIGHT * F.mse_loss(self.regressor(self.feats.pop("s")), self.feats.pop("t"))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def step_loss(self) -> float:
        return float(self._step().item())

    def start_round(self) -> None:
        pass

    def run(self, n: int) -> None:
        for _ in range(n):
            self._step()


class PlainItem(Plain):
    """The plain loop reading its loss with ``.item()`` every step, as kdkit's ``Trainer`` does (on
    CUDA only: it prices one host synchronisation per step, the part of kdkit's overhead that is
    not Python)."""

    name = "plain+item"

    def run(self, n: int) -> None:
        for _ in range(n):
            self._step().item()


class Kdkit:
    """kdkit's real path: what ``KDMethod.run`` builds for an online teacher, stepped by the
    ``Trainer``'s per-batch step (``train_model_step`` and the ``kdkit_after_step`` hook) on the same batch ``n`` times."""

    name = "kdkit"

    def __init__(self, teacher, student, x, y, features: bool, run_dir: str, place: Placement):
        import kdkit
        from kdkit.config import plain_defaults
        from kdkit.distill.step import DistillStep, build_distiller
        from kdkit.distill.terms import agreement_samples
        from kdkit.distill.agreement import TeacherAgreement
        from kdkit.engine import RunContext, Stage, WithIndex
        from kdkit.seeding import derive_seed
        from kdkit.methods.kd import KDMethod

        defaults = KDMethod.default_config()
        cfg = plain_defaults(defaults)
        cfg["method"] = "kd"
        cfg["device"] = str(place.device)
        cfg["logging"]["progress"] = False
        cfg["train"].update({"batch_size": int(x.shape[0]), "optimizer": "sgd", "lr": LR, "momentum": MOMENTUM,
                             "weight_decay": WEIGHT_DECAY, "scheduler": "none", "precision": place.precision,
                             "channels_last": place.channels_last})
        dcfg = cfg["distill"]
        dcfg.update({"alpha": ALPHA, "temperature": TEMPERATURE, "teacher_cache": False, "combine": "avg_logits"})
        if features:
            dcfg["terms"] = [{"loss": "kl", "weight": 1.0 - ALPHA, "name": "kd"},
                             {"loss": "fitnet", "weight": HINT_WEIGHT, "student": HINT_STUDENT,
                              "teacher": HINT_TEACHER, "name": "hint",
                              # the bare 1x1 convolution the others use (fitnet's default adds BN + ReLU)
                              "options": {"regressor": "conv"}}]
        try:
            manager = kdkit.get_plugin_manager()
            self.hooks = f"plugin manager ({len(manager.get_plugins())} plugins)"
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the benchmark
            manager = None
            self.hooks = f"no plugin manager ({type(exc).__name__}: {exc})"
        self.ctx = RunContext(cfg, run_dir, manager, device=place.device)
        teachers = [teacher]
        distiller = build_distiller(self.ctx.registry("losses"), dcfg, len(teachers),
                                    plain_defaults(defaults["distill"]))
        self.agreement_log: list[str] = []
        agreement = TeacherAgreement(["teacher.resnet14"], [None], self.agreement_log.append,
                                     agreement_samples(dcfg))

        def teacher_logits(x_, y_, idx):  # KDMethod.run's online teachers (no cache)
            return [t(x_) for t in teachers]

        step = DistillStep(distiller, student, teacher_logits, teachers, agreement, None)
        data = WithIndex(torch.utils.data.TensorDataset(x, y))
        step.materialize(student, data, int(x.shape[0]), self.ctx.device, derive_seed(self.ctx.seed, "init", "distill"))
        self.stage = Stage(name="student", model=student, train_data=data, step_fn=step, taps=step.taps,
                           extra_modules={"distill": distiller, "agreement": agreement},
                           before_epoch_fn=step.before_epoch)
        self.trainer = self.ctx.trainer(self.stage)
        self.trainer._build(1)
        for taps in self.stage.taps:
            taps.attach()
        self.trainer._set_train(True)
        self.distiller, self.step = distiller, step
        self.batch = [x, y, torch.arange(x.shape[0])]  # what the loader yields: (x, y, sample index)

    @property
    def regressor(self):
        terms = dict(self.distiller.terms.items())  # an nn.ModuleDict has no .get
        return terms["hint"].regressor if "hint" in terms else None

    def step_loss(self) -> float:
        loss, _ = self.trainer.train_model_step(self.trainer._prepare(self.batch))
        return float(loss)

    def start_round(self) -> None:
        pass

    def run(self, n: int) -> None:
        # what the Trainer's batch loop does per batch: _prepare (to the device, channels_last), train_model_step
        # (step_fn under autocast, .item() of the loss and logs, zero_grad, backward, optimiser step, schedule
        # step) and the kdkit_after_step hook
        for _ in range(n):
            loss, logs = self.trainer.train_model_step(self.trainer._prepare(self.batch))
            self.trainer._after_step(0, loss, logs, None)

    def close(self) -> None:
        for taps in self.stage.taps:
            taps.remove()
        self.ctx.close()


class Torchdistill:
    """torchdistill's single-stage ``DistillationBox``, stepped as its example training loop does
    (``forward_process`` then ``post_forward_process``)."""

    name = "torchdistill"

    def __init__(self, teacher, student, x, y, features: bool, place: Placement, regressor_weight=None):
        import logging

        from torchdistill.core.distillation import get_distillation_box

        logging.getLogger("torchdistill").setLevel(logging.WARNING)
        kd = {"criterion": {"key": "KDLoss", "kwargs": {
            "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
            "teacher_module_io": "output", "temperature": TEMPERATURE, "alpha": ALPHA, "reduction": "batchmean"}},
            "weight": 1.0}
        # forward_batch_only: model(x), as torchdistill's image-classification configs use
        teacher_cfg: dict = {"requires_grad": False, "forward_proc": "forward_batch_only"}
        student_cfg: dict = {"requires_grad": True, "forward_proc": "forward_batch_only"}
        sub_terms = {"kd": kd}
        if features:
            s_ch = student.get_submodule(HINT_STUDENT)[-1].bn2.num_features
            t_ch = teacher.get_submodule(HINT_TEACHER)[-1].bn2.num_features
            teacher_cfg["forward_hook"] = {"input": [], "output": [HINT_TEACHER]}
            student_cfg["auxiliary_model_wrapper"] = {"key": "Connector4DAB", "kwargs": {"connectors": {
                "hint": {"io": "output", "path": f"student_model.{HINT_STUDENT}",
                         "conv2d_kwargs": {"in_channels": s_ch, "out_channels": t_ch, "kernel_size": 1,
                                           "bias": False}}}}}
            student_cfg["forward_hook"] = {"input": [], "output": [f"student_model.{HINT_STUDENT}",
                                                                   "connector_dict.hint"]}
            sub_terms["hint"] = {
                "criterion": {"key": "MSELoss", "kwargs": {"reduction": "mean"}},
                "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {
                    "input": {"is_from_teacher": False, "module_path": "connector_dict.hint", "io": "output"},
                    "target": {"is_from_teacher": True, "module_path": HINT_TEACHER, "io": "output"}}},
                "weight": HINT_WEIGHT}
        train_config = {
            "num_epochs": 1,
            "teacher": teacher_cfg,
            "student": student_cfg,
            "optimizer": {"key": "SGD", "kwargs": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}},
            "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": sub_terms}},
        }
        self.box = get_distillation_box(teacher, student, {}, train_config, place.device, None, False, 1)
        if features:
            conv = self.box.student_model.connector_dict["hint"][0]
            with torch.no_grad():
                conv.weight.copy_(regressor_weight)
        self.x, self.y, self.supp, self.place = x, y, {}, place
        self.box.pre_epoch_process(epoch=0)

    def step_loss(self) -> float:
        with self.place.autocast():  # torchdistill's own mixed precision goes through HF accelerate
            loss = self.box.forward_process(self.x, self.y, self.supp)
        value = float(loss.item())
        self.box.post_forward_process(loss=loss)
        return value

    def start_round(self) -> None:
        self.box.pre_epoch_process(epoch=0)

    def run(self, n: int) -> None:
        box, x, y, supp, autocast = self.box, self.x, self.y, self.supp, self.place.autocast
        for _ in range(n):
            with autocast():
                loss = box.forward_process(x, y, supp)
            box.post_forward_process(loss=loss)


def torchdistill_version() -> str | None:
    try:
        from importlib.metadata import version

        import torchdistill  # noqa: F401

        return version("torchdistill")
    except Exception:  # noqa: BLE001
        return None


# --- measurement ------------------------------------------------------------------------------

def build(config: str, x, y, run_dir: str, td: bool, place: Placement | None = None,
          models: str = "fashion", item_baseline: bool | None = None) -> dict:
    """The implementations of ``config`` from one teacher/student (deep copies), placed alike;
    ``plain+item`` where ``item_baseline`` (default: on CUDA)."""
    place = place or Placement()
    if item_baseline is None:
        item_baseline = place.device.type == "cuda"
    features = config == "kl+fitnet"
    teacher, student = (place.model(m) for m in build_models(seed=0, models=models))
    x, y = place.batch(x), y.to(place.device)
    impls: dict = {}
    # kdkit first: its FitNet regressor is built (seeded) by DistillStep.materialize; the others copy it
    k = Kdkit(copy.deepcopy(teacher), copy.deepcopy(student), x, y, features, os.path.join(run_dir, config), place)
    regressor = k.regressor
    impls["plain"] = Plain(copy.deepcopy(teacher), copy.deepcopy(student), x, y, place,
                           copy.deepcopy(regressor) if features else None)
    impls["kdkit"] = k
    if item_baseline:
        impls["plain+item"] = PlainItem(copy.deepcopy(teacher), copy.deepcopy(student), x, y, place,
                                        copy.deepcopy(regressor) if features else None)
    if td:
        impls["torchdistill"] = Torchdistill(copy.deepcopy(teacher), copy.deepcopy(student), x, y, features, place,
                                             regressor.weight.detach().clone() if features else None)
    return impls


def check_equal_work(impls: dict, steps: int = CHECK_STEPS, rtol: float = LOSS_RTOL["fp32"]) -> dict:
    """The first ``steps`` losses of every implementation, from the same weights; assert close."""
    losses = {name: [impl.step_loss() for _ in range(steps)] for name, impl in impls.items()}
    ref = losses["plain"]
    for name, values in losses.items():
        for i, (a, b) in enumerate(zip(values, ref)):
            assert abs(a - b) <= rtol * max(abs(b), 1e-8), \
                f"{name} computes loss {a!r} at step {i + 1}, plain {b!r}: not the same work"
    return losses


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (``/proc/stat``; ``None`` where unreadable)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def host_syncs_per_step(impl, place: Placement) -> int | None:
    """How many times one step of ``impl`` waits for the GPU (torch's sync debug mode warns at each
    synchronising call on the calling thread); ``None`` off CUDA."""
    if place.device.type != "cuda":
        return None
    place.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            impl.run(1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    place.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def time_rounds(impls: dict, steps: int, rounds: int, batch: int,
                place: Placement | None = None) -> tuple[dict, dict, dict]:
    """images/s of ``steps`` steps per round, interleaved (the order rotates every round); per
    round the share of the machine's CPU time that *other* processes used meanwhile (the machine
    may be shared; ``None`` without ``/proc/stat``) and the minor page faults per step (memory
    the allocator handed back to the kernel and touched again).  On CUDA a round is timed from an idle
    GPU to the end of its last step's kernels."""
    place = place or Placement()
    names = list(impls)
    ips: dict = {n: [] for n in names}
    foreign: dict = {n: [] for n in names}
    faults: dict = {n: [] for n in names}
    cores = os.cpu_count() or 1
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            impl = impls[name]
            impl.start_round()
            place.synchronize()
            busy0, own0, flt0 = _busy_seconds(), os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            impl.run(steps)
            place.synchronize()
            dt = time.perf_counter() - t0
            busy1, own1, flt1 = _busy_seconds(), os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ips[name].append(steps * batch / dt)
            faults[name].append((flt1 - flt0) / steps)
            if busy0 is not None and busy1 is not None:
                own = (own1.user + own1.system) - (own0.user + own0.system)
                foreign[name].append(max(0.0, (busy1 - busy0) - own) / (dt * cores))
            else:
                foreign[name].append(None)
    return ips, foreign, faults


def summarise(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "q1": q[0], "q3": q[2], "rounds": list(samples)}


def ratio(a: list[float], b: list[float]) -> dict:
    """kdkit-vs-peer: the ratio of medians, and the median of per-round ratios (paired rounds)."""
    paired = [x / y for x, y in zip(a, b)]
    return {"of_medians": statistics.median(a) / statistics.median(b), "paired_median": statistics.median(paired),
            "paired_min": min(paired), "paired_max": max(paired)}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    return platform.processor() or "unknown"


def fmt_row(label: str, s: dict | None, missing: str = "") -> str:
    if s is None:
        return f"  {label:<14} {missing}"
    return (f"  {label:<14} {s['median']:9.1f}   {s['min']:8.1f} – {s['max']:<8.1f}  "
            f"{s['q1']:8.1f} – {s['q3']:<8.1f}  {s.get('page_faults_per_step', float('nan')):10.0f}")


def allocator_env(mode: str) -> dict:
    """The environment of a measuring process: glibc malloc as it comes (``default``) or with its
    dynamic mmap threshold and heap trimming pinned (``tuned``), so that freed activations stay
    mapped instead of being returned to the kernel and faulted in again on every step."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNING}
    if mode == "tuned":
        env.update(MALLOC_TUNING)
    return env


def measure(args, configs: list[str], mode: str) -> dict:
    """One process's measurement (the allocator is fixed at process start): every config, its
    implementations interleaved; prints the tables and returns the results."""
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    place = Placement(args.device, args.precision, args.channels_last)
    if place.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for every implementation alike: the fastest kernels per shape
    td_version = None if args.no_torchdistill else torchdistill_version()
    td_missing = "skipped (--no-torchdistill)" if args.no_torchdistill else TD_MISSING
    load_start = os.getloadavg()
    x, y, source = load_batch(args.batch_size, models=args.models)
    spec = MODEL_SETS[args.models]
    meta = {
        "allocator": mode, "malloc_env": {k: os.environ[k] for k in MALLOC_TUNING if k in os.environ},
        "torch": torch.__version__, "torchdistill": td_version, "python": platform.python_version(),
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "batch": args.batch_size, "input": list(x.shape[1:]), "data": source,
        "steps_per_round": args.steps, "rounds": args.rounds, "warmup_steps": args.warmup,
        "models": args.models, "teacher": spec["teacher"][0] + (" (width 16)" if args.models == "fashion" else ""),
        "student": spec["student"][0] + (" (width 8)" if args.models == "fashion" else ""),
        "device": str(place.device), "gpu": torch.cuda.get_device_name(place.device) if place.device.type == "cuda"
        else None, "precision": args.precision, "channels_last": args.channels_last,
        "overhead_target_pct": OVERHEAD_TARGET_PCT[place.device.type],
        "optimizer": f"SGD lr {LR} momentum {MOMENTUM} weight_decay {WEIGHT_DECAY}",
        "loss": f"{ALPHA}*CE + {1 - ALPHA}*T^2*KL (T={TEMPERATURE}) [+ {HINT_WEIGHT}*MSE(conv1x1(student "
                f"{HINT_STUDENT}), teacher {HINT_TEACHER})]",
        "loadavg_start": list(load_start),
    }
    print(f"\n=== allocator: {mode} {meta['malloc_env'] or '(glibc malloc defaults)'}; torch {meta['torch']}, "
          f"{meta['torch_threads']} threads on {meta['cores']} cores ({meta['cpu']}); "
          f"torchdistill {td_version or td_missing}", flush=True)
    print(f"device {place.device}{' (' + meta['gpu'] + ')' if meta['gpu'] else ''}, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}; {meta['teacher']} -> {meta['student']}", flush=True)
    print(f"batch {args.batch_size} x {tuple(x.shape[1:])} from {source}; {args.rounds} rounds x "
          f"{args.steps} steps per implementation after {CHECK_STEPS} checked + {args.warmup} warm-up steps; "
          f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)

    results: dict = {"meta": meta, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="kdkit-train-step-") as run_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for config in configs:
            t0 = time.perf_counter()
            impls = build(config, x, y, run_dir, td_version is not None, place, args.models)
            losses = check_equal_work(impls, rtol=LOSS_RTOL[args.precision])
            for impl in impls.values():
                impl.run(args.warmup)
            syncs = {name: host_syncs_per_step(impl, place) for name, impl in impls.items()}
            ips, foreign, faults = time_rounds(impls, args.steps, args.rounds, args.batch_size, place)
            impls["kdkit"].close()
            stats = {name: summarise(v) for name, v in ips.items()}
            shares = [f for v in foreign.values() for f in v if f is not None]
            for name, v in faults.items():
                stats[name]["page_faults_per_step"] = statistics.median(v)
            entry = {"first_losses": losses, "images_per_s": stats, "foreign_cpu_share": foreign,
                     "page_faults_per_step": faults, "host_syncs_per_step": syncs,
                     "foreign_cpu_share_median": statistics.median(shares) if shares else None,
                     "foreign_cpu_share_max": max(shares) if shares else None,
                     "kdkit_vs_plain": ratio(ips["kdkit"], ips["plain"]),
                     "kdkit_hooks": impls["kdkit"].hooks, "seconds": time.perf_counter() - t0}
            entry["kdkit_overhead_pct"] = 100.0 * (1.0 / entry["kdkit_vs_plain"]["paired_median"] - 1.0)
            if "torchdistill" in ips:
                entry["kdkit_vs_torchdistill"] = ratio(ips["kdkit"], ips["torchdistill"])
                entry["torchdistill_overhead_pct"] = 100.0 * (
                    1.0 / ratio(ips["torchdistill"], ips["plain"])["paired_median"] - 1.0)
            else:
                entry["torchdistill"] = td_missing
            results["configs"][config] = entry
            print(f"\n[{config}, {mode} malloc]  kdkit hooks: {entry['kdkit_hooks']}; first losses: "
                  + ", ".join(f"{k} {v[0]:.6f}" for k, v in losses.items()) + f"  ({entry['seconds']:.0f} s)")
            print(f"  {'':<14} {'images/s':>9}   {'min – max':^19}  {'IQR':^19}  page faults/step")
            print(f"  {'':<14} {'(median)':>9}")
            for name in IMPLS:
                if name in stats or name == "torchdistill":
                    print(fmt_row(name, stats.get(name), td_missing))
            if shares:
                print(f"  other processes used {100 * entry['foreign_cpu_share_median']:.0f} % of the machine's CPU "
                      f"during the median timed round (max {100 * entry['foreign_cpu_share_max']:.0f} %)")
            kp = entry["kdkit_vs_plain"]
            print(f"  kdkit / plain        {kp['paired_median']:.3f} (paired rounds {kp['paired_min']:.3f} – "
                  f"{kp['paired_max']:.3f}; ratio of medians {kp['of_medians']:.3f}) -> kdkit overhead "
                  f"{entry['kdkit_overhead_pct']:+.1f} % time per step (target < "
                  f"{OVERHEAD_TARGET_PCT[place.device.type]:g} %)")
            if "plain+item" in ips:
                entry["item_per_step_cost_pct"] = 100.0 * (
                    1.0 / ratio(ips["plain+item"], ips["plain"])["paired_median"] - 1.0)
                print(f"  plain + .item() per step: {entry['item_per_step_cost_pct']:+.1f} % time per step over plain "
                      "(what one host synchronisation per step costs)")
            if place.device.type == "cuda":
                print("  host synchronisations per step: " + ", ".join(f"{k} {v}" for k, v in syncs.items()))
            if "kdkit_vs_torchdistill" in entry:
                kt = entry["kdkit_vs_torchdistill"]
                print(f"  kdkit / torchdistill {kt['paired_median']:.3f} (paired rounds {kt['paired_min']:.3f} – "
                      f"{kt['paired_max']:.3f}; ratio of medians {kt['of_medians']:.3f}); torchdistill overhead "
                      f"over plain {entry['torchdistill_overhead_pct']:+.1f} %")
            else:
                print(f"  kdkit / torchdistill {td_missing}")
            sys.stdout.flush()
    meta["loadavg_end"] = list(os.getloadavg())
    return results


def summary(runs: dict) -> str:
    """The README table: median images/s [min – max] and the kdkit ratios, per allocator."""
    modes = list(runs)
    lines = [f"  {'config':<10} {'implementation':<18} " + " ".join(f"{m + ' malloc':>26}" for m in modes)]
    configs = list(next(iter(runs.values()))["configs"])
    for config in configs:
        for name in IMPLS:
            if name == "plain+item" and not any(name in runs[m]["configs"][config]["images_per_s"] for m in modes):
                continue
            cells = []
            for m in modes:
                s = runs[m]["configs"][config]["images_per_s"].get(name)
                cells.append(f"{s['median']:7.0f} [{s['min']:5.0f} – {s['max']:5.0f}] img/s" if s else
                             runs[m]["configs"][config].get("torchdistill", "-").split(" (")[0])
            lines.append(f"  {config:<10} {name:<18} " + " ".join(f"{c:>26}" for c in cells))
        cells = []
        for m in modes:
            c = runs[m]["configs"][config]
            cells.append("-" if c.get("foreign_cpu_share_median") is None else
                         f"{100 * c['foreign_cpu_share_median']:.0f} % (max {100 * c['foreign_cpu_share_max']:.0f} %)")
        lines.append(f"  {config:<10} {'other CPU use':<18} " + " ".join(f"{c:>26}" for c in cells))
        for key, label in (("kdkit_vs_plain", "kdkit/plain"), ("kdkit_vs_torchdistill", "kdkit/torchdistill")):
            cells = []
            for m in modes:
                r = runs[m]["configs"][config].get(key)
                cells.append(f"{r['paired_median']:.3f} ({100 * (1 / r['paired_median'] - 1):+.1f} % time)" if r
                             else "-")
            lines.append(f"  {config:<10} {label:<18} " + " ".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="steps per implementation per round (10)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    ap.add_argument("--warmup", type=int, default=5,
                    help=f"untimed steps per implementation after the {CHECK_STEPS} checked ones (5; kdkit's "
                         "teacher-agreement guard needs 512 samples, 4 batches of 128, to finish)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    ap.add_argument("--allocator", choices=("default", "tuned", "both"), default="both",
                    help="glibc malloc as it comes, with " + " ".join(f"{k}={v}" for k, v in MALLOC_TUNING.items())
                         + " (fewer page faults, less noise), or both, each in its own process (both)")
    ap.add_argument("--no-torchdistill", action="store_true", help="skip the torchdistill rows")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every implementation runs (cpu)")
    ap.add_argument("--models", default="fashion", choices=tuple(MODEL_SETS),
                    help="fashion: resnet14 -> resnet8 width 8 on Fashion-MNIST; cifar-x4: resnet32x4 -> resnet8x4 "
                         "on random 3x32x32 data, 100 classes (fashion)")
    ap.add_argument("--precision", default="fp32", choices=tuple(LOSS_RTOL), help="autocast dtype (fp32: none)")
    ap.add_argument("--channels-last", action="store_true", help="models and batch in channels_last")
    ap.add_argument("--gpu", action="store_true",
                    help="the GPU case: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in GPU_PRESET.items()))
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.gpu:
        for key, value in GPU_PRESET.items():
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda (or --gpu): torch sees no CUDA device; run on a GPU machine or use --device cpu")
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0")
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown config {bad[0]!r}; valid: {', '.join(CONFIGS)}")

    if args.child:  # a measuring process, started below with its allocator environment
        results = measure(args, configs, args.child)
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh)
        return 0

    load_start = os.getloadavg()
    print(f"kd training-step benchmark on {cpu_model()} ({os.cpu_count()} cores); load average at start "
          f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} (1/5/15 min; the machine may be shared: "
          "rounds are interleaved so that load hits the implementations alike)", flush=True)
    modes = ["default", "tuned"] if args.allocator == "both" else [args.allocator]
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    runs: dict = {}
    with tempfile.TemporaryDirectory(prefix="kdkit-train-step-") as tmp:
        for mode in modes:
            out = os.path.join(tmp, f"{mode}.json")
            cmd = [sys.executable, os.path.abspath(__file__), *_strip(passed, ("--json", "--allocator")),
                   "--child", mode, "--json", out]
            rc = subprocess.run(cmd, check=False, env=allocator_env(mode)).returncode
            if rc != 0:
                print(f"the {mode}-allocator measurement failed (exit status {rc})", file=sys.stderr)
                return rc
            with open(out, encoding="utf-8") as fh:
                runs[mode] = json.load(fh)
    load_end = os.getloadavg()
    print("\nsummary: median images/s over the rounds [min – max]; kdkit/peer = median of per-round ratios "
          "(> 1: kdkit faster) and the time per step it means")
    print(summary(runs))
    print(f"load average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} (1/5/15 min)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"loadavg_start": list(load_start), "loadavg_end": list(load_end), "runs": runs}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def _strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without ``options`` and their values (``--opt v`` or ``--opt=v``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in options):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
