#!/usr/bin/env python
"""A whole KD job, timed: kdkit against torchdistill, the same job on both (issue 23, item 3).

The job: teacher ``resnet14`` trained 10 epochs, then student ``resnet8`` width 8 distilled from it
10 epochs (``0.5*CE + 0.5*T^2*KL``, T = 4), on kdkit's ``kd`` default data: Fashion-MNIST's first
500 training images of each class in file order (5,000), 10 % of them held out for validation by
kdkit's seeded split (4,500 train / 500 val), no augmentation, the whole 10,000-image test split.
Both sides: SGD momentum 0.9, weight decay 5e-4, batch 64 (evaluation 256), cosine schedule to 0
stepped every optimiser step, teacher lr 0.1, student lr 0.05; the teacher used for distillation and
each reported model are the validation-best epoch's weights, evaluated once on the test split
(kdkit's ``checkpoint.select_on: val``).

* kdkit: ``python -m kdkit train --method kd`` with ``--set`` overrides for that job
  (``baseline.enabled=false``: teacher + student only), a subprocess in a fresh cache directory
  (``KDKIT_CACHE_DIR``); test top-1 from the run's ``summary.json``.  Its defaults stay on: the
  teacher's logits are cached in memory once (``distill.teacher_cache: auto``) and its
  teacher-agreement check runs; ``--kdkit-set distill.teacher_cache=off`` times it with an online
  teacher, as torchdistill runs it.
* torchdistill: a subprocess of this script: the teacher through torchdistill's single-model
  trainer (``TrainingBox``, ``get_training_box``, ``CrossEntropyLoss`` in ``SimpleLossWrapper``),
  the student through its ``DistillationBox`` (``KDLoss``, online teacher), both stepped as
  torchdistill's example loop does (``pre_epoch_process``, ``forward_process``,
  ``post_forward_process``, ``post_epoch_process``) over its own data loaders (``RandomSampler``),
  with ``CosineAnnealingLR`` stepped per iteration (``scheduling_step: 1``).  torchdistill has no
  evaluator in the package (its examples carry their own): top-1 is a plain ``argmax`` loop, on the
  validation split every epoch (the best epoch's weights kept in memory) and on the test split once.
  The data are the same images (indices computed here with kdkit's own ``first_per_class`` and
  ``split_train_val``, passed to the child), read from Debian's IDX files into tensors, normalised
  as kdkit does.  The models are kdkit's ``resnet14`` / ``resnet8`` modules (the same code).
* torchdistill_tuned: the same torchdistill child with the process settings kdkit's CLI makes before
  torch loads (OpenMP's spin count and glibc malloc's mmap and trim thresholds:
  :func:`kdkit.runtime.process_env`), so that the report separates what those settings bring from
  the rest (``--no-tuned`` skips it).  Its accuracy equals torchdistill's: only the process changes.

Wall time of each side is the whole subprocess: interpreter start, imports, data loading, teacher,
student, evaluation (kdkit also writes its checkpoints and metrics; the torchdistill child keeps the
best weights in memory and reports its phases).  Seeds alternate the order of the sides (kdkit first
on even seeds, last on odd ones) so that load on a shared machine hits them alike; per seed the
report gives each side's wall time, test top-1 (teacher and student) and kdkit's time over each
peer's; the machine (CPU, AVX2 / AVX-512 VPOPCNTDQ, load average before and after) is in the output.

Setup (torchdistill without touching the pinned torch 2.14.1 / torchvision 0.29.1; its other
declared requirements numpy, pyyaml and scipy are already in kdkit's environment, and the parts used
here import without cython)::

    .venv/bin/python -m pip install --no-deps "torchdistill>=1.1.5"

Usage (the full job: 3 sides x 3 seeds of a few minutes each on 2 cores; run it on a quiet machine)::

    .venv/bin/python benchmarks/kd_job.py --seeds 0 1 2 --json kd_job.json

Toy size (what tests/benchmarks/test_kd_job.py runs): ``--seeds 0 --teacher-epochs 1 --student-epochs 1
--train-per-class 20 --test-per-class 20 --batch-size 4 --no-tuned``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # train_step, also when imported by a test

from train_step import (
    ALPHA,
    FASHION_IMAGES,
    FASHION_LABELS,
    FASHION_MEAN,
    FASHION_STD,
    NUM_CLASSES,
    TEMPERATURE,
    cpu_model,
    torchdistill_version,
)

from kdkit.data.mnist import read_idx  # kdkit's IDX reader: the files both sides read

FASHION_TEST_IMAGES = FASHION_IMAGES.replace("train-", "t10k-")
FASHION_TEST_LABELS = FASHION_LABELS.replace("train-", "t10k-")

# the job: kd's defaults (kdkit/methods/kd.py), written out so that both sides get the same values
VAL_FRACTION = 0.1
EVAL_BATCH_SIZE = 256
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
TEACHER_LR, STUDENT_LR = 0.1, 0.05
TEACHER, STUDENT, STUDENT_WIDTH = "resnet14", "resnet8", 8
#: torchdistill as it comes, and with the process settings kdkit's CLI makes before torch loads
#: (OpenMP's spin count, glibc malloc's mmap/trim thresholds: kdkit.runtime.process_env)
TD_SIDES = ("torchdistill", "torchdistill_tuned")


# --- the machine -----------------------------------------------------------------------------------

def machine() -> dict:
    """CPU model, cores and the SIMD flags that matter here, from ``/proc/cpuinfo``."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "avx512_vpopcntdq": "avx512_vpopcntdq" in flags,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torchdistill": torchdistill_version()}


