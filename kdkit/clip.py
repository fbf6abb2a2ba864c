"""CLIP through open_clip: one frozen encoder of images and texts for every plugin.

:func:`build_clip` makes a :class:`ClipEncoder` from an options dict (a plugin's ``clip`` config
section; unknown keys are ignored):

* ``model``: an open_clip architecture name (``ViT-B-32``), one of kdkit's small random-init
  architectures (:data:`TINY_CONFIGS`: ``kdkit-tiny``, ``kdkit-small``, ``kdkit-micro``), or any name
  together with ``model_config`` (an open_clip model-config dict: ``embed_dim``, ``vision_cfg``,
  ``text_cfg``);
* ``pretrained``: ``None`` (random initialisation: one loud warning), an open_clip tag such as
  ``openai`` (needs the model hub or open_clip's own cache), or the path of a local checkpoint file;
* ``seed``: seed of the random initialisation (``torch.manual_seed`` under a forked CPU RNG: the
  caller's random stream is left as it was);
* ``image_size``, ``context_length``: force another input resolution / text context (``None``: the
  model's own);
* ``batch_size``: the encoding batch size; ``device``: ``None`` = the ``device`` argument;
* ``fast_text`` (default true): encode prompts with the context truncated to the longest prompt of
  the batch.  Under CLIP's causal attention mask the end-of-text token never attends to the padding
  after it, so this equals open_clip's ``encode_text`` up to float rounding (checked against it on
  the first batch; if they differ, ``encode_text`` is used throughout) and is 5-8x faster for short
  prompts.  ``false``: always ``encode_text``.

Importing this module is cheap: torch and open_clip load when a model is built.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdkit.errors import ConfigError, DataError, KdkitError
from kdkit.paths import user_path
from kdkit.lazy import lazy_import

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
np = lazy_import("numpy")
open_clip = lazy_import("open_clip")

__all__ = ["DEFAULTS", "TINY_CONFIGS", "ClipEncoder", "ClipInfo", "build_clip", "reset_warnings"]

log = logging.getLogger("kdkit.clip")

#: kdkit's small architectures (random init or a local checkpoint; the tokenizer is CLIP's BPE).
TINY_CONFIGS: dict[str, dict] = {
    # wordnet_relax's offline default: a ViT and a text transformer small enough for 2 CPU cores.
    # Random patch-8 ViT features separate the shapes classes better (~30 % linear-probe) than
    # finer patches or deeper towers do at this size.
    "kdkit-tiny": {
        "embed_dim": 256,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    },
    # soda's offline default (its ``clip.model: tiny``): 64 px images, 24 tokens.
    "kdkit-small": {
        "embed_dim": 256,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 192, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 2},
    },
    # For tests: a few milliseconds per batch.
    "kdkit-micro": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}

#: The options :func:`build_clip` falls back to.
DEFAULTS: dict[str, Any] = {
    "model": "kdkit-tiny",
    "pretrained": None,
    "model_config": None,
    "seed": 0,
    "image_size": None,
    "context_length": None,
    "batch_size": 256,
    "device": None,
    "fast_text": True,
}

_WARNED_RANDOM: set = set()


@dataclass
class ClipInfo:
    """What a :class:`ClipEncoder` is: ``weights`` names the weights (``tag:<tag>``,
    ``file:<digest>`` or ``random:<seed>``); ``variant`` holds the forced options that change the
    architecture beyond its name (``context_length``, a custom ``model_config``)."""

    model: str
    pretrained: bool
    weights: str
    embed_dim: int
    image_size: int
    context_length: int = 77
    variant: dict = field(default_factory=dict)


class ClipEncoder:
    """A frozen CLIP model with its tokenizer and image preprocessing (made by :func:`build_clip`).

    ``encode_images``, ``encode_texts`` and ``encode_words`` run under ``torch.no_grad`` in batches
    of ``batch_size`` (the build option, or the call's) and return a float32 CPU tensor
    ``[N, embed_dim]``, L2-normalised unless ``normalize=False``.  ``identity`` is a JSON-able dict of everything the embeddings
    depend on (architecture, weights, resolution, open_clip and torch versions): put it in cache keys.
    """

    def __init__(self, model, tokenizer, info: ClipInfo, mean, std, device="cpu", batch_size: int = 256,
                 interpolation: str = "bicubic", fast_text: bool = True):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.info = info
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.device = device
        self.batch_size = int(batch_size)
        self.interpolation = interpolation
        self.fast_text = bool(fast_text)
        self._fast_text_ok: bool | None = None if self.fast_text else False

    # --- identity -----------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        return {
            "model": self.info.model,
            "weights": self.info.weights,
            "image_size": self.info.image_size,
            **self.info.variant,
            "open_clip": getattr(open_clip, "__version__", "?"),
            "torch": torch.__version__.split("+")[0],
        }

    @property
    def embed_dim(self) -> int:
        return self.info.embed_dim

    # --- text ---------------------------------------------------------------------------
    def _encode_tokens_fast(self, tokens):
        m = self.model
        length = int(tokens.argmax(dim=-1).max().item()) + 1  # the EOT token has the largest id
        tokens = tokens[:, :length]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast_dtype) + m.positional_embedding[:length].to(cast_dtype)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.transformer(x, attn_mask=mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x

    def _can_fast(self) -> bool:
        m = self.model
        return (all(hasattr(m, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                                              "attn_mask", "text_projection"))
                and getattr(m, "text_pool_type", "argmax") == "argmax")

    def encode_tokens(self, tokens):
        """The model's text embeddings (not normalised) of a batch of token ids."""
        tokens = tokens.to(self.device)
        if self._fast_text_ok is None:  # first batch: check the fast path against open_clip's
            ref = self.model.encode_text(tokens)
            ok = False
            if self._can_fast():
                try:
                    ok = bool(torch.allclose(self._encode_tokens_fast(tokens), ref, rtol=1e-3, atol=1e-4))
                except Exception:  # noqa: BLE001 - any API drift in open_clip: use the reference path
                    ok = False
            if not ok:
                log.info("CLIP text fast path disabled (differs from encode_text); using encode_text")
            self._fast_text_ok = ok
            return ref
        if self._fast_text_ok:
            return self._encode_tokens_fast(tokens)
        return self.model.encode_text(tokens)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, normalize: bool = True,
                     progress: Callable[[int, int], None] | None = None):
        """Embeddings of raw strings (BPE, truncated to the context length); ``progress(done, total)``
        is called after each batch."""
        bs = int(batch_size or self.batch_size)
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), bs):
                emb = self.encode_tokens(self.tokenizer(list(texts[start:start + bs]))).float()
                out.append((F.normalize(emb, dim=-1) if normalize else emb).cpu())
                if progress is not None:
                    progress(min(start + bs, len(texts)), len(texts))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def encode_words(self, words: Sequence[str], templates: Sequence[str],
                     progress: Callable[[int, int], None] | None = None):
        """Prompt-ensemble embeddings ``[len(words), d]``: the mean of the normalised embeddings of
        every template (``"a photo of a {}."``) filled with the word, normalised again (CLIP's
        zero-shot recipe)."""
        templates = list(templates)
        if not templates:
            raise ConfigError("a prompt ensemble needs at least one template with '{}' for the word")
        emb = self.encode_texts([t.format(w) for w in words for t in templates], progress=progress)
        if len(words) == 0:
            return emb
        emb = emb.view(len(words), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1).contiguous()

    # --- images -------------------------------------------------------------------------
    def preprocess(self, images):
        """``[B, 3, H, W]`` images (``uint8``, or float in ``[0, 1]``) -> CLIP's input on the
        encoder's device: short side resized to the model's size and centre-cropped, then
        normalised with the model's mean and std."""
        x = images.to(self.device)
        x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        size = self.info.image_size
        if x.shape[-2:] != (size, size):
            h, w = x.shape[-2:]
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode=self.interpolation, align_corners=False,
                              antialias=True).clamp_(0, 1)
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top:top + size, left:left + size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _pixels(self, chunk, load):
        if load is None and isinstance(chunk, torch.Tensor) and chunk.dim() == 4:
            return self.preprocess(chunk)
        return torch.cat([self.preprocess(_hwc_tensor(load(item) if load else item).permute(2, 0, 1)[None])
                          for item in chunk])

    def encode_images(self, images, *, batch_size: int | None = None, normalize: bool = True,
                      load: Callable[[Any], Any] | None = None):
        """Embeddings of ``images``: a ``[N, 3, H, W]`` tensor (``uint8``, or float in ``[0, 1]``), or a
        sequence of ``H x W x 3`` ``uint8`` images of any sizes (arrays or tensors, each resized on its
        own; ``load`` first maps each item to one, e.g. a file path)."""
        bs = int(batch_size or self.batch_size)
        out = []
        with torch.no_grad():
            for start in range(0, len(images), bs):
                emb = self.model.encode_image(self._pixels(images[start:start + bs], load)).float()
                out.append((F.normalize(emb, dim=-1) if normalize else emb).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)


