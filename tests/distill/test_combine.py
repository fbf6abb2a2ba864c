"""kdkit.distill.TeacherCombiner is a plain importable class: subclass it, pickle it, checkpoint it."""
from __future__ import annotations

import pickle

import torch

from kdkit.distill import TeacherCombiner
from kdkit.losses import hinton_kd


def test_pickles_with_its_buffers_and_subclasses():
    c = TeacherCombiner("inv_val_loss", 3)
    c.set_weights_from_losses([1.0, 2.0, 4.0])
    again = pickle.loads(pickle.dumps(c))
    torch.testing.assert_close(again.weights, c.weights)
    assert again.rule == "inv_val_loss"

    class FirstTeacherOnly(TeacherCombiner):
        def forward(self, teacher_logits, targets, term, weights=None):
            return term(teacher_logits[0], 0)

    s, t = torch.randn(4, 5), [torch.randn(4, 5), torch.randn(4, 5)]
    out = FirstTeacherOnly("mean_loss", 2)(t, torch.zeros(4, dtype=torch.long), lambda logits, i: hinton_kd(s, logits))
    torch.testing.assert_close(out, hinton_kd(s, t[0]))
