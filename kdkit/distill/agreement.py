"""A cheap guard for distillation: are the teacher outputs paired with the right samples?

A student taught the wrong samples' targets trains without error and reaches a plausible accuracy,
so nothing downstream notices.  Two symptoms are visible in the first batches, though:

* how often the teacher outputs the loss receives agree with the batch's labels.  For a correctly
  paired teacher this is close to (usually above, training data being easier) its own validation
  accuracy; for outputs of other samples it falls towards chance;
* whether different samples of a batch receive bit-identical teacher outputs.  A real teacher
  practically never gives two different images exactly the same logits; outputs looked up by a
  coarser key than the sample (its label, say) do so for most of the batch.

:class:`TeacherAgreement` measures both on the first training samples of the student stage, logs
them once next to each teacher's validation accuracy and warns loudly when either is off.  Its
counts are buffers: give it to the stage as an extra module and the report survives an exact
resume.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["TeacherAgreement"]


class TeacherAgreement(nn.Module):
    """Teacher argmax vs labels, and identical outputs, on the first ``samples`` training samples.

    :param names: one name per teacher, in the order of the logits given to :meth:`observe`.
    :param reference_top1: each teacher's own accuracy (percent) on held-out data — what its
        agreement should roughly reach; ``None`` where unknown (then only identical outputs are
        checked for that teacher).
    :param log: where the one-time report goes (e.g. ``ctx.log``).
    :param samples: how many training samples to look at (0 turns the guard off).
    :param min_gap: warn when a teacher's agreement is below its reference by more than
        ``min_gap`` percentage points and by more than ``z`` standard errors of the agreement
        measured on ``samples`` samples (and the reference is at least twice chance, so that the
        comparison means something).  A correctly paired teacher usually agrees *more* often on
        training data than on validation data; heavy augmentation of the student's batches (which
        the teachers then see) is the legitimate way to fall below.
    :param max_identical: warn when more than this share of the samples got exactly the output of
        another sample of their batch.

    ``report`` holds the result once available: ``{"samples", "combined", "teachers": {name:
    {"agreement", "reference", "identical"}}, "warnings": [names]}`` (percentages; ``combined`` is
    the argmax of the mean of the teachers' logits).
    """

    def __init__(self, names: Sequence[str], reference_top1: Sequence[float | None],
                 log: Callable[[str], None] = print, samples: int = 512, min_gap: float = 10.0,
                 z: float = 4.0, max_identical: float = 0.25):
        if len(names) != len(reference_top1):
            raise ValueError("TeacherAgreement: one reference accuracy per teacher name")
        super().__init__()
        self.names = list(names)
        self.reference = [None if r is None else float(r) for r in reference_top1]
        self.log = log
        self.samples = int(samples)
        self.min_gap, self.z, self.max_identical = float(min_gap), float(z), float(max_identical)
        self.register_buffer("correct", torch.zeros(len(self.names), dtype=torch.long))
        self.register_buffer("identical", torch.zeros(len(self.names), dtype=torch.long))
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
            self.identical[i] += take - torch.unique(t, dim=0).shape[0]
        self.combined += (torch.stack(logits).mean(0).argmax(1) == labels).sum()
        self.num_classes.fill_(int(logits[0].shape[1]))
        self.seen += take
        if int(self.seen) >= self.samples:
            self.finish()

    def far_below(self, agreement: float, reference: float, n: int) -> bool:
        """Is ``agreement`` (percent, on ``n`` samples) too far below ``reference`` to be chance?"""
        p = min(max(reference / 100.0, 0.0), 1.0)
        standard_error = 100.0 * math.sqrt(p * (1.0 - p) / max(n, 1))
        return reference - agreement > max(self.min_gap, self.z * standard_error)

    def finish(self) -> dict | None:
        """Report now (also with fewer samples than asked for, e.g. after a short first epoch);
        the first call after the counts are restored from a checkpoint reports them again."""
        if self.report is not None or int(self.seen) == 0:
            return self.report
        self.closed.fill_(True)
        n = int(self.seen)
        chance = 100.0 / max(int(self.num_classes), 1)
        teachers, warnings, lines = {}, [], []
        for name, ref, correct, same in zip(self.names, self.reference, self.correct.tolist(),
                                            self.identical.tolist()):
            t = {"agreement": 100.0 * correct / n, "reference": ref, "identical": 100.0 * same / n}
            teachers[name] = t
            found = []
            if ref is not None and ref >= 2 * chance and self.far_below(t["agreement"], ref, n):
                found.append(f"WARNING: teacher {name} agrees with the training labels on only {t['agreement']:.1f} % "
                             f"of the first {n} samples, against {ref:.1f} % on validation: its outputs are probably "
                             "paired with the wrong samples (or the student's batches are not like the data the "
                             "teacher was validated on).")
            if same > self.max_identical * n:
                found.append(f"WARNING: teacher {name} gave {t['identical']:.1f} % of the first {n} training samples "
                             "exactly the output of another sample in their batch: its outputs are probably looked "
                             "up by something other than the sample (its label, say).")
            if found:
                warnings.append(name)
                lines += found
        self.report = {"samples": n, "combined": 100.0 * int(self.combined) / n, "teachers": teachers,
                       "warnings": warnings}
        parts = [f"{name} {t['agreement']:.1f} %" + (f" (its validation top-1 {t['reference']:.1f} %)"
                                                      if t["reference"] is not None else "")
                 for name, t in teachers.items()]
        self.log(f"teacher agreement: argmax = label on the first {n} training samples of the student: "
                 + "; ".join(parts) + f"; combined {self.report['combined']:.1f} %")
        for line in lines:
            self.log(line)
        if warnings:
            self.log("WARNING: the student is probably being taught wrong targets (distill.agreement_samples: "
                     "0 turns this check off).")
        return self.report