def _hwc_tensor(image):
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if x.dim() != 3 or x.shape[-1] != 3:
        raise DataError(f"expected an H x W x 3 image, got shape {tuple(x.shape)}")
    return x


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


def _local_file(pretrained) -> Path | None:
    path = user_path(str(pretrained))
    return path if path.is_file() else None


def _load_state(model, path: Path, name: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"clip.pretrained: {path} does not match model {name!r}: {str(exc).splitlines()[0]}") from None
    if missing:
        raise ConfigError(f"clip.pretrained: {path} does not match model {name!r} "
                          f"({len(missing)} missing keys, e.g. {missing[0]})")


def _warn_random(name: str, seed: int, log_fn: Callable[[str], None] | None) -> None:
    if (name, seed) in _WARNED_RANDOM:
        return
    _WARNED_RANDOM.add((name, seed))
    msg = (f"CLIP {name!r} has NO pretrained weights: it is randomly initialised (seed {seed}), so its "
           f"image and text embeddings carry no language-vision knowledge and the numbers of this run "
           f"are a pipeline check, not the paper's method. Set clip.model=ViT-B-32 and "
           f"clip.pretrained=<tag or local checkpoint> for real runs.")
    if log_fn is not None:  # the run's log (stderr + train.log): one banner
        banner = "!" * 100
        log_fn(f"{banner}\nWARNING: {msg}\n{banner}")
    else:
        warnings.warn(msg, UserWarning, stacklevel=3)


