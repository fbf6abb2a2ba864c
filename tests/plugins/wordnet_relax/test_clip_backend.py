"""CLIP through open_clip: tiny architectures, random-init warning, checkpoints, fast text path."""
from __future__ import annotations

import warnings

import pytest
import torch

from kdkit.errors import ConfigError
from kdkit_wordnet_relax import clip_backend
from kdkit_wordnet_relax.clip_backend import TEMPLATES, build_clip


def test_templates_are_the_authors_seven():
    assert len(TEMPLATES) == 7
    assert TEMPLATES[0] == "itap of a {}." and TEMPLATES[-1] == "a photo of the small {}."


def test_random_init_warns_once_and_is_reproducible():
    logs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a run log: the banner goes there, no Python warning
        a = build_clip({"model": "kdkit-micro", "seed": 3}, log_fn=logs.append)
        b = build_clip({"model": "kdkit-micro", "seed": 3}, log_fn=logs.append)  # shown once only
    assert len(logs) == 1 and "NO pretrained weights" in logs[0]
    assert a.info.pretrained is False and a.identity["weights"] == "random:3"
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    with pytest.warns(UserWarning, match="NO pretrained weights"):  # no run log: a Python warning
        c = build_clip({"model": "kdkit-micro", "seed": 4})
    assert c.identity != a.identity


def test_fast_text_path_matches_encode_text(micro_clip):
    prompts = [t.format(w) for w in ("fox", "sea cucumber", "a very long multi word noun phrase") for t in TEMPLATES]
    emb = micro_clip.encode_texts(prompts)
    assert micro_clip._fast_text_ok is True
    with torch.no_grad():
        ref = torch.nn.functional.normalize(micro_clip.model.encode_text(micro_clip.tokenizer(prompts)), dim=-1)
    assert torch.allclose(emb, ref, atol=1e-5)


def test_encode_words_is_a_normalised_template_ensemble(micro_clip):
    words = ["circle", "fox", "maple tree"]
    emb = micro_clip.encode_words(words, TEMPLATES[:2])
    assert emb.shape == (3, micro_clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    per_prompt = micro_clip.encode_texts([t.format("fox") for t in TEMPLATES[:2]])
    manual = torch.nn.functional.normalize(per_prompt.mean(0), dim=-1)
    assert torch.allclose(emb[1], manual, atol=1e-5)
    with pytest.raises(ConfigError):
        micro_clip.encode_words(words, [])


def test_images_use_clip_preprocessing(micro_clip):
    images = torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8)
    x = micro_clip.preprocess(images)
    assert x.shape == (4, 3, micro_clip.info.image_size, micro_clip.info.image_size)
    emb = micro_clip.encode_images(images)
    assert emb.shape == (4, micro_clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    # float [0, 1] input gives the same embedding
    floats = images.float() / 255
    assert torch.allclose(micro_clip.encode_images(floats), emb, atol=1e-5)


def test_local_checkpoint_is_pretrained(tmp_path, micro_clip):
    path = tmp_path / "micro.pt"
    torch.save(micro_clip.model.state_dict(), path)
    enc = build_clip({"model": "kdkit-micro", "pretrained": str(path), "seed": 99})
    assert enc.info.pretrained is True
    assert enc.identity["weights"].startswith("file:")
    for pa, pb in zip(enc.model.parameters(), micro_clip.model.parameters()):
        assert torch.equal(pa, pb)


def test_bad_configurations_are_clear():
    with pytest.raises(ConfigError, match="unknown CLIP architecture"):
        build_clip({"model": "no-such-clip"})
    with pytest.raises(ConfigError, match="custom architecture"):
        build_clip({"model": "kdkit-micro", "pretrained": "openai"})


def test_missing_weights_for_a_tag_is_a_kdkit_error(monkeypatch):
    import open_clip

    from kdkit.errors import KdkitError

    def fail(*args, **kwargs):
        raise RuntimeError("Failed to download weights")

    monkeypatch.setattr(open_clip, "create_model", fail)
    with pytest.raises(KdkitError, match="local checkpoint"):
        build_clip({"model": "ViT-B-32", "pretrained": "openai"})


def test_force_image_size_and_custom_config():
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                                           "head_width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = build_clip({"model": "mine", "model_config": cfg, "image_size": 24})
    assert enc.info.image_size == 24 and enc.embed_dim == 16
    assert enc.encode_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 16)
    clip_backend.reset_warnings()
