"""`RunContext.load_best` (what `kdkit eval` loads): a readable best.pt that does not fit the stage's
model is a one-line CheckpointError, not a KeyError/TypeError/RuntimeError traceback (issue 12,
found by tests/fuzz/test_fuzz_checkpoint.py)."""
from __future__ import annotations

import pytest
import torch

from kdkit.engine.checkpoint import CheckpointError, save_checkpoint
from kdkit.engine.context import RunContext


RUN = {"run_id": "0" * 32, "adopted": False}
OWNER = {"stage": "student", "run_id": RUN["run_id"]}  # the checkpoint is the stage's own


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


@pytest.mark.parametrize("state, words", [
    ({}, "KeyError: 'model'"),
    ({"model": None}, "TypeError: Expected state_dict to be dict-like"),
    ({"model": {"0.weight": torch.zeros(2, 2)}}, "RuntimeError: Error(s) in loading state_dict for Sequential:"),
    ({"model": _model().state_dict(), "metrics": [1, 2]}, "TypeError"),
], ids=["no-model", "model-none", "wrong-shapes", "metrics-not-a-mapping"])
def test_a_checkpoint_that_does_not_fit_is_a_one_line_error(tmp_path, state, words):
    best = tmp_path / "checkpoints" / "student" / "best.pt"
    best.parent.mkdir(parents=True)
    save_checkpoint({**OWNER, **state}, best)
    ctx = RunContext.__new__(RunContext)  # what `kdkit eval` builds: a read-only context
    ctx.run_dir, ctx.device, ctx.run = tmp_path, torch.device("cpu"), RUN
    with pytest.raises(CheckpointError) as info:
        ctx.load_best("student", _model())
    message = str(info.value)
    assert "\n" not in message and f"checkpoint {best} does not fit stage 'student'" in message
    assert words in message