def build_clip(options: dict | None = None, device: str = "cpu", log_fn: Callable[[str], None] | None = None
               ) -> ClipEncoder:
    """A :class:`ClipEncoder` from ``options`` (see the module docstring; missing keys: :data:`DEFAULTS`).

    Without pretrained weights one loud warning per ``(model, seed)`` goes to ``log_fn`` (a run's
    log), or is a Python ``UserWarning`` when ``log_fn`` is ``None``.
    """
    opts = {**DEFAULTS, **(options or {})}
    name = str(opts["model"])
    pretrained = opts.get("pretrained")
    if pretrained in ("", "none", "None", False):
        pretrained = None
    seed = int(opts.get("seed") or 0)
    device = opts.get("device") or device
    force_size = opts.get("image_size")
    force_context = opts.get("context_length")
    model_cfg = opts.get("model_config") or TINY_CONFIGS.get(name)
    variant = {"context_length": int(force_context)} if force_context else {}
    if opts.get("model_config"):
        variant["model_config"] = opts["model_config"]

    if model_cfg is not None:
        local = _local_file(pretrained) if pretrained is not None else None
        if pretrained is not None and local is None:
            raise ConfigError(f"clip.model {name!r} is a custom architecture: clip.pretrained must be null or an "
                              f"existing local checkpoint file, not {pretrained!r}")
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model_cfg.items()}
        if force_size:
            cfg["vision_cfg"]["image_size"] = int(force_size)
        if force_context:
            cfg["text_cfg"]["context_length"] = int(force_context)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = open_clip.CLIP(embed_dim=int(cfg["embed_dim"]), vision_cfg=cfg["vision_cfg"],
                                       text_cfg=cfg["text_cfg"], quick_gelu=bool(cfg.get("quick_gelu", False)))
            except Exception as exc:  # noqa: BLE001 - open_clip raises many kinds
                raise ConfigError(f"clip.model_config for {name!r} is not a valid open_clip config: {exc}") from None
        if local is not None:
            _load_state(model, local, name)
        context_length = int(cfg["text_cfg"].get("context_length", 77))
        image_size = int(cfg["vision_cfg"]["image_size"])
        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        embed_dim = int(cfg["embed_dim"])
        tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    else:
        if name not in open_clip.list_models():
            raise ConfigError(f"unknown CLIP architecture {name!r}; open_clip has e.g. ViT-B-32, RN50, ViT-B-16 "
                              f"(python -c 'import open_clip; print(open_clip.list_models())'), and kdkit adds "
                              f"{', '.join(TINY_CONFIGS)}")
        kwargs = {}
        if force_size:
            kwargs["force_image_size"] = int(force_size)
        if force_context:
            kwargs["force_context_length"] = int(force_context)
        root_logger = logging.getLogger()
        old_level = root_logger.level
        root_logger.setLevel(logging.ERROR)  # open_clip logs its own "no pretrained weights" warning
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(seed)
                model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as exc:  # noqa: BLE001 - download, hub and checkpoint errors alike
            raise KdkitError(
                f"cannot load CLIP {name!r} with pretrained={pretrained!r}: {exc}. Pass the path of a local "
                f"checkpoint file as clip.pretrained (download it where the internet is reachable, e.g. open_clip's "
                f"'openai' weights for {name}), or clip.pretrained=null for random weights"
            ) from None
        finally:
            root_logger.setLevel(old_level)
        pre = open_clip.get_model_preprocess_cfg(model)
        size = pre.get("size", 224)
        image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = pre.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = pre.get("std", open_clip.OPENAI_DATASET_STD)
        context_length = int(getattr(model, "context_length", 77) or 77)
        tokenizer = open_clip.get_tokenizer(name, context_length=context_length)
        projection = getattr(model, "text_projection", None)
        if projection is not None and not isinstance(projection, torch.nn.Linear):
            embed_dim = int(projection.shape[-1])
        else:
            with torch.no_grad():
                embed_dim = int(model.encode_text(tokenizer(["a"])).shape[-1])

    if pretrained is None:
        weights = f"random:{seed}"
        _warn_random(name, seed, log_fn)
    else:
        local = _local_file(pretrained)
        weights = f"file:{_file_digest(local)}" if local is not None else f"tag:{pretrained}"
    info = ClipInfo(model=name, pretrained=pretrained is not None, weights=weights, embed_dim=embed_dim,
                    image_size=image_size, context_length=context_length, variant=variant)
    return ClipEncoder(model.to(device), tokenizer, info, mean, std, device=device,
                       batch_size=int(opts.get("batch_size") or DEFAULTS["batch_size"]),
                       fast_text=opts.get("fast_text") is not False)


def reset_warnings() -> None:
    """Forget which random-init warnings were shown (tests)."""
    _WARNED_RANDOM.clear()
