"""SODA stage 2 fits each text to the frozen stage-1 code of *its own* image.

Every training batch of the student stage is recorded as the engine hands it to the step; for each
row, the position it carries must be the row of the training features it came from, and the frozen
code looked up at that position must be the sign of the stage-1 image head on that row's image.
"""
from __future__ import annotations

import torch

from kdkit.engine import train
from kdkit.engine.trainer import Trainer

SETS = ["data.size=160", "soda.bits=[16]", "train.epochs=2", "train.batch_size=32", "seed=3", "soda.baseline=false",
        "logging.progress=false"]


def test_student_batches_pair_text_with_their_own_frozen_image_code(tmp_path, monkeypatch):
    from kdkit_soda.hashing import encode_features, sign_codes
    from kdkit_soda.method import SodaMethod

    seen: dict = {"batches": []}
    step, train_student = Trainer.train_model_step, SodaMethod.train_student

    def record_step(self, batch):
        if self.stage.name.startswith("student."):
            seen["batches"].append([b.detach().cpu() for b in batch])
        return step(self, batch)

    def capture(self, ctx, bits, teacher, fit_ds, val_q):
        seen["fit"], seen["teacher"], seen["device"] = fit_ds, teacher, ctx.device
        return train_student(self, ctx, bits, teacher, fit_ds, val_q)

    monkeypatch.setattr(Trainer, "train_model_step", record_step)
    monkeypatch.setattr(SodaMethod, "train_student", capture)
    train("soda", sets=SETS, out=tmp_path / "run")

    fit = seen["fit"]
    codes = sign_codes(encode_features(seen["teacher"].a, fit.image, seen["device"])).cpu()
    positions = []
    assert seen["batches"]
    for pos, image, text, label_feat, labels in seen["batches"]:
        torch.testing.assert_close(image, fit.image[pos])
        torch.testing.assert_close(text, fit.text[pos])
        torch.testing.assert_close(labels, fit.labels[pos])
        own = sign_codes(encode_features(seen["teacher"].a, image, seen["device"])).cpu()
        torch.testing.assert_close(codes[pos], own)
        positions += pos.tolist()
    n = len(fit)
    assert sorted(positions) == sorted(list(range(n)) * 2)  # every sample once per epoch, 2 epochs
    assert positions[:n] != list(range(n))  # shuffled
