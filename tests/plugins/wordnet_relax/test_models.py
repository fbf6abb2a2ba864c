"""T_x, the noun bank (every embedding mode), retrieval and the relaxation mask."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import ConfigError
from kdkit_wordnet_relax.method import entropy, relax_mask
from kdkit_wordnet_relax.models import MLPHead, MultimodalTeacher, NounBank


def _bank(mode, seed=0):
    g = torch.Generator().manual_seed(0)
    nouns = torch.randn(12, 8, generator=g)
    classes = torch.randn(3, 8, generator=g)
    return NounBank(nouns, classes, mode=mode, seed=seed), F.normalize(nouns, dim=-1)


def test_learnable_mode_is_a_parameter_anchored_to_clip():
    bank, clip = _bank("learnable")
    assert [n for n, _ in bank.named_parameters()] == ["nouns"]
    assert torch.allclose(bank.nouns, clip) and torch.allclose(bank.anchor, clip)
    assert bank.cosreg().item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        bank.nouns.add_(0.3 * torch.randn_like(bank.nouns))
    assert bank.cosreg().item() > 0.0
    bank.renormalize()
    assert torch.allclose(bank.nouns.norm(dim=-1), torch.ones(12), atol=1e-6)


def test_fixed_mode_has_no_parameters():
    bank, clip = _bank("fixed")
    assert list(bank.parameters()) == []
    assert torch.allclose(bank.nouns, clip)
    bank.renormalize()  # no-op


def test_noise_mode_replaces_the_text_by_seeded_noise():
    bank, clip = _bank("noise", seed=1)
    again, _ = _bank("noise", seed=1)
    other, _ = _bank("noise", seed=2)
    assert list(bank.parameters()) == []
    assert not torch.allclose(bank.nouns, clip)
    assert torch.equal(bank.nouns, again.nouns) and not torch.equal(bank.nouns, other.nouns)
    assert torch.allclose(bank.nouns.norm(dim=-1), torch.ones(12), atol=1e-6)


def test_unknown_mode():
    with pytest.raises(ConfigError, match="tx.embedding"):
        _bank("random")


def test_soft_retrieval_formula_and_exact_text():
    bank, clip = _bank("fixed")
    v = F.normalize(torch.randn(5, 8), dim=-1)
    tau = 0.005
    expected = F.normalize(torch.softmax(v @ clip.T / tau, dim=-1) @ clip, dim=-1)
    assert torch.allclose(bank.retrieve(v, tau), expected, atol=1e-5)
    # tau -> 0: the nearest noun; large tau: towards the mean noun
    nearest = clip[(v @ clip.T).argmax(1)]
    assert torch.allclose(bank.retrieve(v, 1e-4), nearest, atol=1e-3)
    y = torch.tensor([0, 1, 2, 0, 1])
    relaxed = torch.tensor([True, False, True, False, False])
    t = bank.text_for(v, y, relaxed, tau)
    assert torch.allclose(t[relaxed], expected[relaxed], atol=1e-5)
    assert torch.allclose(t[~relaxed], bank.class_emb[y[~relaxed]])
    assert torch.allclose(bank.text_for(v, None, None, tau), expected, atol=1e-5)


def test_gradients_reach_learnable_nouns_only_through_relaxed_samples():
    bank, _ = _bank("learnable")
    v = F.normalize(torch.randn(4, 8), dim=-1)
    y = torch.tensor([0, 1, 2, 0])
    bank.text_for(v, y, torch.zeros(4, dtype=torch.bool), 0.5).sum().backward()
    assert bank.nouns.grad is None or torch.count_nonzero(bank.nouns.grad) == 0
    bank.text_for(v, y, torch.ones(4, dtype=torch.bool), 0.5).sum().backward()
    assert torch.count_nonzero(bank.nouns.grad) > 0


def test_mlp_teacher_shapes():
    model = MultimodalTeacher(MLPHead(16, 5, hidden=32, dropout=0.1), spatial=False)
    out = model(torch.randn(4, 8), torch.randn(4, 8))
    assert out.shape == (4, 5)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(16, 32), (32, 32), (32, 5)]
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 2 and drops[0].p == 0.1


def test_resnet50_teacher_as_the_authors_built_it():
    import kdkit

    backbone = kdkit.get_registry("teachers").build("resnet50", 7, in_channels=64)
    conv1 = backbone.conv1
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride, conv1.padding) == \
        (64, 64, (7, 7), (2, 2), (3, 3))
    model = MultimodalTeacher(backbone, spatial=True).eval()
    assert model(torch.randn(2, 32), torch.randn(2, 32)).shape == (2, 7)


def test_relax_mask_is_seeded_exact_and_nested():
    m0, m5, m1 = (relax_mask(101, r, seed=3, tag="train") for r in (0.0, 0.5, 1.0))
    assert int(m0.sum()) == 0 and int(m1.sum()) == 101 and int(m5.sum()) == 50
    assert torch.equal(m5, relax_mask(101, 0.5, seed=3, tag="train"))
    assert not torch.equal(m5, relax_mask(101, 0.5, seed=4, tag="train"))
    assert bool((m5 & ~m1).sum() == 0)  # relaxed sets grow with the ratio
    m8 = relax_mask(101, 0.8, seed=3, tag="train")
    assert bool((m5 & ~m8).sum() == 0)


def test_entropy():
    assert entropy(torch.zeros(3, 4)) == pytest.approx(float(torch.log(torch.tensor(4.0))), rel=1e-6)
    assert entropy(torch.tensor([[100.0, 0.0]])) == pytest.approx(0.0, abs=1e-6)
