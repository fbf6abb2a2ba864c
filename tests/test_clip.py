"""kdkit.clip: the one CLIP encoder (small architectures, random-init warning, checkpoints, the fast
text path, image preprocessing, batching, identity)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kdkit
from kdkit import clip
from kdkit.clip import TINY_CONFIGS, build_clip
from kdkit.errors import ConfigError, DataError, KdkitError

PROMPTS = ["a photo of a fox.", "art of the sea cucumber.", "a very long multi word noun phrase in a video game."]


@pytest.fixture(autouse=True)
def _fresh_warnings():
    clip.reset_warnings()
    yield
    clip.reset_warnings()


def _quiet(options, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_clip(options, **kwargs)


@pytest.fixture
def micro_clip():
    return _quiet({"model": "kdkit-micro"})


def test_public_names():
    assert kdkit.ClipEncoder is clip.ClipEncoder and kdkit.build_clip is clip.build_clip
    assert {"kdkit-tiny", "kdkit-small", "kdkit-micro"} <= set(TINY_CONFIGS)


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


def test_random_init_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _quiet({"model": "kdkit-micro", "seed": 5})
    assert torch.equal(torch.rand(3), expected)


def test_small_architecture_matches_open_clip_built_under_the_seed():
    """``kdkit-small`` is open_clip's CLIP of that config drawn right after ``manual_seed(seed)``."""
    import open_clip

    enc = _quiet({"model": "kdkit-small", "seed": 2})
    cfg = TINY_CONFIGS["kdkit-small"]
    state = torch.random.get_rng_state()
    torch.manual_seed(2)
    ref = open_clip.CLIP(cfg["embed_dim"], open_clip.CLIPVisionCfg(**cfg["vision_cfg"]),
                         open_clip.CLIPTextCfg(**cfg["text_cfg"]))
    torch.random.set_rng_state(state)
    for pa, pb in zip(enc.model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert enc.info.image_size == 64 and enc.info.context_length == 24 and enc.embed_dim == 256


def test_fast_text_path_matches_encode_text(micro_clip):
    emb = micro_clip.encode_texts(PROMPTS * 3, batch_size=3)
    assert micro_clip._fast_text_ok is True
    with torch.no_grad():
        ref = torch.nn.functional.normalize(micro_clip.model.encode_text(micro_clip.tokenizer(PROMPTS * 3)), dim=-1)
    assert torch.allclose(emb, ref, atol=1e-5)


def test_fast_text_off_is_encode_text_exactly():
    enc = _quiet({"model": "kdkit-micro", "fast_text": False})
    raw = enc.encode_texts(PROMPTS, batch_size=2, normalize=False)
    assert enc._fast_text_ok is False
    with torch.no_grad():
        ref = torch.cat([enc.model.encode_text(enc.tokenizer(PROMPTS[:2])), enc.model.encode_text(enc.tokenizer(PROMPTS[2:]))])
    assert torch.equal(raw, ref.float())


def test_encode_texts_batches_and_reports_progress(micro_clip):
    seen = []
    emb = micro_clip.encode_texts(PROMPTS, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert emb.shape == (3, micro_clip.embed_dim) and emb.device.type == "cpu"
    assert seen == [(2, 3), (3, 3)]
    assert micro_clip.encode_texts([]).shape == (0, micro_clip.embed_dim)


def test_encode_words_is_a_normalised_prompt_ensemble(micro_clip):
    words = ["circle", "fox", "maple tree"]
    templates = ["itap of a {}.", "a bad photo of the {}."]
    emb = micro_clip.encode_words(words, templates)
    assert emb.shape == (3, micro_clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    per_prompt = micro_clip.encode_texts([t.format("fox") for t in templates])
    manual = torch.nn.functional.normalize(per_prompt.mean(0), dim=-1)
    assert torch.allclose(emb[1], manual, atol=1e-5)
    with pytest.raises(ConfigError):
        micro_clip.encode_words(words, [])


def test_images_use_clip_preprocessing(micro_clip):
    images = torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8)
    x = micro_clip.preprocess(images)
    assert x.shape == (4, 3, micro_clip.info.image_size, micro_clip.info.image_size)
    emb = micro_clip.encode_images(images)
    assert emb.shape == (4, micro_clip.embed_dim) and emb.device.type == "cpu"
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    # float [0, 1] input gives the same embedding
    floats = images.float() / 255
    assert torch.allclose(micro_clip.encode_images(floats), emb, atol=1e-5)


def test_a_sequence_of_hwc_images_of_any_sizes(micro_clip):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8) for h, w in ((16, 16), (20, 30), (33, 17))]
    raw = micro_clip.encode_images([im.numpy() for im in images], batch_size=2, normalize=False)
    assert raw.shape == (3, micro_clip.embed_dim)
    for im, row in zip(images, raw):  # each image is resized on its own, as a batch of one would be
        one = micro_clip.encode_images(im.permute(2, 0, 1)[None], normalize=False)[0]
        assert torch.allclose(row, one, atol=1e-5)
    # ``load`` turns each item (here: an index) into an image first
    loaded = micro_clip.encode_images(list(range(3)), batch_size=2, normalize=False, load=lambda i: images[i])
    assert torch.equal(loaded, raw)
    with pytest.raises(DataError, match="H x W x 3"):
        micro_clip.encode_images([np.zeros((3, 16, 16), np.uint8)])


def test_local_checkpoint_is_pretrained(tmp_path, micro_clip):
    path = tmp_path / "micro.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in micro_clip.model.state_dict().items()}}, path)
    enc = build_clip({"model": "kdkit-micro", "pretrained": str(path), "seed": 99})
    assert enc.info.pretrained is True
    assert enc.identity["weights"].startswith("file:")
    for pa, pb in zip(enc.model.parameters(), micro_clip.model.parameters()):
        assert torch.equal(pa, pb)
    torch.save({"visual.proj": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not match"):
        build_clip({"model": "kdkit-micro", "pretrained": str(tmp_path / "other.pt")})


def test_bad_configurations_are_clear():
    with pytest.raises(ConfigError, match="unknown CLIP architecture"):
        build_clip({"model": "no-such-clip"})
    with pytest.raises(ConfigError, match="custom architecture"):
        build_clip({"model": "kdkit-micro", "pretrained": "openai"})


def test_missing_weights_for_a_tag_is_a_kdkit_error(monkeypatch):
    import open_clip

    def fail(*args, **kwargs):
        raise RuntimeError("Failed to download weights")

    monkeypatch.setattr(open_clip, "create_model", fail)
    with pytest.raises(KdkitError, match="local checkpoint"):
        build_clip({"model": "ViT-B-32", "pretrained": "openai"})


def test_forced_sizes_custom_config_and_identity():
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                                           "head_width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    enc = _quiet({"model": "mine", "model_config": cfg, "image_size": 24})
    assert enc.info.image_size == 24 and enc.embed_dim == 16
    assert enc.encode_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 16)
    assert enc.identity["model_config"] == cfg
    micro = _quiet({"model": "kdkit-micro"})
    short = _quiet({"model": "kdkit-micro", "context_length": 12})
    assert short.info.context_length == 12 and short.tokenizer(["a"]).shape == (1, 12)
    assert "context_length" not in micro.identity and short.identity["context_length"] == 12
    assert set(micro.identity) == {"model", "weights", "image_size", "open_clip", "torch"}
