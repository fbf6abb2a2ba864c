"""End-to-end runs of the ``wordnet_relax`` method on tiny data (seconds each)."""
from __future__ import annotations

import json
import pickle
import sys

import kdkit_prestarted
import numpy as np
import pytest
import torch
from wr_helpers import ROOT, run_method

import kdkit
from kdkit.errors import ConfigError

FAST = ["teachers=[]", "baseline.enabled=false"]  # T_x + student only


def _no_shapes_options(sets):
    return [s for s in sets if not s.startswith(("data.train_per_class", "data.test_per_class"))]


def test_registration(manager):
    assert "wordnet_relax" in manager.registry("methods")
    assert "wordnet" in manager.registry("text_relaxers")
    assert manager.registry("methods").get("wordnet_relax").plugin.endswith("kdkit_wordnet_relax")


def test_default_config_resolves_and_is_the_offline_recipe(manager):
    from kdkit.engine import resolve_method_config

    cfg = resolve_method_config("wordnet_relax", manager=manager)
    assert cfg["data"]["name"] == "fashion_mnist" and cfg["data"]["train_per_class"] == 200
    assert cfg["data"]["test_per_class"] is None
    assert cfg["relax"]["ratio"] == 1.0 and cfg["relax"]["tau"] == 0.005
    assert cfg["relax"]["num_clusters"] == 150 and cfg["relax"]["top_n"] == 5
    assert cfg["clip"]["model"] == "kdkit-tiny" and cfg["clip"]["pretrained"] is None
    assert [t["augment"] for t in cfg["teachers"]] == ["strong", "weak"]
    assert cfg["distill"]["combine"] == "avg_logits" and cfg["tx"]["embedding"] == "learnable"
    with pytest.raises(ConfigError, match="relax"):
        resolve_method_config("wordnet_relax", sets=["relax.no_such_key=1"], manager=manager)


def test_paper_config_resolves(manager):
    from kdkit.engine import resolve_method_config

    cfg = resolve_method_config("wordnet_relax", ROOT / "configs" / "wordnet_relax_cifar100_paper.yaml",
                                manager=manager)
    assert cfg["data"]["name"] == "cifar100" and cfg["data"]["image_size"] == 224
    assert cfg["clip"]["model"] == "ViT-B-32" and cfg["relax"]["pool_size"] == 0
    assert cfg["tx"]["backbone"] == "resnet50" and cfg["student"]["name"] == "resnet18"
    assert [t["name"] for t in cfg["teachers"]] == ["resnet50", "resnet50"]
    assert cfg["train"]["epochs"] == 500 and cfg["distill"]["temperature"] == 3.0
    assert cfg["distill"]["alpha"] == 0.6


def test_tiny_run_summary_and_table(manager, tiny, tmp_path, capsys):
    summary = run_method(manager, tiny, tmp_path / "run")
    out = capsys.readouterr().out
    assert "wordnet_relax results" in out and "RANDOM INIT" in out
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    for s in (summary, saved):
        assert isinstance(s["student"]["top1"], float)
        assert isinstance(s["baseline"]["top1"], float)
        assert isinstance(s["teachers"]["multimodal"]["top1"], float)
        assert {"unimodal_strong", "unimodal_weak", "multimodal"} <= set(s["teachers"])
        assert s["ratio"] == 1.0 and s["relax"]["ratio"] == 1.0
        assert s["clip_pretrained"] is False
    tx = summary["teachers"]["multimodal"]
    assert tx["relaxed_train_samples"] == tx["train_samples"] == 54
    assert tx["top1"] == tx["top1_relaxed"]  # ratio 1: the label-free text everywhere
    assert 0.0 <= tx["entropy"] <= float(np.log(10)) + 1e-4
    nouns = (tmp_path / "run" / "relaxed_nouns.txt").read_text().split("\n")
    assert "motherfucker" not in nouns and len([n for n in nouns if n]) == summary["relax"]["nouns"]
    stages = {json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"teacher.strong", "teacher.weak", "baseline", "multimodal", "student"}
    assert (tmp_path / "run" / "checkpoints" / "multimodal" / "best.pt").is_file()
    # `kdkit eval --run DIR` re-evaluates the image models' best checkpoints
    from kdkit.engine import evaluate_run

    evaluated = evaluate_run(tmp_path / "run", manager=manager)
    assert evaluated["student"]["top1"] == pytest.approx(summary["student"]["top1"])
    assert evaluated["baseline"]["top1"] == pytest.approx(summary["baseline"]["top1"])
    assert set(evaluated["teachers"]) == {"teacher.strong", "teacher.weak"}


def test_ratio_zero_shows_label_leakage(manager, tiny, tmp_path):
    leak = run_method(manager, tiny + FAST + ["relax.ratio=0"], tmp_path / "leak")["teachers"]["multimodal"]
    assert leak["relaxed_train_samples"] == 0
    assert leak["top1"] >= 90.0 and leak["top1_exact"] >= 90.0  # exact class names: (almost) perfect
    assert leak["top1_relaxed"] < 50.0  # ... and useless without the label


