"""Fuzz checkpoints: `load_checkpoint` (kdkit/engine/checkpoint.py, `--resume`) and what
`kdkit eval` does with a best checkpoint (`RunContext.load_best`: the state dict into the model).

Outcomes allowed: the checkpoint loads (into the model), or a one-line KdkitError.
"""
from __future__ import annotations

import io

import pytest
import torch
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import given
from hypothesis import strategies as st

from kdkit.engine.checkpoint import load_checkpoint
from kdkit.engine.context import RunContext
from kdkit.errors import KdkitError

pytestmark = pytest.mark.fuzz
budget = family_settings(3)  # the three tests share the family's budget


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


#: the run the checkpoints belong to (load_best refuses another run's or stage's)
RUN = {"run_id": "0" * 32, "adopted": False}
OWNER = {"stage": "student", "run_id": RUN["run_id"]}
CHECKPOINT = _saved({**OWNER, "model": _model().state_dict(), "epoch": 3, "metrics": {"acc": 0.5},
                     "rng": {"torch": torch.get_rng_state()}, "extra_modules": {}})


def _run_dir_context(run_dir) -> RunContext:
    ctx = RunContext.__new__(RunContext)  # what `kdkit eval` builds: a read-only context
    ctx.run_dir, ctx.device, ctx.run = run_dir, torch.device("cpu"), RUN
    return ctx


def _load_best(payload: bytes) -> None:
    with scratch_dir() as d, time_limit():
        best = d / "checkpoints" / "student" / "best.pt"
        best.parent.mkdir(parents=True)
        best.write_bytes(payload)
        try:
            state = load_checkpoint(best)
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert isinstance(state, dict)
        try:
            metrics = _run_dir_context(d).load_best("student", _model())
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert isinstance(metrics, dict)


@budget
@given(payload=mutated(CHECKPOINT, max_edits=4))
def test_mutated_checkpoint_bytes(payload):
    _load_best(payload)


tensors = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                    st.lists(st.integers(0, 4), max_size=2).map(tuple),
                    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | tensors,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
model_keys = st.sampled_from(["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                              "1.num_batches_tracked", "extra"])


@budget
@given(model=st.one_of(values, st.dictionaries(model_keys, st.one_of(tensors, values), max_size=8)),
       extra=st.dictionaries(st.sampled_from(["model", "metrics", "extra_modules", "epoch"]), values, max_size=3))
def test_structured_checkpoints(model, extra):
    state = {**OWNER, "model": model}
    state.update(extra)
    _load_best(_saved(state))


@budget
@given(obj=values)
def test_checkpoints_that_are_not_dicts(obj):
    _load_best(_saved(obj))
