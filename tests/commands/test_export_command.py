"""``kdkit export``: a trained stage's best weights as a state dict, TorchScript or ONNX file that
loads in plain PyTorch (kdkit not imported) and gives the run's logits; bad input as one line, exit 2.

The student is ``torchvision:resnet18`` (a model by name), so its state dict loads into
``torchvision.models.resnet18`` built directly.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from kdkit import cli
from kdkit import plugins as kp

from kdkit_engine_testutil import TINY

SETS = [s for s in TINY if not s.startswith("student.")] + ["student.name=torchvision:resnet18", "train.epochs=1"]

#: plain PyTorch: the exported files, the input, a torchvision model built directly; kdkit never imported
PLAIN = """
import sys, torch, torchvision
x = torch.load(sys.argv[1], weights_only=True)
net = torchvision.models.resnet18(num_classes=10)
net.load_state_dict(torch.load(sys.argv[2], weights_only=True))
net.eval()
scripted = torch.jit.load(sys.argv[3])
with torch.no_grad():
    torch.save({"state_dict": net(x), "torchscript": scripted(x)}, sys.argv[4])
assert not any(name == "kdkit" or name.startswith("kdkit.") for name in sys.modules), "kdkit was imported"
"""


pytestmark = pytest.mark.usefixtures("lean_plugin_manager")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from kdkit.engine import train

    kp.reset_plugin_manager()
    out = tmp_path_factory.mktemp("export") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kp.ENV_BLOCK, "soda,wordnet_relax")
        train(method="kd", sets=SETS, out=out)
    kp.reset_plugin_manager()
    return out


def _run_logits(run_dir, x):
    """The logits of the run's student, built and loaded with the lines of ``KDMethod.evaluate``
    (what ``kdkit eval`` scores), not with export's own code."""
    from kdkit.engine import open_run

    ctx, _ = open_run(run_dir, device="cpu")
    model = ctx.build_model("students", ctx.config.student, 10, seed_tag="student")
    ctx.load_best("student", model)
    with torch.no_grad():
        return model.eval()(x)


def test_exported_student_gives_the_runs_logits_in_plain_pytorch(run_dir, tmp_path, capsys):
    files = {fmt: tmp_path / f"student.{fmt}" for fmt in ("state_dict", "torchscript")}
    for fmt, path in files.items():
        assert cli.main(["export", "--run", str(run_dir), "--format", fmt, "--out", str(path)]) == 0, \
            capsys.readouterr().err
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # batch 3: the batch axis is free
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", PLAIN, str(tmp_path / "x.pt"), str(files["state_dict"]),
                           str(files["torchscript"]), str(tmp_path / "logits.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = torch.load(tmp_path / "logits.pt", weights_only=True)
    expected = _run_logits(run_dir, x)
    torch.testing.assert_close(plain["state_dict"], expected, rtol=0, atol=0)
    torch.testing.assert_close(plain["torchscript"], expected, rtol=1e-5, atol=1e-5)
    # and the run's model is what `kdkit eval` scores
    assert cli.main(["eval", "--run", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out)["student"]["top1"] == pytest.approx(summary["student"]["top1"])


def test_a_teacher_stage_exports_too(run_dir, tmp_path):
    out = tmp_path / "sub" / "teacher.pt"  # a missing parent directory is created
    assert cli.main(["export", "--run", str(run_dir), "--stage", "teacher.convnet", "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "teacher.convnet" / "best.pt", weights_only=True)["model"]
    assert state.keys() == best.keys() and all(torch.equal(state[k], best[k]) for k in state)


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed (pip install onnx)")
def test_onnx_export_is_a_valid_model_with_a_free_batch_axis(run_dir, tmp_path):
    import onnx

    out = tmp_path / "student.onnx"
    assert cli.main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    (inp,), (logits,) = model.graph.input, model.graph.output
    assert inp.name == "input" and logits.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("args, message", [
    (["--run", "{tmp}/nowhere"], "--run {tmp}/nowhere: not a kdkit run directory"),
    (["--stage", "baseline"], "--stage baseline: {run} has no best checkpoint of that stage; stages with "
                              "checkpoints: student, teacher.convnet"),
    (["--out", "{tmp}"], "--out {tmp} is a directory"),
    # issue 22 rerun: `--out exports/` wrote a file named exports; `--out /dev/null` replaced the device
    # with a regular file (a FIFO here); `--out ''` was the current directory
    (["--out", "{tmp}/exports/"], "--out {tmp}/exports/ names a directory (it ends in a slash)"),
    (["--out", "{tmp}/fifo"], "--out {tmp}/fifo is a FIFO, not a regular file"),
    (["--out", ""], "--out is empty"),
    (["--out", "{tmp}/file/student.pt"], "--out {tmp}/file/student.pt: cannot write into {tmp}/file"),
    (["--format", "onnx", "--no-onnx"], "--format onnx needs the onnx package: pip install 'kdkit[onnx]'"),
    (["--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
])
def test_bad_input_is_one_line(run_dir, tmp_path, capsys, monkeypatch, args, message):
    (tmp_path / "file").write_text("not a directory")
    os.mkfifo(tmp_path / "fifo")
    if "--no-onnx" in args:
        args = [a for a in args if a != "--no-onnx"]
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    argv = ["export", "--run", str(run_dir), "--out", str(tmp_path / "s.pt")] + args
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(tmp=tmp_path, run=run_dir) in err, err
    assert not (tmp_path / "s.pt").exists() and not (tmp_path / "exports").exists()
    assert (tmp_path / "fifo").is_fifo()


def test_a_method_with_its_own_stage_model_is_exported_through_it(tmp_path):
    """SimKD's student is backbone + projector + the teacher's classifier (``SimKDMethod.stage_model``):
    ``kdkit export`` builds it through that optional method member, so the exported TorchScript gives
    the logits of the model ``kdkit eval`` scores, not a bare student network that cannot hold the
    checkpoint."""
    from kdkit.engine import open_run, train

    sets = ["data.name=shapes", "data.train_per_class=8", "data.test_per_class=4", "data.augment=none",
            "teachers=[{name: resnet8, width: 4}]", "student.name=resnet8", "student.width=4",
            "teacher_train.epochs=1", "train.epochs=1", "train.batch_size=16", "teacher_train.batch_size=16",
            "baseline.enabled=false", "logging.progress=false"]
    run = tmp_path / "simkd"
    train(method="simkd", sets=sets, out=run)
    out = tmp_path / "student.pt"
    assert cli.main(["export", "--run", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    ctx, method = open_run(run, device="cpu")
    model = method.stage_model(ctx, "student", 10)
    assert type(model).__name__ == "SimKDStudent"
    x = torch.stack([ctx.build_dataset(None, "test")[i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(x), model(x))