@pytest.mark.parametrize("mode", ["learnable", "fixed", "noise"])
def test_embedding_modes(manager, tiny, tmp_path, mode):
    s = run_method(manager, tiny + FAST + [f"tx.embedding={mode}", "train.epochs=1"], tmp_path / mode)
    tx = s["teachers"]["multimodal"]
    assert tx["embedding"] == mode
    state = torch.load(tmp_path / mode / "checkpoints" / "multimodal" / "best.pt", weights_only=False)
    bank = state["extra_modules"]["nouns"]
    assert torch.allclose(bank["nouns"].norm(dim=-1), torch.ones(len(bank["nouns"])), atol=1e-5)
    if mode == "learnable":
        assert tx["noun_drift"] > 0 and not torch.equal(bank["nouns"], bank["anchor"])
    else:
        assert "noun_drift" not in tx and torch.equal(bank["nouns"], bank["anchor"])
    if mode == "noise":  # anchor = the noise itself, unrelated to CLIP's text embeddings
        clip_words = (tmp_path / mode / "relaxed_nouns.txt").read_text().split()
        assert clip_words


def test_lambda_presets(manager, tiny, tmp_path):
    s = run_method(manager, tiny + FAST + ["tx.preset=authors", "tx.train.epochs=1", "train.epochs=1"],
                   tmp_path / "authors")
    assert (s["teachers"]["multimodal"]["lambda_hier"], s["teachers"]["multimodal"]["lambda_cosreg"]) == (0.2, 0.005)
    s = run_method(manager, tiny + FAST + ["tx.lambda_hier=0.5", "tx.train.epochs=1", "train.epochs=1"],
                   tmp_path / "custom")
    assert (s["teachers"]["multimodal"]["lambda_hier"], s["teachers"]["multimodal"]["lambda_cosreg"]) == (0.5, 0.01)
    with pytest.raises(ConfigError, match="tx.preset"):
        run_method(manager, tiny + FAST + ["tx.preset=mine"], tmp_path / "bad")


def test_sweep_writes_table_and_figure(manager, tiny, tmp_path):
    s = run_method(manager, tiny + ["teachers=[]", "relax.sweep=[0, 1]", "train.epochs=1"], tmp_path / "sweep")
    assert [r["ratio"] for r in s["sweep"]] == [0.0, 1.0]
    assert s["sweep"][0]["teacher_top1"] >= 90.0
    run = tmp_path / "sweep"
    assert (run / "sweep.csv").read_text().startswith("ratio,teacher_top1")
    assert "| ratio |" in (run / "sweep.md").read_text()
    pytest.importorskip("matplotlib")
    assert (run / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    stages = {p.name for p in (run / "checkpoints").iterdir()}
    assert stages == {"baseline", "multimodal.r0", "multimodal.r1", "student.r0", "student.r1"}


def test_protocol_text_and_online_clip_at_distillation(manager, tiny, tmp_path):
    s = run_method(manager, tiny + FAST + ["relax.ratio=0", "distill.tx_text=protocol", "distill.tx_clip=online",
                                           "data.augment=weak"], tmp_path / "proto")
    # the leaky teacher sees exact names at distillation: near-certain, low-entropy targets
    assert s["teachers"]["multimodal"]["train_top1_distill"] >= 90.0
    assert s["distill"]["tx_text"] == "protocol" and s["distill"]["tx_clip"] == "online"


def test_multimodal_only_and_unimodal_only(manager, tiny, tmp_path):
    s = run_method(manager, tiny + ["teachers=[]", "baseline.enabled=false", "train.epochs=1", "tx.train.epochs=1",
                                    "distill.combine=mean_loss"], tmp_path / "tx")
    assert len(s["student"]["teacher_weights"]) == 1
    s = run_method(manager, tiny + ["distill.use_multimodal=false", "baseline.enabled=false",
                                    "distill.combine=inv_val_loss"], tmp_path / "tm")
    assert "multimodal" not in s["teachers"] and len(s["student"]["teacher_weights"]) == 2
    with pytest.raises(ConfigError, match="no teacher"):
        run_method(manager, tiny + ["teachers=[]", "distill.use_multimodal=false"], tmp_path / "none")


class Crash(RuntimeError):
    pass


class Crasher:
    """Raises once per targeted stage, in the middle of its second epoch (after a last.pt exists)."""

    def __init__(self, stages):
        self.pending = list(stages)
        self.crashed: list[str] = []

    @kdkit.hookimpl
    def kdkit_after_step(self, trainer, step, loss, logs):
        name = trainer.stage.name
        if name in self.pending and trainer.epoch >= 1:
            self.pending.remove(name)
            self.crashed.append(name)
            raise Crash(f"simulated crash in {name} at step {step}")


def test_resume_mid_way_through_every_stage_is_exact(tiny, tmp_path):
    import kdkit_wordnet_relax

    from kdkit.engine import train
    from kdkit.plugins import plugin_manager_for_testing

    sets = tiny + ["teacher_train.epochs=2", "train.epochs=2", "tx.train.epochs=3", "data.augment=weak"]
    with plugin_manager_for_testing(kdkit_wordnet_relax) as pm:
        reference = train("wordnet_relax", sets=sets, out=tmp_path / "ref", manager=pm)
    stages = ["teacher.strong", "teacher.weak", "baseline", "multimodal", "student"]
    crasher = Crasher(stages)
    run = tmp_path / "crashed"
    with plugin_manager_for_testing(kdkit_wordnet_relax, crasher) as pm:
        with pytest.raises(Crash):
            train("wordnet_relax", sets=sets, out=run, manager=pm)
        for _ in range(len(stages)):
            try:
                resumed = train(resume=run, manager=pm)
                break
            except Crash:
                continue
    assert crasher.crashed == stages
    assert json.dumps(resumed, sort_keys=True) == json.dumps(reference, sort_keys=True)
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


def _write_cifar100(root, n_train=40, n_test=10, classes=5):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = ["maple_tree", "aquarium_fish", "sweet_pepper", "fox", "whale"] + [f"thing{i}" for i in range(95)]
    rng = np.random.RandomState(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [i % classes for i in range(n)]
        data = rng.randint(0, 256, size=(n, 3072), dtype=np.uint8)
        for i, y in enumerate(labels):  # a class-dependent colour so the tiny models can learn something
            data[i, :1024] = (y * 50) % 256
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * n,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [c.encode() for c in names],
                     b"coarse_label_names": [b"c"] * 20}, f, protocol=2)


