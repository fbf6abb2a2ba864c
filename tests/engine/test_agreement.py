"""kdkit.distill.agreement: the once-per-run check that teacher outputs belong to their samples."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdkit.distill.agreement import TeacherAgreement


def _batches(labels, logits, size):
    for s in range(0, len(labels), size):
        yield logits[s:s + size], labels[s:s + size]


def test_aligned_teacher_reports_its_accuracy_without_warning():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (300,), generator=g)
    good = 5 * F.one_hot(labels, 10).float() + 0.01 * torch.randn(300, 10, generator=g)
    noisy = torch.randn(300, 10, generator=g)
    lines = []
    guard = TeacherAgreement(["good", "noisy"], [100.0, None], lines.append, samples=256)
    for s in range(0, 300, 64):
        guard.observe([good[s:s + 64], noisy[s:s + 64]], labels[s:s + 64])
    r = guard.report
    assert r["samples"] == 256 and r["teachers"]["good"]["agreement"] == 100.0
    expected_noisy = 100.0 * float((noisy[:256].argmax(1) == labels[:256]).float().mean())
    assert abs(r["teachers"]["noisy"]["agreement"] - expected_noisy) < 1e-9
    combined = (torch.stack([good, noisy])[:, :256].mean(0).argmax(1) == labels[:256]).float().mean() * 100
    assert abs(r["combined"] - float(combined)) < 1e-9
    assert r["warnings"] == [] and len(lines) == 1 and "good 100.0 %" in lines[0]
    assert r["teachers"]["good"]["identical"] == 0.0


def test_teacher_paired_with_other_samples_warns_loudly():
    """The bug this guards against: a perfect teacher whose outputs belong to other samples."""
    labels = torch.arange(200) % 10
    shuffled = 5 * F.one_hot(labels[torch.randperm(200, generator=torch.Generator().manual_seed(1))], 10).float()
    lines = []
    guard = TeacherAgreement(["teacher.x"], [98.0], lines.append, samples=128)
    for t, y in _batches(labels, shuffled, 50):
        guard.observe([t], y)
    assert guard.report["warnings"] == ["teacher.x"]
    assert guard.report["teachers"]["teacher.x"]["agreement"] < 30
    assert any(line.startswith("WARNING: teacher teacher.x agrees") for line in lines)


def test_no_warning_when_the_reference_is_near_chance_or_unknown():
    labels = torch.arange(100) % 10
    wrong = 5 * F.one_hot((labels + 1) % 10, 10).float() + 0.01 * torch.randn(100, 10)
    guard = TeacherAgreement(["weak", "unknown"], [12.0, None], lambda m: None, samples=100)
    guard.observe([wrong, wrong], labels)
    assert guard.report["warnings"] == []


def test_short_data_reports_at_finish_and_counts_survive_a_checkpoint():
    labels = torch.arange(40) % 10
    good = F.one_hot(labels, 10).float()
    guard = TeacherAgreement(["t"], [90.0], lambda m: None, samples=512)
    guard.observe([good], labels)
    assert guard.report is None and not guard.done
    state = guard.state_dict()
    restored = TeacherAgreement(["t"], [90.0], lambda m: None, samples=512)
    restored.load_state_dict(state)
    assert restored.finish()["samples"] == 40 and restored.done
    restored.observe([good], labels)  # closed: nothing more is counted
    assert int(restored.seen) == 40


def test_zero_samples_turns_it_off():
    guard = TeacherAgreement(["t"], [90.0], lambda m: None, samples=0)
    guard.observe([torch.zeros(4, 3)], torch.zeros(4, dtype=torch.long))
    assert guard.done and guard.finish() is None


def test_far_below_needs_both_a_real_gap_and_significance():
    guard = TeacherAgreement(["t"], [71.5], lambda m: None, samples=512)
    assert guard.far_below(40.0, 71.5, 512)  # kdkit's kd main job under the lost-index bug
    assert not guard.far_below(66.0, 71.5, 512)  # 5.5 points: within what augmentation explains
    assert not guard.far_below(55.0, 71.5, 16)  # 16 samples: a 16-point gap is not significant
    assert guard.far_below(9.7, 100.0, 72)


def test_outputs_looked_up_by_label_warn_even_when_argmax_agrees():
    """Class-interleaved data under the lost-index bug: ``table[label]`` is the output of a sample
    of about the right class, so argmax agreement stays plausible — but every sample of a class
    gets the same vector."""
    g = torch.Generator().manual_seed(2)
    table = torch.randn(10, 10, generator=g) + 4 * torch.eye(10)  # row c: a sample of class c
    labels = torch.randint(0, 10, (256,), generator=g)
    lines = []
    guard = TeacherAgreement(["teacher.cached"], [70.0], lines.append, samples=256)
    for s in range(0, 256, 64):
        guard.observe([table[labels[s:s + 64]]], labels[s:s + 64])
    t = guard.report["teachers"]["teacher.cached"]
    assert t["agreement"] > 60 and t["identical"] > 80
    assert guard.report["warnings"] == ["teacher.cached"]
    assert any("exactly the output of another sample" in line for line in lines)