# --- the data both sides use ---------------------------------------------------------------------

def subset_indices(train_per_class: int, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` indices into Fashion-MNIST's training file: the ones kdkit's ``kd`` run uses
    (``data.train_per_class`` -> :func:`kdkit.data.mnist.first_per_class`, then
    ``data.val_fraction`` -> :func:`kdkit.engine.data.split_train_val` with the run's seed)."""
    from kdkit.data.mnist import FASHION_MNIST_CLASSES, first_per_class
    from kdkit.engine.data import split_train_val

    keep = first_per_class(read_idx(FASHION_LABELS), train_per_class, FASHION_MNIST_CLASSES)
    train, val = split_train_val(list(range(len(keep))), VAL_FRACTION, seed)
    return [int(keep[i]) for i in train.indices], [int(keep[i]) for i in val.indices]


def indices_of_test_split(test_per_class: int | None) -> list[int] | None:
    """The test images (``data.test_per_class``: first N of each class; ``None``: all)."""
    if test_per_class is None:
        return None
    from kdkit.data.mnist import FASHION_MNIST_CLASSES, first_per_class

    return [int(i) for i in first_per_class(read_idx(FASHION_TEST_LABELS), test_per_class, FASHION_MNIST_CLASSES)]


# --- kdkit's side --------------------------------------------------------------------------------

def kdkit_overrides(args, seed: int) -> list[str]:
    """The ``--set`` overrides of the job (every value both sides must share is written out)."""
    sets = {
        "seed": seed, "device": "cpu",
        "data.name": "fashion_mnist", "data.train_per_class": args.train_per_class,
        "data.test_per_class": "null" if args.test_per_class is None else args.test_per_class,
        "data.val_fraction": VAL_FRACTION, "data.augment": "none", "data.num_workers": 0,
        "teachers.0.name": TEACHER, "teachers.0.train": "true",
        "student.name": STUDENT, "student.width": STUDENT_WIDTH,
        "baseline.enabled": "false", "checkpoint.select_on": "val",
        "distill.alpha": ALPHA, "distill.temperature": TEMPERATURE, "distill.loss": "kl",
        "logging.progress": "false",
    }
    for section, epochs, lr in (("teacher_train", args.teacher_epochs, TEACHER_LR),
                                ("train", args.student_epochs, STUDENT_LR)):
        sets.update({f"{section}.epochs": epochs, f"{section}.batch_size": args.batch_size,
                     f"{section}.eval_batch_size": EVAL_BATCH_SIZE, f"{section}.optimizer": "sgd",
                     f"{section}.lr": lr, f"{section}.momentum": MOMENTUM, f"{section}.nesterov": "false",
                     f"{section}.weight_decay": WEIGHT_DECAY, f"{section}.scheduler": "cosine",
                     f"{section}.warmup_epochs": 0, f"{section}.precision": "fp32"})
    out = [f"{k}={v}" for k, v in sets.items()]
    return out + list(args.kdkit_set)


def run_kdkit(args, seed: int, tmp: str) -> dict:
    out_dir = os.path.join(tmp, f"kdkit-seed{seed}")
    env = {**os.environ, "KDKIT_CACHE_DIR": os.path.join(tmp, f"kdkit-cache-seed{seed}")}
    cmd = [sys.executable, "-m", "kdkit", "train", "--method", "kd", "--out", out_dir]
    for s in kdkit_overrides(args, seed):
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"kd_job: the kdkit run failed (exit status {proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    (teacher,) = summary["teachers"].values()
    student = summary["student"]
    return {"wall_s": wall, "teacher_top1": teacher["top1"], "teacher_val_top1": teacher["val_top1"],
            "teacher_best_epoch": teacher["best_epoch"], "student_top1": student["top1"],
            "student_val_top1": student["val_top1"], "student_best_epoch": student["best_epoch"],
            "teacher_cache": summary["distill"]["teacher_cache_mode"], "command": cmd}


# --- torchdistill's side (run in a child process: --child) --------------------------------------

def load_tensors(indices: list[int] | None, images_path: str, labels_path: str):
    """Normalised ``N x 3 x 28 x 28`` float images and int64 labels (grey in all three channels)."""
    import numpy as np
    import torch

    images, labels = read_idx(images_path), read_idx(labels_path)
    if indices is not None:
        images, labels = images[np.asarray(indices)], labels[np.asarray(indices)]
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) - FASHION_MEAN) / FASHION_STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels.astype(np.int64))


def top1(model, dataset) -> float:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_SIZE, shuffle=False)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def loop_config(epochs: int, lr: float, batch_size: int, steps_per_epoch: int) -> dict:
    """The loader, optimiser and schedule keys of a torchdistill train config (kdkit's cosine: to 0 over
    every optimiser step)."""
    import torch

    return {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": torch.utils.data.RandomSampler,
                                                                 "kwargs": {}},
                              "kwargs": {"batch_size": batch_size, "num_workers": 0, "drop_last": False}},
        "optimizer": {"key": "SGD", "kwargs": {"lr": lr, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": epochs * steps_per_epoch, "eta_min": 0.0},
                      "scheduling_step": 1},
    }


def fit(box, model, epochs: int, val) -> tuple[dict, int, float]:
    """torchdistill's example loop over ``epochs``; validation top-1 every epoch; returns the best epoch's
    weights, that epoch and its validation top-1 (the first epoch of a tie, as kdkit selects)."""
    best_state, best_epoch, best_val = None, -1, None
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        for x, y, supp in box.train_data_loader:
            loss = box.forward_process(x, y, supp)
            box.post_forward_process(loss=loss)
        acc = top1(model, val)
        box.post_epoch_process(metrics=acc)
        if best_val is None or acc > best_val:
            best_state, best_epoch, best_val = copy.deepcopy(model.state_dict()), epoch, acc
    model.load_state_dict(best_state)
    return best_state, best_epoch, best_val


def torchdistill_job(spec: dict) -> dict:
    """The job in torchdistill (this process: the child).  ``spec``: seed, epochs, indices."""
    import logging
    import math

    import torch
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.core.training import get_training_box

    from kdkit.models.zoo import build_model

    logging.getLogger("torchdistill").setLevel(logging.WARNING)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    phases: dict = {}
    t = time.perf_counter()
    x, y = load_tensors(spec["train_idx"] + spec["val_idx"], FASHION_IMAGES, FASHION_LABELS)
    n_train = len(spec["train_idx"])
    train = torch.utils.data.TensorDataset(x[:n_train], y[:n_train])
    val = torch.utils.data.TensorDataset(x[n_train:], y[n_train:])
    test = torch.utils.data.TensorDataset(*load_tensors(spec["test_idx"], FASHION_TEST_IMAGES, FASHION_TEST_LABELS))
    batch = spec["batch_size"]
    steps = math.ceil(n_train / batch)
    phases["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    torch.manual_seed(spec["seed"])
    teacher = build_model(TEACHER, NUM_CLASSES)
    ce = {"criterion": {"key": "CrossEntropyLoss", "kwargs": {"reduction": "mean"}},
          "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {
              "input": {"is_from_teacher": False, "module_path": ".", "io": "output"},
              "target": {"uses_label": True}}}, "weight": 1.0}
    teacher_cfg = {**loop_config(spec["teacher_epochs"], TEACHER_LR, batch, steps),
                   "model": {"forward_proc": "forward_batch_only"},
                   "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"ce": ce}}}}
    box = get_training_box(teacher, {"train": train}, teacher_cfg, torch.device("cpu"), None, False, 1)
    _, t_epoch, t_val = fit(box, teacher, spec["teacher_epochs"], val)
    phases["teacher_train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    t_test = top1(teacher, test)
    phases["teacher_test_s"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(spec["seed"] + 1)
    student = build_model(STUDENT, NUM_CLASSES, width=STUDENT_WIDTH)
    kd = {"criterion": {"key": "KDLoss", "kwargs": {
        "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
        "teacher_module_io": "output", "temperature": TEMPERATURE, "alpha": ALPHA, "reduction": "batchmean"}},
        "weight": 1.0}
    student_cfg = {**loop_config(spec["student_epochs"], STUDENT_LR, batch, steps),
                   "teacher": {"requires_grad": False, "forward_proc": "forward_batch_only"},
                   "student": {"requires_grad": True, "forward_proc": "forward_batch_only"},
                   "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": kd}}}}
    box = get_distillation_box(teacher, student, {"train": train}, student_cfg, torch.device("cpu"), None, False, 1)
    _, s_epoch, s_val = fit(box, student, spec["student_epochs"], val)
    phases["student_train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    s_test = top1(student, test)
    phases["student_test_s"] = time.perf_counter() - t
    return {"teacher_top1": t_test, "teacher_val_top1": t_val, "teacher_best_epoch": t_epoch,
            "student_top1": s_test, "student_val_top1": s_val, "student_best_epoch": s_epoch,
            "phases": phases, "n_train": n_train, "n_val": len(val), "n_test": len(test)}


def torchdistill_env(side: str) -> dict:
    """The child's environment: OpenMP and malloc at their defaults, or set as kdkit's CLI sets them."""
    from kdkit.runtime import neutral_env, process_env

    env = neutral_env()
    if side == "torchdistill_tuned":
        env.update(process_env())
    return env


def run_torchdistill(args, seed: int, tmp: str, side: str = "torchdistill") -> dict:
    spec_path, out_path = os.path.join(tmp, f"td-spec-seed{seed}.json"), os.path.join(tmp, f"{side}-seed{seed}.json")
    train_idx, val_idx = subset_indices(args.train_per_class, seed)
    with open(spec_path, "w", encoding="utf-8") as fh:
        json.dump({"seed": seed, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                   "train_idx": train_idx, "val_idx": val_idx, "test_idx": indices_of_test_split(args.test_per_class),
                   "batch_size": args.batch_size, "threads": args.threads}, fh)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", spec_path, "--json", out_path]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=torchdistill_env(side))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"kd_job: the {side} run failed (exit status {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    with open(out_path, encoding="utf-8") as fh:
        return {"wall_s": wall, **json.load(fh)}


# --- the report ----------------------------------------------------------------------------------

def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=500, help="data.train_per_class (500: 5,000 images)")
    ap.add_argument("--test-per-class", type=int, default=None, help="data.test_per_class (default: all 10,000)")
    ap.add_argument("--batch-size", type=int, default=64, help="training batch size of both sides (64)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of the torchdistill side (0: torch's default, as kdkit uses)")
    ap.add_argument("--kdkit-set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more --set for the kdkit run (repeatable), e.g. distill.teacher_cache=off")
    ap.add_argument("--no-tuned", action="store_true",
                    help="skip the torchdistill run with kdkit's process settings (OpenMP spin count, "
                         "malloc thresholds)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        with open(args.child, encoding="utf-8") as fh:
            result = torchdistill_job(json.load(fh))
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        return 0
    for name in ("teacher_epochs", "student_epochs", "train_per_class", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.test_per_class is not None and args.test_per_class < 1:
        ap.error("--test-per-class must be >= 1")
    if torchdistill_version() is None:
        ap.error('torchdistill is not installed: .venv/bin/python -m pip install --no-deps "torchdistill>=1.1.5"')
    for path in (FASHION_IMAGES, FASHION_LABELS, FASHION_TEST_IMAGES, FASHION_TEST_LABELS):
        if not os.path.exists(path):
            ap.error(f"{path} not found: install Debian's dataset-fashion-mnist (scripts/setup.sh does)")

    meta = {**machine(), "loadavg_start": list(os.getloadavg()),
            "job": {"teacher": f"{TEACHER}, {args.teacher_epochs} epochs, lr {TEACHER_LR}",
                    "student": f"{STUDENT} width {STUDENT_WIDTH}, {args.student_epochs} epochs, lr {STUDENT_LR}",
                    "data": f"fashion_mnist, {args.train_per_class} per class, val_fraction {VAL_FRACTION}, "
                            f"test {'all' if args.test_per_class is None else f'{args.test_per_class} per class'}, "
                            "no augmentation",
                    "optimiser": f"SGD momentum {MOMENTUM} weight_decay {WEIGHT_DECAY}, batch {args.batch_size}, "
                                 "cosine to 0 per step",
                    "loss": f"{ALPHA}*CE + {1 - ALPHA}*T^2*KL, T={TEMPERATURE}",
                    "selection": "validation-best epoch, tested once", "kdkit_set": list(args.kdkit_set)}}
    print(f"kd job: kdkit vs torchdistill {meta['torchdistill']} on {meta['cpu']} ({meta['cores']} cores, "
          f"AVX2 {meta['avx2']}, AVX-512 VPOPCNTDQ {meta['avx512_vpopcntdq']}), torch {meta['torch']}; "
          f"load average {' '.join(f'{v:.2f}' for v in meta['loadavg_start'])}", flush=True)
    sides = ("kdkit", *TD_SIDES[:1 if args.no_tuned else 2])
    seeds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kdkit-kd-job-") as tmp:
        for seed in args.seeds:
            order = sides if seed % 2 == 0 else sides[::-1]
            row: dict = {"seed": seed, "order": list(order)}
            for side in order:
                row[side] = run_kdkit(args, seed, tmp) if side == "kdkit" else run_torchdistill(args, seed, tmp, side)
            for side in sides[1:]:  # kdkit's wall time over the peer's: < 1 is kdkit faster
                row[side]["kdkit_time_ratio"] = row["kdkit"]["wall_s"] / row[side]["wall_s"]
                row[side]["kdkit_speedup"] = 1.0 / row[side]["kdkit_time_ratio"]
            seeds.append(row)
            print(f"seed {seed} ({order[0]} first):", flush=True)
            for side in sides:
                r = row[side]
                vs = (f"; kdkit/{side} time {r['kdkit_time_ratio']:.3f} (kdkit {r['kdkit_speedup']:.2f}x faster)"
                      if side != "kdkit" else "")
                print(f"  {side:<19} {r['wall_s']:7.1f} s  student {r['student_top1']:6.2f} %  teacher "
                      f"{r['teacher_top1']:6.2f} %{vs}", flush=True)
    meta["loadavg_end"] = list(os.getloadavg())
    summary: dict = {}
    for side in sides:
        summary[side] = {key: spread([r[side][key] for r in seeds])
                         for key in ("wall_s", "student_top1", "teacher_top1")}
        if side != "kdkit":
            summary[side]["kdkit_speedup"] = spread([r[side]["kdkit_speedup"] for r in seeds])
    results = {"meta": meta, "seeds": seeds, "summary": summary}
    print(f"over {len(seeds)} seeds (mean ± std; goal: kdkit >= 1.5x faster at equal student top-1):")
    for side in sides:
        s = summary[side]
        vs = f"  kdkit {s['kdkit_speedup']['mean']:.2f}x faster" if side != "kdkit" else ""
        print(f"  {side:<19} {s['wall_s']['mean']:7.1f} ± {s['wall_s']['std']:.1f} s  student "
              f"{s['student_top1']['mean']:6.2f} ± {s['student_top1']['std']:.2f} %{vs}")
    print(f"load average at end {' '.join(f'{v:.2f}' for v in meta['loadavg_end'])}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
