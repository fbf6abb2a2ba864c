"""The kd method pairs every teacher output with the right sample: oracle teachers, sample by sample.

The data is ``tagged_shapes`` (class-sorted, a held-out validation split, shuffled by the loader);
every image carries its own position and label, so the oracle teachers are right whatever order the
samples arrive in, and the ``probe`` student records which samples each training batch holds.  The
``record_kl`` loss records the teacher logits it is given.  For every training step the logits the
loss saw must be the oracle's logits of exactly the samples in the student's batch.
"""
from __future__ import annotations

import pytest
import torch

import kdkit_oracle_testplugin as oracle
from kdkit_oracle_testplugin import RECORD, label_logits, sample_vector

from kdkit.distill import COMBINE_RULES

BASE = [
    "data.name=tagged_shapes", "baseline.enabled=false", "data.train_per_class=8", "data.test_per_class=4", "data.augment=none",
    "student.name=probe", "distill.loss=record_kl", "teacher_train.epochs=1", "teacher_train.batch_size=16",
    "train.epochs=2", "train.batch_size=16", "logging.progress=false",
]
SCALE = 10.0


@pytest.fixture
def oracle_manager():
    import kdkit_engine_testplugin

    from kdkit.plugins import plugin_manager_for_testing

    with plugin_manager_for_testing(kdkit_engine_testplugin, oracle) as pm:
        oracle.reset_record()
        yield pm


def _train_targets():
    ds = oracle._tagged_shapes("train", None, train_per_class=8, test_per_class=4)
    return torch.as_tensor(ds.targets)


def _label_logits(positions, targets):
    return label_logits(positions, targets[positions], 10, SCALE)


def _steps(calls_per_step: int):
    ids, seen = RECORD["student_ids"], RECORD["teacher_logits"]
    assert ids and len(seen) == calls_per_step * len(ids), (len(seen), len(ids))
    for k, positions in enumerate(ids):
        yield positions, seen[k * calls_per_step:(k + 1) * calls_per_step]


def _check_split_integrity():
    """Every training sample, and no held-out validation sample, reaches the student once per epoch,
    in a shuffled order."""
    from kdkit.engine.data import split_train_val

    fitted, held_out = split_train_val(oracle._tagged_shapes("train", None, train_per_class=8, test_per_class=4),
                                       0.1, seed=0)
    ids = torch.cat(RECORD["student_ids"])
    assert ids.numel() == 2 * len(fitted)  # two epochs
    for epoch in ids.split(len(fitted)):
        assert sorted(epoch.tolist()) == list(fitted.indices)
        assert set(epoch.tolist()).isdisjoint(held_out.indices)
    first = ids[:16]
    assert not torch.equal(first, first.sort().values), "the loader should shuffle"


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_single_oracle_is_what_the_loss_sees(oracle_manager, tmp_path, cache):
    from kdkit.engine import train

    sets = BASE + ["teachers=[{name: oracle_sample}]"] + (["distill.teacher_cache=false"] if cache == "off" else [])
    summary = train("kd", sets=sets, out=tmp_path / "run", manager=oracle_manager)
    assert summary["distill"]["teacher_cache"] is (cache == "auto")
    for positions, (t,) in _steps(1):
        torch.testing.assert_close(t, sample_vector(positions, 10))
    _check_split_integrity()


@pytest.mark.parametrize("rule", COMBINE_RULES)
@pytest.mark.parametrize("cache", ["auto", "off"])
def test_two_oracles_every_combination_rule(oracle_manager, tmp_path, rule, cache):
    """A label oracle and a sample oracle: ``avg_logits`` sees their mean, the loss-combining rules
    see each teacher in turn — for the samples of the student's batch, row by row."""
    from kdkit.engine import train

    targets = _train_targets()
    sets = BASE + [f"teachers=[{{name: oracle_label, scale: {SCALE}}}, {{name: oracle_sample}}]",
                   f"distill.combine={rule}"] + (["distill.teacher_cache=false"] if cache == "off" else [])
    summary = train("kd", sets=sets, out=tmp_path / "run", manager=oracle_manager)
    calls = 1 if rule == "avg_logits" else 2
    for positions, seen in _steps(calls):
        label, sample = _label_logits(positions, targets), sample_vector(positions, 10)
        if rule == "avg_logits":
            torch.testing.assert_close(seen[0], (label + sample) / 2)
        else:
            torch.testing.assert_close(seen[0], label)
            torch.testing.assert_close(seen[1], sample)
    agreement = summary["distill"]["teacher_agreement"]
    assert agreement["teachers"]["teacher.oracle_label"]["agreement"] == 100.0
    assert agreement["teachers"]["teacher.oracle_label"]["reference"] == 100.0
    assert agreement["warnings"] == []


def test_student_distilled_from_the_oracle_alone_learns_the_training_set(oracle_manager, tmp_path):
    """alpha = 0: the labels reach the student only through the teacher.  Taught the right
    samples' targets it fits the training data; taught other samples' targets it stays near chance."""
    from kdkit.engine import open_run, train
    from kdkit.engine.data import make_eval_loader

    sets = BASE + [f"teachers=[{{name: oracle_label, scale: {SCALE}}}]", "distill.alpha=0.0",
                   "distill.loss=kl", "distill.temperature=1.0", "train.epochs=30", "train.lr=0.01",
                   "checkpoint.select_on=val"]
    summary = train("kd", sets=sets, out=tmp_path / "run", manager=oracle_manager)
    assert summary["distill"]["teacher_agreement"]["teachers"]["teacher.oracle_label"]["agreement"] == 100.0
    ctx, _ = open_run(tmp_path / "run", oracle_manager)
    student = ctx.build_model("students", ctx.config["student"], 10, seed_tag="student")
    ctx.load_best("student", student)
    fitted, _, _, _ = ctx.classification_data()  # the 72 training samples (validation held out)
    metrics = ctx.evaluate(student, make_eval_loader(fitted, 256))
    print("student top-1 on its training data:", metrics)
    assert metrics["top1"] >= 95.0, metrics


def test_the_guard_warns_when_the_index_is_lost(oracle_manager, tmp_path, monkeypatch):
    """Re-create the lost-index bug (the batch's last element is the label, not the index): the
    student is taught other samples' targets and the run says so, loudly, in its log."""
    from kdkit.engine import train
    from kdkit.engine.data import WithIndex

    monkeypatch.setattr(WithIndex, "__getitems__", lambda self, indices: [self.dataset[i] for i in indices])
    sets = BASE + [f"teachers=[{{name: oracle_label, scale: {SCALE}}}]"]
    summary = train("kd", sets=sets, out=tmp_path / "run", manager=oracle_manager)
    report = summary["distill"]["teacher_agreement"]
    assert report["warnings"] == ["teacher.oracle_label"]
    assert report["teachers"]["teacher.oracle_label"]["agreement"] < 50
    log = (tmp_path / "run" / "train.log").read_text()
    assert "WARNING: teacher teacher.oracle_label agrees with the training labels on only" in log
