"""kd with a feature term (fitnet) trains from the teacher cache — logits and tapped features looked up
by sample index, the teacher never run in the student stage — along the trajectory of the online
teacher; ``teacher_cache: auto`` moves them to the disk store when they exceed the memory bound."""
from __future__ import annotations

import json

import pytest

import kdkit
from kdkit_engine_testutil import TINY

TERMS = "[{loss: kl, weight: 0.5}, {loss: fitnet, weight: 5.0, student: features.7, teacher: features.7}]"
FITNET = [*TINY, f"distill.terms={TERMS}"]
TIMING = ("time", "seconds", "elapsed", "wall")


def _student_lines(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["stage"] == "student"]


def _same_trajectory(a, b):
    la, lb = _student_lines(a), _student_lines(b)
    assert len(la) == len(lb) and any("train.fitnet" in x for x in la)
    for x, y in zip(la, lb):
        assert x.keys() == y.keys()
        for k in x:
            if any(t in k for t in TIMING):
                continue
            if isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), (k, x, y)
            else:
                assert x[k] == y[k], (k, x, y)


@pytest.mark.slow
def test_fitnet_from_the_cache_follows_the_online_teacher(tmp_path, manager, monkeypatch):
    from kdkit.engine import train

    cached = train("kd", sets=FITNET + ["distill.teacher_cache=true"], out=tmp_path / "cached", manager=manager)
    online = train("kd", sets=FITNET + ["distill.teacher_cache=false"], out=tmp_path / "online", manager=manager)
    assert cached["distill"]["teacher_cache"] is True and online["distill"]["teacher_cache"] is False
    log = (tmp_path / "cached" / "train.log").read_text()
    assert "teacher cache estimate" in log and "tapped features" in log
    _same_trajectory(tmp_path / "cached", tmp_path / "online")
    assert cached["student"]["top1"] == pytest.approx(online["student"]["top1"], abs=1e-6)

    auto = train("kd", sets=FITNET, out=tmp_path / "auto", manager=manager)  # un-augmented, small: cached
    assert auto["distill"]["teacher_cache"] is True

    import kdkit.distill.cache

    monkeypatch.setattr(kdkit.distill.cache, "AUTO_FEATURE_CACHE_BYTES", 1024)  # the features exceed the bound
    big = train("kd", sets=FITNET, out=tmp_path / "big", manager=manager)
    assert big["distill"]["teacher_cache"] is True and big["distill"]["teacher_cache_mode"] == "disk"
    assert "teacher cache: disk (the teacher outputs would take" in (tmp_path / "big" / "train.log").read_text()
    forced = train("kd", sets=FITNET + ["distill.teacher_cache=true"], out=tmp_path / "forced", manager=manager)
    assert forced["distill"]["teacher_cache"] is True
    assert "WARNING: teacher_cache=true holds" in (tmp_path / "forced" / "train.log").read_text()


class _FeatureOracle:
    """Test plugin: teacher ``oracle_tagged`` whose tapped module ``tag`` outputs the oracle's vector
    of the sample's position (``tagged_shapes``), and loss ``record_teacher_feature`` that records
    the teacher feature it is given."""

    seen: list = []

    @staticmethod
    @kdkit.hookimpl
    def kdkit_register_teachers(register):
        import torch
        from torch import nn

        from kdkit_oracle_testplugin import decode, sample_vector

        class Tag(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.num_classes = num_classes

            def forward(self, x):
                return sample_vector(decode(x)[0], self.num_classes).to(x.device)

        class Tagged(nn.Module):
            def __init__(self, num_classes: int, **_):
                super().__init__()
                self.tag = Tag(num_classes)
                self.anchor = nn.Parameter(torch.zeros(()))

            def forward(self, x):
                return self.tag(x) + 0.0 * self.anchor

        register("oracle_tagged", Tagged, description="tapped module tag: a vector of the sample position (tests)")

    @staticmethod
    @kdkit.hookimpl
    def kdkit_register_losses(register):
        def factory():
            def loss(inputs):
                _FeatureOracle.seen.append(inputs.teacher_feature.detach().float().cpu())
                return 0.0 * inputs.student_logits.sum()

            return loss

        register("record_teacher_feature", factory, description="records the teacher feature it sees (tests)")


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["true", "false"])
def test_every_step_sees_its_own_samples_cached_features(tmp_path, cache):
    """tagged_shapes (class-sorted; the validation split held out, so training positions are a Subset's)
    through a shuffling loader: at every step the feature term receives, row by row, the teacher feature
    of exactly the samples in the student's batch — from the cache as from the online teacher."""
    import kdkit_engine_testplugin
    import kdkit_oracle_testplugin as oracle
    import torch

    from kdkit.engine import train
    from kdkit.plugins import plugin_manager_for_testing

    sets = ["data.name=tagged_shapes", "baseline.enabled=false", "data.train_per_class=8", "data.test_per_class=4", "data.augment=none",
            "student.name=probe", "teachers=[{name: oracle_tagged}]", "teacher_train.epochs=1",
            "teacher_train.batch_size=16", "train.epochs=2", "train.batch_size=16", "logging.progress=false",
            "distill.agreement_samples=0", f"distill.teacher_cache={cache}",
            "distill.terms=[{loss: kl, weight: 0.5}, {loss: record_teacher_feature, teacher: tag}]"]
    with plugin_manager_for_testing(kdkit_engine_testplugin, oracle, _FeatureOracle()) as pm:
        oracle.reset_record()
        _FeatureOracle.seen.clear()
        summary = train("kd", sets=sets, out=tmp_path / "run", manager=pm)
    assert summary["distill"]["teacher_cache"] is (cache == "true")
    ids, seen = oracle.RECORD["student_ids"], _FeatureOracle.seen
    assert len(ids) == len(seen) == 2 * 5  # 72 training samples, batches of 16, two epochs
    first = torch.cat(ids[:5])
    assert not torch.equal(first, first.sort().values)  # shuffled
    for positions, feature in zip(ids, seen):
        torch.testing.assert_close(feature, oracle.sample_vector(positions, 10))
