"""`kdkit train / eval / plot` through the real CLI (kdkit.cli.main in-process) and user errors."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from kdkit_engine_testutil import TINY

from kdkit.cli import main


def _train(out, *extra, sets=TINY):
    args = ["train", "--method", "kd", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    import kdkit_engine_testplugin
    import kdkit_tensorboard

    from kdkit.plugins import plugin_manager_for_testing

    out = tmp_path_factory.mktemp("cli") / "run"
    with plugin_manager_for_testing(kdkit_engine_testplugin, kdkit_tensorboard):
        assert _train(out, sets=TINY + ["logging.tensorboard=true"]) == 0
    return out


def test_run_dir_layout(finished_run, capsys):
    run = finished_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log",
                 "checkpoints/teacher.convnet/last.pt", "checkpoints/teacher.convnet/best.pt",
                 "checkpoints/student/last.pt", "checkpoints/student/best.pt"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == "kd" and cfg["data"]["train_per_class"] == 8 and cfg["train"]["epochs"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["student"]["top1"] <= 100.0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 1 + 2 + 1  # teacher epoch + test, student 2 epochs + test


def test_tensorboard_plugin_writes_event_files_from_hooks(finished_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = finished_run / "tensorboard"
    assert list((tb / "student").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb / "student"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/kd", "val/top1", "val/loss", "lr/group0", "epoch/loss"} <= tags
    assert len(acc.Scalars("train/loss")) == 10  # one per step (2 epochs x 5 steps)
    assert len(acc.Scalars("val/top1")) == 2
    summ = EventAccumulator(str(tb / "summary"))
    summ.Reload()
    assert "summary/student/top1" in summ.Tags()["scalars"]


def test_eval_reproduces_the_summary(finished_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--run", str(finished_run)]) == 0
    out = json.loads(capsys.readouterr().out)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert out["student"]["top1"] == summary["student"]["top1"]
    assert out["teachers"]["teacher.convnet"]["top1"] == summary["teachers"]["teacher.convnet"]["top1"]


def test_plot_writes_png(finished_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "curves.png"
    assert main(["plot", str(finished_run), "--out", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(finished_run)]) == 0
    assert (finished_run / "curves.png").is_file()


def test_plot_without_matplotlib_names_the_extra(finished_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(finished_run)]) == 2
    assert "pip install kdkit[plot]" in capsys.readouterr().err


def test_print_config_prints_yaml_and_exits(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--method", "kd", "--out", str(out), "--set", "train.lr=0.2", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 0.2 and cfg["method"] == "kd" and "distill" in cfg
    assert not out.exists()


def test_config_file_and_set_precedence_reach_the_run(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.3\n  epochs: 4\nseed: 3\n")
    assert main(["train", "--config", str(f), "--set", "train.epochs=7", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["train"]["lr"], cfg["train"]["epochs"], cfg["seed"]) == (0.3, 7, 3)


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "/nonexistent/c.yaml"], "config file not found"),
    (["train", "--method", "nosuchmethod"], "unknown method 'nosuchmethod'; valid choices:"),
    (["train", "--set", "train.bogus=1"], "unknown config key 'train.bogus'; valid keys at train:"),
    (["train", "--set", "train.lr=fast"], "config key train.lr: expected float in (0, inf), got str"),
    (["train", "--set", "train.lr=0"], "config key train.lr: expected float in (0, inf), got 0.0"),
    (["train", "--set", "train.optimizer=adagrad"], "config key train.optimizer: unknown optimizer 'adagrad'; did you "
                                                    "mean Adagrad or Adamax? valid: sgd, adam, adamw, ASGD, "),
    (["train", "--set", "distill.combine=median"], "config key distill.combine: expected one of avg_logits"),
    (["train", "--set", "device=gpu"], "config key device: expected str matching"),
    (["train", "--set", "data.root=3"], "config key data.root: expected str or null, got int"),
    (["train", "--set", "student.name=nonet"], "unknown student 'nonet'"),
    (["eval", "--run", "/nonexistent/run"], "not a kdkit run directory"),
    (["plot", "/nonexistent/run"], "no metrics.jsonl"),
])
def test_user_errors_are_one_line_exit_2(args, message, capsys, tmp_path):
    if args[0] == "train":
        args = ["train", "--out", str(tmp_path / "r")] + [x for s in TINY for x in ("--set", s)] + args[1:]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if "warning: skipped broken plugin" not in ln and not ln.startswith("kdkit: method")
           and not ln.startswith("kd:")]
    assert len(err) == 1 and err[0].startswith("kdkit: error: ") and message in err[0], err
    assert not (tmp_path / "r").exists()  # checked when the config is resolved: no run directory left behind


def test_bad_yaml_file_is_a_user_error(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("train: {lr: [\n")
    assert main(["train", "--config", str(f)]) == 2
    assert "invalid YAML" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(finished_run, capsys):
    assert _train(finished_run) == 2
    assert "already holds a run; use --resume" in capsys.readouterr().err


def test_help_config_lists_the_keys_of_the_method_and_its_chosen_components(capsys, tmp_path):
    assert main(["train", "--method", "kd", "--help-config"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[3:] if line.strip()}
    assert "avg_logits|mean_loss|inv_val_loss|ema_inv_loss" in rows["distill.combine"]
    assert "float in [0, 1]" in rows["distill.alpha"] and "weight of the cross-entropy term" in rows["distill.alpha"]
    assert "optimiser: sgd, adam, adamw (kdkit's names) or a torch.optim class name" in rows["teacher_train.optimizer"]
    assert "student.width" in rows  # the chosen student's option
    assert not list(tmp_path.iterdir()) and not (tmp_path / "runs").exists()
    # values follow --set, and another student brings its own options
    assert main(["train", "--method", "kd", "--help-config", "--set", "train.lr=0.2",
                 "--set", "student.name=resnet8"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[3:] if line.strip()}
    assert rows["train.lr"][-len("peak learning rate".split()) - 1] == "0.2"
    assert "student.width" not in rows or rows["student.name"][2] == "resnet8"
    assert main(["train", "--method", "kd", "--help-config", "--set", "train.lr=-1"]) == 2
    assert "config key train.lr: expected float in (0, inf)" in capsys.readouterr().err
