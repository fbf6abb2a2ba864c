"""``kdkit export --run DIR --out FILE``: a trained stage's best weights as a file plain PyTorch (or an
ONNX runtime) loads without kdkit.

The model is rebuilt from the run's saved config (the registry factory and options the run used, as
``kdkit eval`` does) and loaded from ``checkpoints/<stage>/best.pt``; then written as

* ``state_dict`` (default): ``torch.save`` of the model's state dict (CPU tensors, nothing else), for
  ``model.load_state_dict(torch.load(FILE, weights_only=True))`` on the same architecture;
* ``torchscript``: ``torch.jit.trace`` on one test sample of the run's data (batch size free), for
  ``torch.jit.load(FILE)``;
* ``onnx``: ``torch.onnx.export`` (the TorchScript-based exporter) with a dynamic batch axis, input
  ``input`` and output ``logits``; needs the ``onnx`` package.

The run directory and the checkpoint layout are documented in docs/results.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
import warnings
from pathlib import Path

from kdkit.errors import ConfigError, KdkitError
from kdkit.files import file_kind

FORMATS = ("state_dict", "torchscript", "onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="DIR", required=True, help="a run directory written by 'kdkit train'")
    parser.add_argument("--stage", metavar="NAME", default="student",
                        help="the stage whose best checkpoint is exported (default: student; teachers are "
                             "teacher.NAME, see RUN/checkpoints/)")
    parser.add_argument("--format", choices=FORMATS, default="state_dict",
                        help="state_dict (default), torchscript or onnx (needs: pip install 'kdkit[onnx]')")
    parser.add_argument("--out", metavar="FILE", required=True, help="the file to write (replaced atomically)")


def _check_out(given: str) -> Path:
    """``--out`` as a path; a one-line error now, before the model is built, for one that cannot be written."""
    if not given.strip():
        raise KdkitError("--out is empty; give a file name, e.g. --out student.pt")
    out = Path(given)
    if out.is_dir() or given.endswith(("/", os.sep)):  # `--out exports/` wrote a file named exports
        what = "is a directory" if out.is_dir() else "names a directory (it ends in a slash)"
        raise KdkitError(f"--out {given} {what}; give a file name, e.g. --out {out / 'student.pt'}")
    if out.exists() and not out.is_file():  # /dev/null, a FIFO: the atomic write would replace it
        raise KdkitError(f"--out {given} is {file_kind(out.stat().st_mode)}, not a regular file; give a file name")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise KdkitError(f"--out {out}: cannot write into {parent} (permission denied or not a directory); "
                         "choose a writable path")
    return out


def _readable_by_all(path: Path) -> None:
    """The mode a plain ``open(FILE, "wb")`` would give (atomic writes create 0600 temp files): an
    exported model is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:  # e.g. a file system without modes
        pass


def stages_with_checkpoints(run_dir: Path) -> list[str]:
    """The stages of a run that have a best checkpoint (``checkpoints/<stage>/best.pt``)."""
    ckpts = Path(run_dir) / "checkpoints"
    return sorted(d.name for d in ckpts.iterdir() if (d / "best.pt").is_file()) if ckpts.is_dir() else []


def stage_model(ctx, method, stage: str, num_classes: int):
    """The model of ``stage`` rebuilt from the run's config, its best checkpoint loaded, in eval mode —
    for a method without its own ``stage_model`` member (:mod:`kdkit.methodspec`).

    Teacher stages are the method's ``teacher_stage_names(teachers)`` (``teacher.NAME``), built from
    the ``teachers`` registry without their ``pretrained`` weights (the checkpoint holds them); the
    ``student`` and ``baseline`` stages from the ``students`` registry, as ``kdkit eval`` builds them.
    """
    cfg = ctx.config
    teacher_names = getattr(method, "teacher_stage_names", None)
    teachers = list(cfg.teachers) if "teachers" in cfg and teacher_names is not None else []
    names = list(teacher_names(teachers)) if teachers else []
    if stage in names:
        tcfg = teachers[names.index(stage)]
        section = {**tcfg, "pretrained": None} if "pretrained" in tcfg else tcfg
        model = ctx.build_model("teachers", section, num_classes, seed_tag=stage)
    elif stage in ("student", "baseline") and "student" in cfg:
        model = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
    else:
        raise KdkitError(f"--stage {stage}: kdkit export rebuilds the teacher, student and baseline stages of "
                         f"kd-style methods; method {cfg.method!r} gives no model for this stage")
    ctx.load_best(stage, model)
    return model.eval()


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise KdkitError("--format onnx needs the onnx package: pip install 'kdkit[onnx]' (or pip install onnx)")
    out = _check_out(args.out)
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise KdkitError(f"--run {run_dir}: not a kdkit run directory ({run_dir / 'config.yaml'} is missing)")
    stages = stages_with_checkpoints(run_dir)
    if args.stage not in stages:
        have = ", ".join(stages) if stages else "none (it has no best.pt yet)"
        raise KdkitError(f"--stage {args.stage}: {run_dir} has no best checkpoint of that stage; stages with "
                         f"checkpoints: {have}")

    import torch

    from kdkit.engine import dataset_classes, open_run
    from kdkit.files import atomic_torch_save, atomic_write_bytes

    ctx, method = open_run(run_dir, device="cpu")
    test = ctx.build_dataset(None, "test")
    num_classes = len(dataset_classes(test))
    # a method whose stages are not plain registry models (SimKD's student carries the teacher's classifier)
    # rebuilds them itself: the optional Method member stage_model (kdkit.methodspec)
    custom = getattr(method, "stage_model", None)
    model = custom(ctx, args.stage, num_classes) if custom is not None else \
        stage_model(ctx, method, args.stage, num_classes)
    sample = test[0][0]
    example = sample.unsqueeze(0) if isinstance(sample, torch.Tensor) else None
    if args.format == "state_dict":
        atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
    else:
        if example is None:
            raise ConfigError(f"--format {args.format} traces the model on a test sample, but the run's dataset "
                              f"gives {type(sample).__name__}, not a tensor; use --format state_dict")
        buffer = io.BytesIO()
        # torch marks jit as deprecated (FutureWarning); TorchScript files still load everywhere
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            if args.format == "torchscript":
                torch.jit.save(torch.jit.trace(model, example), buffer)
            else:
                torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"],
                                  output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        atomic_write_bytes(out, buffer.getvalue())
    _readable_by_all(out)
    print(f"kdkit export: stage {args.stage} of {run_dir} ({type(model).__name__}, input "
          f"{'x'.join(map(str, example.shape[1:])) if example is not None else '?'}) -> {out} ({args.format})",
          file=sys.stderr)
    return 0
