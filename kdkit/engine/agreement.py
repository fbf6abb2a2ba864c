"""A cheap guard for distillation: are the teacher outputs paired with the right samples?

A student taught the wrong samples' targets trains without error and reaches a plausible accuracy,
so nothing downstream notices.  One symptom is visible in the first batches, though: how often the
teacher outputs the loss receives agree with the batch's labels.  For a correctly paired teacher
this is close to (usually above, training data being easier) its own validation accuracy; for a
misaligned one it falls to chance.  :class:`TeacherAgreement` measures it on the first training
samples of the student stage, logs it once next to each teacher's validation accuracy and warns
loudly when it is far below.  Its counts are buffers: give it to the stage as an extra module and
the report survives an exact resume.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["TeacherAgreement"]


class TeacherAgreement(nn.Module):
    """Agreement of teacher argmax with the labels on the first ``samples`` training samples.

    :param names: one name per teacher, in the order of the logits given to :meth:`observe`.
    :param reference_top1: each teacher's own accuracy (percent) on held-out data — what its
        agreement should roughly reach; ``None`` where unknown (then that teacher is only reported).
    :param log: where the one-time report goes (e.g. ``ctx.log``).
    :param samples: how many training samples to look at (0 turns the guard off).
    :param warn_ratio: warn when a teacher's agreement is below ``warn_ratio`` times its reference
        (and the reference is at least twice chance, so that the comparison means something).

    ``report`` holds the result once available: ``{"samples", "combined", "teachers": {name:
    {"agreement", "reference"}}, "warnings": [names]}`` (percentages; ``combined`` is the argmax of
    the mean of the teachers' logits).
    """

    def __init__(self, names: Sequence[str], reference_top1: Sequence[float | None],
                 log: Callable[[str], None] = print, samples: int = 512, warn_ratio: float = 0.5):
        if len(names) != len(reference_top1):
            raise ValueError("TeacherAgreement: one reference accuracy per teacher name")
        super().__init__()
        self.names = list(names)
        self.reference = [None if r is None else float(r) for r in reference_top1]
        self.log = log
        self.samples = int(samples)
        self.warn_ratio = float(warn_ratio)
        self.register_buffer("correct", torch.zeros(len(self.names), dtype=torch.long))
        self.register_buffer("combined", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_classes", torch.zeros((), dtype=torch.long))
        self.register_buffer("closed", torch.zeros((), dtype=torch.bool))
        self.report: dict | None = None

    @property
    def done(self) -> bool:
        return self.samples <= 0 or bool(self.closed)

    @torch.no_grad()
    def observe(self, teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor) -> None:
        """Count one batch (``teacher_logits[i]``: ``B x C`` of teacher ``i``; ``labels``: ``B``)."""
        if self.done:
            return
        if len(teacher_logits) != len(self.names):
            raise ValueError(f"TeacherAgreement: {len(teacher_logits)} teacher outputs for {len(self.names)} names")
        labels = labels.detach().to(self.seen.device)
        take = min(int(labels.shape[0]), self.samples - int(self.seen))
        labels = labels[:take]
        logits = [t.detach()[:take].float().to(self.seen.device) for t in teacher_logits]
        for i, t in enumerate(logits):
            self.correct[i] += (t.argmax(1) == labels).sum()
        self.combined += (torch.stack(logits).mean(0).argmax(1) == labels).sum()
        self.num_classes.fill_(int(logits[0].shape[1]))
        self.seen += take
        if int(self.seen) >= self.samples:
            self.finish()

    def finish(self) -> dict | None:
        """Report now (also with fewer samples than asked for, e.g. after a short first epoch);
        the first call after the counts are restored from a checkpoint reports them again."""
        if self.report is not None or int(self.seen) == 0:
            return self.report
        self.closed.fill_(True)
        n = int(self.seen)
        chance = 100.0 / max(int(self.num_classes), 1)
        teachers, warnings = {}, []
        for name, ref, correct in zip(self.names, self.reference, self.correct.tolist()):
            agreement = 100.0 * correct / n
            teachers[name] = {"agreement": agreement, "reference": ref}
            if ref is not None and ref >= 2 * chance and agreement < self.warn_ratio * ref:
                warnings.append(name)
        self.report = {"samples": n, "combined": 100.0 * int(self.combined) / n, "teachers": teachers,
                       "warnings": warnings}
        parts = [f"{name} {t['agreement']:.1f} %" + (f" (its validation top-1 {t['reference']:.1f} %)"
                                                      if t["reference"] is not None else "")
                 for name, t in teachers.items()]
        self.log(f"teacher agreement: argmax = label on the first {n} training samples of the student: "
                 + "; ".join(parts) + f"; combined {self.report['combined']:.1f} %")
        for name in warnings:
            t = teachers[name]
            self.log(f"WARNING: teacher {name} agrees with the training labels on only {t['agreement']:.1f} % of "
                     f"the first {n} samples, against {t['reference']:.1f} % on validation: its outputs are "
                     "probably paired with the wrong samples (or the student's training data is not the data "
                     "the teacher was trained and validated on). The student is being taught wrong targets.")
        return self.report