def test_cifar100_in_the_real_pickle_format(manager, tiny, tmp_path):
    _write_cifar100(tmp_path / "data")
    s = run_method(manager, _no_shapes_options(tiny) + FAST + ["data.name=cifar100", f"data.root={tmp_path / 'data'}",
                                           "train.epochs=1", "relax.ratio=0"], tmp_path / "cifar")
    assert s["teachers"]["multimodal"]["top1"] >= 90.0  # leakage with 100 class names too
    log = (tmp_path / "cifar" / "train.log").read_text()
    assert "cifar100 with 100 classes" in log


def test_imagefolder_via_get_uint8(manager, tiny, tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, colour in (("red fox", (200, 30, 30)), ("whale", (30, 30, 200))):
            d = tmp_path / "folders" / split / c
            d.mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                Image.new("RGB", (20 + i, 18), colour).save(d / f"{i}.png")
    s = run_method(manager, _no_shapes_options(tiny) + FAST + ["data.name=imagefolder", f"data.root={tmp_path / 'folders'}",
                                           "data.image_size=16", "train.epochs=1", "tx.train.epochs=2",
                                           "relax.ratio=0.5"], tmp_path / "if")
    assert s["teachers"]["multimodal"]["relaxed_train_samples"] == round(0.5 * 11)  # 11 training images


def test_cli_default_command_reaches_the_plugin(tmp_path, tiny):
    """`kdkit train --method wordnet_relax` through the real CLI (tiny overrides for speed)."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "plugins"), str(ROOT), env.get("PYTHONPATH", "")])
    env["KDKIT_BLOCK_PLUGINS"] = "soda,wordnet_relax"  # the entry point is loaded below by module path
    env["OMP_NUM_THREADS"] = "1"
    args = [sys.executable, "-m", "kdkit", "--plugins-module", "kdkit_wordnet_relax", "train", "--plugin",
            "wordnet_relax", "--out", str(tmp_path / "cli")]
    for s in tiny + FAST + ["train.epochs=1", "tx.train.epochs=2"]:
        args += ["--set", s]
    r = kdkit_prestarted.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wordnet_relax results" in r.stdout
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["clip_pretrained"] is False
    bad = kdkit_prestarted.run(args[:-2] + ["--out", str(tmp_path / "bad"), "--set", "relax.ratio=2"], env=env,
                               capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "relax.ratio" in bad.stderr
    assert not (tmp_path / "bad").exists()  # checked before the run directory is created


def test_feature_term_on_a_unimodal_teacher(manager, tiny, tmp_path):
    """distill.terms reach wordnet_relax's student: a fitnet term on T_m 1 (weak aug) trains with the
    student; tapping T_x (no feature maps) is a one-line error before anything trains."""
    terms = ("distill.terms=[{loss: kl, weight: 0.4}, "
             "{loss: fitnet, weight: 5.0, student: features.7, teacher: features.7, teacher_index: 1}]")
    summary = run_method(manager, tiny + [terms], tmp_path / "run")
    assert [t["loss"] for t in summary["student"]["terms"]] == ["kl", "fitnet"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train.fitnet" in x for x in lines if x["stage"] == "student")
    bad = terms.replace("teacher_index: 1", "teacher_index: 2")
    with pytest.raises(kdkit.ConfigError, match="teacher 2 has no feature maps"):
        run_method(manager, tiny + [bad], tmp_path / "bad")
    assert not (tmp_path / "bad" / "checkpoints").exists()
