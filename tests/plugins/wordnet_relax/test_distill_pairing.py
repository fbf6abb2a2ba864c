"""wordnet_relax pairs every teacher output with the right sample at distillation.

On ``tagged_shapes`` (class-sorted, each image carrying its own position; see
tests/engine/kdkit_oracle_testplugin.py) the ``probe`` student records which samples each training
batch holds and the ``record_kl`` loss records the teacher logits it is given.  They must be:

* for T_x, the row of its logit table that belongs to the sample — with CLIP cached, and with
  CLIP run online on the student's batch (which must then see the true image, whether or not the
  dataset normalises), under both text modes;
* for T_m teachers, the oracles' logits of the sample.
"""
from __future__ import annotations

import pytest
import torch

import kdkit_oracle_testplugin as oracle
from kdkit_oracle_testplugin import RECORD, label_logits, sample_vector
from wr_helpers import needs_debian_wordnet, run_method

pytestmark = needs_debian_wordnet

SETS = ["data.name=tagged_shapes", "student.name=probe", "distill.loss=record_kl", "relax.ratio=0.5",
        "baseline.enabled=false",
        "train.epochs=2"]


@pytest.fixture
def pairing_manager(monkeypatch):
    import kdkit_wordnet_relax

    from kdkit.plugins import plugin_manager_for_testing
    from kdkit_wordnet_relax.method import WordNetRelaxMethod

    captured: dict = {}
    tx_table, train_student = WordNetRelaxMethod.tx_table, WordNetRelaxMethod.train_student

    def capture_table(self, *args, **kwargs):
        captured["table"] = tx_table(self, *args, **kwargs)
        return captured["table"]

    def capture_train(self, ctx, stage_name, train, *args, **kwargs):
        captured["train_positions"] = list(train.indices)  # position in the split of each training sample
        return train_student(self, ctx, stage_name, train, *args, **kwargs)

    monkeypatch.setattr(WordNetRelaxMethod, "tx_table", capture_table)
    monkeypatch.setattr(WordNetRelaxMethod, "train_student", capture_train)
    with plugin_manager_for_testing(kdkit_wordnet_relax, oracle) as pm:
        oracle.reset_record()
        yield pm, captured


def _table_rows(captured, positions):
    where = {p: i for i, p in enumerate(captured["train_positions"])}
    return captured["table"][torch.as_tensor([where[int(p)] for p in positions])].cpu()


def _steps(calls_per_step):
    ids, seen = RECORD["student_ids"], RECORD["teacher_logits"]
    assert ids and len(seen) == calls_per_step * len(ids), (len(seen), len(ids))
    for k, positions in enumerate(ids):
        yield positions, seen[k * calls_per_step:(k + 1) * calls_per_step]


@pytest.mark.parametrize("tx_text", ["retrieved", "protocol"])
@pytest.mark.parametrize("tx_clip", ["cached", "online"])
@pytest.mark.parametrize("normalize", [True, False])
def test_tx_logits_are_the_samples_own_table_row(pairing_manager, tiny, tmp_path, tx_text, tx_clip, normalize):
    """T_x alone: the loss sees, row by row, T_x's logits of exactly the student's samples.  Online,
    CLIP encodes the student's (un-augmented) batch, which equals the cached table only when the
    images handed to CLIP are the true images (the dataset's normalisation undone, or none)."""
    pm, captured = pairing_manager
    sets = tiny + SETS + ["teachers=[]", f"distill.tx_text={tx_text}", f"distill.tx_clip={tx_clip}",
                          f"data.normalize={str(normalize).lower()}"]
    summary = run_method(pm, sets, tmp_path / "run")
    for positions, (t,) in _steps(1):
        torch.testing.assert_close(t, _table_rows(captured, positions), rtol=1e-4, atol=1e-4)
    agreement = summary["student"]["teacher_agreement"]["teachers"]["multimodal"]
    table_agreement = summary["teachers"]["multimodal"]["train_top1_distill"]
    assert agreement["reference"] is not None
    # the guard counts the first 512 samples (here: every training sample of epoch 1, once)
    assert agreement["agreement"] == pytest.approx(table_agreement, abs=1e-4)


@pytest.mark.parametrize("combine", ["avg_logits", "mean_loss"])
def test_unimodal_oracles_and_tx_together(pairing_manager, tiny, tmp_path, combine):
    """Two T_m oracles (by label, by sample) and T_x, un-augmented so the oracles see the tag."""
    pm, captured = pairing_manager
    targets = torch.as_tensor(oracle._tagged_shapes("train", None, train_per_class=6, test_per_class=3).targets)
    sets = tiny + SETS + ["teachers=[{name: oracle_label, augment: none}, {name: oracle_sample, augment: none}]",
                          f"distill.combine={combine}"]
    summary = run_method(pm, sets, tmp_path / "run")
    calls = 1 if combine == "avg_logits" else 3
    for positions, seen in _steps(calls):
        label = label_logits(positions, targets[positions], 10)
        expected = [label, sample_vector(positions, 10), _table_rows(captured, positions)]
        if combine == "avg_logits":
            torch.testing.assert_close(seen[0], torch.stack(expected).mean(0), rtol=1e-4, atol=1e-4)
        else:
            for got, want in zip(seen, expected):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    report = summary["student"]["teacher_agreement"]
    assert report["teachers"]["teacher.none.0"]["agreement"] == 100.0 and report["warnings"] == []
