"""CLIP features (:class:`kdkit.ClipEncoder`) of images, captions and label prompts — computed once,
cached on disk.

``clip.model`` is any open_clip model name (``ViT-B-32`` is the method family's backbone) or
``tiny`` — kdkit's ``kdkit-small`` (2-layer ViT-192 with 8 px patches on 64 px images, 2-layer text
transformer of width 192, 24 tokens) that keeps the embedded default run fast on a CPU.
``clip.pretrained`` is an open_clip tag (``openai``, ``laion2b_s34b_b79k``; it must already be in the
local open_clip/Hugging Face cache — nothing is downloaded unless open_clip itself can) or a local
checkpoint file.  Without weights the encoders
are randomly initialised and one loud warning says so: the hash heads then learn on random (but
fixed and informative) features, which is what the offline default does.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from kdkit import ConfigError, DataError

#: soda's ``clip.model`` names of kdkit's small CLIP architectures.
MODEL_ALIASES = {"tiny": "kdkit-small"}


def join_labels(names: Sequence[str], sep: str = ", ", last_sep: str = " and ") -> str:
    """``["dog"] -> "dog"``, ``["dog", "sky"] -> "dog and sky"``, ``["a", "b", "c"] -> "a, b and c"``."""
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return sep.join(names[:-1]) + last_sep + names[-1]


def label_prompts(labels: np.ndarray, classes: Sequence[str], template: str = "An image of {}.",
                  sep: str = ", ", last_sep: str = " and ") -> list[str]:
    """One prompt per sample: the sample's category names in class order, joined by
    :func:`join_labels`, put into ``template`` (``{}`` marks the place).  A sample without labels
    gets ``template`` with an empty slot."""
    if "{}" not in template:
        raise ConfigError(f"config key prompt.template: {template!r} must contain '{{}}' where the labels go")
    out = []
    for row in np.asarray(labels):
        out.append(template.format(join_labels([classes[j] for j in np.flatnonzero(row)], sep, last_sep)))
    return out


def clip_encoder(clip_cfg: dict, device, seed: int = 0, log: Callable[[str], None] | None = None):
    """The :class:`kdkit.ClipEncoder` of soda's resolved ``clip`` section, random init seeded with the run's
    ``seed``.  Prompts go through open_clip's ``encode_text`` (``fast_text: false``), as soda's
    cached features always did."""
    from kdkit import build_clip

    model = str(clip_cfg["model"])
    return build_clip({"model": MODEL_ALIASES.get(model, model), "pretrained": clip_cfg["pretrained"] or None,
                       "context_length": clip_cfg["context_length"], "seed": seed, "fast_text": False,
                       "batch_size": int(clip_cfg["batch_size"])}, device=device, log_fn=log)


def compute_features(data, clip_cfg: dict, prompt_cfg: dict, cache_dir: Path, device, log=print,
                     seed: int = 0) -> dict:
    """CLIP features of every sample: ``{"image", "text", "label"}`` float32 tensors (N, D), cached.

    ``text`` is the caption feature (or the bag-of-words vector when the dataset has no strings);
    ``label`` is the feature of the sample's label prompt (computed once per distinct label set).
    The cache file name hashes the dataset content, the model, the weights and the prompt settings.
    ``clip_cfg`` and ``prompt_cfg`` are the resolved ``clip`` and ``prompt`` sections (every declared key).
    """
    template, sep, last_sep, mode = (prompt_cfg[k] for k in ("template", "sep", "last_sep", "mode"))
    key = hashlib.sha1(json.dumps([data.fingerprint(), clip_cfg["model"], str(clip_cfg["pretrained"]),
                                   clip_cfg["context_length"], template, sep, last_sep, mode, seed]).encode())
    path = Path(cache_dir) / f"clip-features-{key.hexdigest()[:20]}.pt"
    if path.is_file():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if all(feats[k].shape[0] == len(data) for k in ("image", "text", "label")):
                log(f"[soda] CLIP features loaded from cache {path}")
                return feats
        except Exception:  # noqa: BLE001 - a corrupt cache is recomputed
            pass
    import time

    t0 = time.perf_counter()
    from .data import load_image_rgb

    enc = clip_encoder(clip_cfg, device, seed, log)
    image = enc.encode_images(data.images, normalize=False, load=load_image_rgb)
    if data.texts is not None:
        text = enc.encode_texts(data.texts, normalize=False)
    elif data.bow is not None:
        log("[soda] the dataset has no caption strings (bag-of-words YAll): text features = the bag-of-words "
            "vectors; give data.vocab_file to use CLIP on the tag words instead")
        text = torch.from_numpy(np.asarray(data.bow, np.float32))
    else:
        raise DataError(f"dataset {data.name}: no text modality")
    if mode == "joined":
        uniq, inverse = np.unique(np.asarray(data.labels), axis=0, return_inverse=True)
        prompts = label_prompts(uniq, data.classes, template, sep, last_sep)
        label = enc.encode_texts(prompts, normalize=False)[torch.from_numpy(np.asarray(inverse).reshape(-1))]
    elif mode == "mean":
        per_class = enc.encode_texts([template.format(c) for c in data.classes])
        lab = torch.from_numpy(np.asarray(data.labels, np.float32))
        label = lab @ per_class / lab.sum(1, keepdim=True).clamp_min(1)
    else:
        raise ConfigError(f"config key prompt.mode: expected joined|mean, got {mode!r}")
    feats = {"image": image.contiguous(), "text": text.contiguous(), "label": label.contiguous()}
    from kdkit import atomic_torch_save

    atomic_torch_save(feats, path)
    log(f"[soda] CLIP features of {len(data)} samples ({clip_cfg['model']}, weights "
        f"{clip_cfg['pretrained'] or 'random init'}) "
        f"computed in {time.perf_counter() - t0:.1f}s, cached in {path}")
    return feats
