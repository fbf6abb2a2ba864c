"""soda's CLIP features: its ``clip`` section on kdkit's one encoder, and the feature cache."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from kdkit import clip
from kdkit_soda import data as D
from kdkit_soda.features import clip_encoder, compute_features


def _section(name: str, **values) -> dict:
    """soda's resolved ``name`` section: every declared key at its default, ``values`` set."""
    from kdkit.config import plain_defaults
    from kdkit_soda.method import SodaMethod

    return {**plain_defaults(SodaMethod.default_config()[name]), **values}


def _quiet_encoder(clip_cfg, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clip_encoder(_section("clip", **clip_cfg), "cpu", seed=seed)


def test_tiny_is_kdkit_small_with_encode_text_and_the_run_seed():
    enc = _quiet_encoder({"model": "tiny", "pretrained": None, "batch_size": 128}, seed=3)
    assert enc.info.model == "kdkit-small" and enc.identity["weights"] == "random:3"
    assert enc.fast_text is False and enc.batch_size == 128
    assert (enc.info.image_size, enc.info.context_length) == (64, 24)
    same = _quiet_encoder({"model": "tiny"}, seed=3)
    for pa, pb in zip(enc.model.parameters(), same.model.parameters()):
        assert torch.equal(pa, pb)
    short = _quiet_encoder({"model": "tiny", "context_length": 16})
    assert short.tokenizer(["a"]).shape == (1, 16)


def test_compute_features_are_raw_and_cached(tmp_path):
    clip.reset_warnings()
    data = D.make_scenes(24, seed=1)
    logs = []
    cfg = _section("clip", model="tiny", pretrained=None, batch_size=10)
    feats = compute_features(data, cfg, _section("prompt"), tmp_path, "cpu", log=logs.append)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"image": (24, 256), "text": (24, 256), "label": (24, 256)}
    assert not torch.allclose(feats["image"].norm(dim=1), torch.ones(24))  # not normalised: soda standardises
    enc = _quiet_encoder(cfg)
    assert torch.equal(feats["image"], enc.encode_images(data.images, normalize=False, load=D.load_image_rgb))
    assert torch.equal(feats["text"], enc.encode_texts(data.texts, normalize=False))
    assert any("NO pretrained weights" in m for m in logs)
    again = compute_features(data, cfg, _section("prompt"), tmp_path, "cpu", log=logs.append)
    assert "loaded from cache" in logs[-1]
    for k in feats:
        assert torch.equal(again[k], feats[k])
    assert np.asarray(data.images).shape == (24, 64, 64, 3)
