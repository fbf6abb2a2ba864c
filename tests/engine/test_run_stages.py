"""A method's declared stages (``kdkit.Method.stages``) hold at run time: a stage it did not declare
is refused before it trains, and one it declared but did not train is a warning (an error in this
suite, pyproject's filterwarnings) — what lets ``kdkit sweep`` check its rows before anything runs."""
from __future__ import annotations

import json

import pytest

import kdkit
from kdkit.engine import train
from kdkit.errors import KdkitError
from kdkit.methodspec import StageDeclarationWarning, declared_stages
from kdkit.plugins import plugin_manager_for_testing


class _TwoStages(kdkit.Method):
    """Trains stages ``first`` then ``second`` (a linear model on the shapes data); declares ``DECLARED``."""

    DECLARED: list | None = ["first", "second"]

    @classmethod
    def default_config(cls):
        return kdkit.base_config()

    @classmethod
    def stages(cls, config):
        return cls.DECLARED

    def run(self, ctx):
        train, val, test, classes = ctx.classification_data()
        for name in ("first", "second"):
            model = ctx.build_model("students", {"name": "convnet", "width": 2}, len(classes), seed_tag=name)
            ctx.fit(kdkit.Stage(name=name, model=model, train_data=train, val_data=val, test_data=test))
        return {"trained": list(ctx.stage_results)}


class _Undeclared(_TwoStages):
    DECLARED = ["first"]


class _Overdeclared(_TwoStages):
    DECLARED = ["first", "second", "third"]


class _Silent(_TwoStages):
    DECLARED = None


class _Plugin:
    @kdkit.hookimpl
    def kdkit_register_methods(self, register):
        for name, cls in (("two", _TwoStages), ("undeclared", _Undeclared), ("overdeclared", _Overdeclared),
                          ("silent", _Silent)):
            register(name, cls)


SETS = ["data.name=shapes", "data.train_per_class=4", "data.test_per_class=2", "data.augment=none",
        "train.epochs=1", "train.batch_size=8", "logging.progress=false"]


@pytest.fixture
def manager():
    with plugin_manager_for_testing(_Plugin()) as pm:
        yield pm


def test_declared_stages_are_trained(tmp_path, manager):
    assert train("two", sets=SETS, out=tmp_path / "r", manager=manager) == {"trained": ["first", "second"]}
    assert train("silent", sets=SETS, out=tmp_path / "s", manager=manager) == {"trained": ["first", "second"]}


def test_a_stage_the_method_did_not_declare_is_refused_before_it_trains(tmp_path, manager):
    with pytest.raises(KdkitError, match=r"method 'undeclared' trains stage 'second', which its stages\(\) does not "
                                         r"declare \(first\); a bug in the method"):
        train("undeclared", sets=SETS, out=tmp_path / "r", manager=manager)
    stages = {json.loads(line)["stage"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"first"}  # "second" never started


def test_a_declared_stage_the_run_skipped_fails_the_suite(tmp_path, manager):
    with pytest.raises(StageDeclarationWarning, match=r"declared stages not trained: \['third'\]"):
        train("overdeclared", sets=SETS, out=tmp_path / "r", manager=manager)
    assert "declares stage third (stages()) but did not train it" in (tmp_path / "r" / "train.log").read_text()


def test_a_malformed_declaration_is_named():
    class Bad(_TwoStages):
        DECLARED = "first"

    with pytest.raises(KdkitError, match="method Bad: stages\\(\\) must return a list of stage names or None"):
        declared_stages(Bad, {})
