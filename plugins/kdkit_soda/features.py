"""CLIP features (open_clip) for images, captions and label prompts — computed once, cached on disk.

``clip.model`` is any open_clip model name (``ViT-B-32`` is the method family's backbone) or
``tiny`` — a small CLIP architecture (2-layer ViT-192 with 8 px patches on 64 px images, 2-layer text transformer of width 192, 24 tokens) that keeps
the embedded default run fast on a CPU.  ``clip.pretrained`` is an open_clip tag (``openai``,
``laion2b_s34b_b79k``; it must already be in the local open_clip/Hugging Face cache — nothing is
downloaded unless open_clip itself can) or a local checkpoint file.  Without weights the encoders
are randomly initialised and one loud warning says so: the hash heads then learn on random (but
fixed and informative) features, which is what the offline default does.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdkit import ConfigError, DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_WARNED: set = set()

#: The small architecture used by ``clip.model: tiny``.
TINY = {"embed_dim": 256, "vision": {"layers": 2, "width": 192, "head_width": 64, "patch_size": 8, "image_size": 64},
        "text": {"context_length": 24, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 2}}


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


class ClipEncoder:
    """An open_clip model + tokenizer + preprocessing, used under ``torch.no_grad``."""

    def __init__(self, model: str = "tiny", pretrained: str | None = None, device: str | torch.device = "cpu",
                 context_length: int | None = None, log: Callable[[str], None] | None = None, seed: int = 0):
        import open_clip

        self.device = torch.device(device)
        self.name = model
        self.pretrained = pretrained
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # a random-init encoder is the same in every run with this seed
        try:
            if model == "tiny":
                from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

                text_cfg = dict(TINY["text"])
                if context_length:
                    text_cfg["context_length"] = int(context_length)
                self.model = CLIP(TINY["embed_dim"], CLIPVisionCfg(**TINY["vision"]), CLIPTextCfg(**text_cfg))
                self.image_size = TINY["vision"]["image_size"]
                self.context_length = text_cfg["context_length"]
                if pretrained:
                    self._load_checkpoint(pretrained)
            else:
                tag = pretrained
                local = tag is not None and Path(str(tag)).expanduser().is_file()
                kwargs = {"force_context_length": int(context_length)} if context_length else {}
                try:
                    self.model = open_clip.create_model(model, pretrained=None if local else tag, **kwargs)
                except RuntimeError as exc:
                    raise ConfigError(f"config key clip.model/clip.pretrained: open_clip cannot create {model!r} "
                                      f"with weights {tag!r}: {str(exc).splitlines()[0]} (weights must be in the "
                                      "local cache or given as a checkpoint path)") from None
                if local:
                    self._load_checkpoint(str(Path(str(tag)).expanduser()))
                size = self.model.visual.image_size
                self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
                self.context_length = int(self.model.context_length)
        finally:
            torch.random.set_rng_state(gen_state)
        if not pretrained:
            key = (model, "random")
            if key not in _WARNED:
                _WARNED.add(key)
                msg = (f"WARNING: CLIP model {model!r} has NO pretrained weights (clip.pretrained is empty): its "
                       "encoders are RANDOMLY INITIALISED. Retrieval numbers are not comparable with papers. Set "
                       "clip.pretrained to an open_clip tag in the local cache or to a checkpoint file.")
                if log is not None:
                    log(msg)
                else:
                    warnings.warn(msg, stacklevel=2)
        self.model.eval().to(self.device)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)

    def _load_checkpoint(self, path: str) -> None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"config key clip.pretrained: checkpoint {p} not found (or use an open_clip tag)")
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing:
            raise ConfigError(f"config key clip.pretrained: {p} does not match model {self.name!r} "
                              f"({len(missing)} missing keys, e.g. {missing[0]})")

    @property
    def tag(self) -> str:
        return json.dumps([self.name, str(self.pretrained), self.image_size, self.context_length])

    @torch.no_grad()
    def encode_images(self, images, batch_size: int = 128) -> torch.Tensor:
        """``uint8`` (N, H, W, 3) array or a list of paths -> float32 (N, D) CLIP image features."""
        from .data import load_image_rgb

        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        out = []
        n = len(images)
        for s in range(0, n, batch_size):
            chunk = images[s:s + batch_size]
            arrs = [load_image_rgb(x) for x in chunk]
            batch = torch.stack([self._resize(torch.from_numpy(np.ascontiguousarray(a))) for a in arrs])
            batch = (batch.to(self.device) - mean) / std
            out.append(self.model.encode_image(batch).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        """HxWx3 uint8 -> 3xSxS float in [0, 1]: resize the short side to S (bicubic), centre crop."""
        x = img.permute(2, 0, 1).float().unsqueeze(0) / 255.0
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top:top + s, left:left + s]
        return x.clamp_(0, 1)[0]

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> float32 (N, D) CLIP text features (BPE, truncated to the context length)."""
        out = []
        for s in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[s:s + batch_size]), context_length=self.context_length)
            out.append(self.model.encode_text(tokens.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


def compute_features(data, clip_cfg: dict, prompt_cfg: dict, cache_dir: Path, device, log=print,
                     seed: int = 0) -> dict:
    """CLIP features of every sample: ``{"image", "text", "label"}`` float32 tensors (N, D), cached.

    ``text`` is the caption feature (or the bag-of-words vector when the dataset has no strings);
    ``label`` is the feature of the sample's label prompt (computed once per distinct label set).
    The cache file name hashes the dataset content, the model, the weights and the prompt settings.
    """
    template = prompt_cfg.get("template", "An image of {}.")
    sep, last_sep = prompt_cfg.get("sep", ", "), prompt_cfg.get("last_sep", " and ")
    mode = prompt_cfg.get("mode", "joined")
    key = hashlib.sha1(json.dumps([data.fingerprint(), clip_cfg.get("model"), str(clip_cfg.get("pretrained")),
                                   clip_cfg.get("context_length"), template, sep, last_sep, mode, seed]).encode())
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
    enc = ClipEncoder(clip_cfg.get("model", "tiny"), clip_cfg.get("pretrained") or None, device,
                      clip_cfg.get("context_length"), log=log, seed=seed)
    image = enc.encode_images(data.images, int(clip_cfg.get("batch_size", 128)))
    if data.texts is not None:
        text = enc.encode_texts(data.texts, int(clip_cfg.get("batch_size", 128)))
    elif data.bow is not None:
        log("[soda] the dataset has no caption strings (bag-of-words YAll): text features = the bag-of-words "
            "vectors; give data.vocab_file to use CLIP on the tag words instead")
        text = torch.from_numpy(np.asarray(data.bow, np.float32))
    else:
        raise DataError(f"dataset {data.name}: no text modality")
    if mode == "joined":
        uniq, inverse = np.unique(np.asarray(data.labels), axis=0, return_inverse=True)
        prompts = label_prompts(uniq, data.classes, template, sep, last_sep)
        label = enc.encode_texts(prompts)[torch.from_numpy(np.asarray(inverse).reshape(-1))]
    elif mode == "mean":
        per_class = F.normalize(enc.encode_texts([template.format(c) for c in data.classes]), dim=1)
        lab = torch.from_numpy(np.asarray(data.labels, np.float32))
        label = lab @ per_class / lab.sum(1, keepdim=True).clamp_min(1)
    else:
        raise ConfigError(f"config key prompt.mode: expected joined|mean, got {mode!r}")
    feats = {"image": image.contiguous(), "text": text.contiguous(), "label": label.contiguous()}
    from kdkit import atomic_torch_save

    atomic_torch_save(feats, path)
    log(f"[soda] CLIP features of {len(data)} samples ({enc.name}, weights {enc.pretrained or 'random init'}) "
        f"computed in {time.perf_counter() - t0:.1f}s, cached in {path}")
    return feats
