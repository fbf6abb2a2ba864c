"""CLIP through open_clip_torch: building the model, encoding prompts and images, caching.

Config section ``clip`` (see ``default.yaml``):

* ``model``: an open_clip architecture name (``ViT-B-32`` for the paper) or one of kdkit's tiny
  random-init architectures (``kdkit-tiny``: the offline default, ``kdkit-micro``: tests), or any
  name together with ``model_config`` (an open_clip model-config dict: ``embed_dim``,
  ``vision_cfg``, ``text_cfg``);
* ``pretrained``: ``null`` (random initialisation — one loud warning, recorded as
  ``clip_pretrained: false`` in ``summary.json``), an open_clip tag such as ``openai`` (needs the
  model hub, or open_clip's own cache), or the path of a local checkpoint file;
* ``seed``: seed of the random initialisation (so that random-init runs are reproducible and
  cacheable);
* ``image_size``: force another input resolution (``null``: the model's own);
* ``batch_size``: encoding batch size; ``device``: ``null`` = the run's device.

Text prompts are encoded with the context truncated to the longest prompt of the batch.  Under
CLIP's causal attention mask the end-of-text token never attends to the padding after it, so
the result equals open_clip's ``encode_text`` (this is checked numerically on the first batch,
falling back to ``encode_text`` if it ever differs) and is 5-8x faster for short prompts.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from kdkit import ConfigError, KdkitError

from kdkit_wordnet_relax.paths import file_digest

log = logging.getLogger("kdkit.wordnet_relax")

#: The 7-template prompt ensemble of the authors' code.
TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: kdkit's small architectures (random init only; the tokenizer is CLIP's BPE).
TINY_CONFIGS: dict[str, dict] = {
    # The offline default: a ViT and a text transformer small enough for 2 CPU cores.  Random
    # patch-8 ViT features separate the shapes classes better (~30 % linear-probe) than finer
    # patches or deeper towers do at this size.
    "kdkit-tiny": {
        "embed_dim": 256,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    },
    # For tests: a few milliseconds per batch.
    "kdkit-micro": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}

CLIP_DEFAULTS = {
    "model": "kdkit-tiny",
    "pretrained": None,
    "model_config": None,
    "seed": 0,
    "image_size": None,
    "batch_size": 256,
    "device": None,
}

_WARNED_RANDOM: set = set()


@dataclass
class ClipInfo:
    model: str
    pretrained: bool
    weights: str  # identity of the weights (tag, file digest, or random-init seed)
    embed_dim: int
    image_size: int


class ClipEncoder:
    """A frozen CLIP model with the helpers the plugin needs.

    ``identity`` is a JSON-able dict naming everything the embeddings depend on (architecture,
    weights, resolution, open_clip and torch versions); cache keys include it.
    """

    def __init__(self, model, tokenizer, info: ClipInfo, mean, std, device="cpu",
                 batch_size: int = 256, interpolation: str = "bicubic"):
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
        self._fast_text_ok: bool | None = None

    # --- identity -----------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        import open_clip
        import torch

        return {
            "model": self.info.model,
            "weights": self.info.weights,
            "image_size": self.info.image_size,
            "open_clip": getattr(open_clip, "__version__", "?"),
            "torch": torch.__version__.split("+")[0],
        }

    @property
    def embed_dim(self) -> int:
        return self.info.embed_dim

    # --- text ---------------------------------------------------------------------------
    def _encode_tokens_fast(self, tokens):
        import torch

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
        import torch

        tokens = tokens.to(self.device)
        if self._fast_text_ok is None:  # first batch: check the fast path against open_clip's
            ref = self.model.encode_text(tokens)
            ok = False
            if self._can_fast():
                try:
                    ok = bool(torch.allclose(self._encode_tokens_fast(tokens), ref, rtol=1e-3, atol=1e-4))
                except Exception:  # any API drift in open_clip: use the reference path
                    ok = False
            if not ok:
                log.info("CLIP text fast path disabled (differs from encode_text); using encode_text")
            self._fast_text_ok = ok
            return ref
        if self._fast_text_ok:
            return self._encode_tokens_fast(tokens)
        return self.model.encode_text(tokens)

    def encode_texts(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None):
        """L2-normalised embeddings ``[len(texts), d]`` (float32, CPU) of raw prompts."""
        import torch
        import torch.nn.functional as F

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start:start + self.batch_size]))
                out.append(F.normalize(self.encode_tokens(tokens).float(), dim=-1).cpu())
                if progress is not None:
                    progress(min(start + self.batch_size, len(texts)), len(texts))
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out)

    def encode_words(self, words: Sequence[str], templates: Sequence[str] = TEMPLATES,
                     progress: Callable[[int, int], None] | None = None):
        """Template-ensemble embeddings ``[len(words), d]``: mean of the normalised prompt
        embeddings of every template, normalised again (CLIP's zero-shot recipe)."""
        import torch.nn.functional as F

        templates = list(templates)
        if not templates:
            raise ConfigError("relax.templates must list at least one prompt template with '{}'")
        prompts = [t.format(w) for w in words for t in templates]
        emb = self.encode_texts(prompts, progress=progress)
        if len(words) == 0:
            return emb
        emb = emb.view(len(words), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1).contiguous()

    # --- images -------------------------------------------------------------------------
    def preprocess(self, images):
        """Images -> CLIP's input: resized to the model's size (short side + centre crop),
        normalised with CLIP's own mean and std.  ``images``: ``uint8`` ``[B, 3, H, W]`` or
        float in ``[0, 1]``."""
        import torch
        import torch.nn.functional as F

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

    def encode_images(self, images):
        """L2-normalised image embeddings ``[B, d]`` (float32, on the encoder's device) of
        ``uint8`` images or float images in ``[0, 1]``."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)


def _tokenizer_for(name: str, context_length: int):
    import open_clip

    if name in TINY_CONFIGS or name not in open_clip.list_models():
        return open_clip.SimpleTokenizer(context_length=context_length)
    return open_clip.get_tokenizer(name)


def _weights_identity(pretrained: str) -> tuple[str, bool]:
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return f"file:{file_digest(path)}", True
    return f"tag:{pretrained}", False


def build_clip(options: dict | None = None, device: str = "cpu", log_fn: Callable[[str], None] | None = None
               ) -> ClipEncoder:
    """Build a :class:`ClipEncoder` from the ``clip`` config section."""
    import open_clip
    import torch

    opts = dict(CLIP_DEFAULTS)
    opts.update(options or {})
    name = str(opts["model"])
    pretrained = opts.get("pretrained")
    if pretrained in ("", "none", "None", False):
        pretrained = None
    seed = int(opts.get("seed") or 0)
    device = opts.get("device") or device
    force_size = opts.get("image_size")
    model_cfg = opts.get("model_config") or TINY_CONFIGS.get(name)

    if model_cfg is not None:
        if pretrained is not None and not Path(str(pretrained)).expanduser().is_file():
            raise ConfigError(f"clip.model {name!r} is a custom architecture: clip.pretrained must be null or a "
                              f"local checkpoint file, not the tag {pretrained!r}")
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model_cfg.items()}
        if force_size:
            cfg["vision_cfg"]["image_size"] = int(force_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = open_clip.CLIP(embed_dim=int(cfg["embed_dim"]), vision_cfg=cfg["vision_cfg"],
                                       text_cfg=cfg["text_cfg"], quick_gelu=bool(cfg.get("quick_gelu", False)))
            except Exception as exc:
                raise ConfigError(f"clip.model_config for {name!r} is not a valid open_clip config: {exc}") from None
        if pretrained is not None:
            state = torch.load(Path(str(pretrained)).expanduser(), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        context_length = int(cfg["text_cfg"].get("context_length", 77))
        image_size = int(cfg["vision_cfg"]["image_size"])
        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        embed_dim = int(cfg["embed_dim"])
    else:
        if name not in open_clip.list_models():
            raise ConfigError(f"unknown CLIP architecture {name!r}; open_clip has e.g. ViT-B-32, RN50, ViT-B-16 "
                              f"(python -c 'import open_clip; print(open_clip.list_models())'), and kdkit adds "
                              f"{', '.join(TINY_CONFIGS)}")
        kwargs = {}
        if force_size:
            kwargs["force_image_size"] = int(force_size)
        root_logger = logging.getLogger()
        old_level = root_logger.level
        root_logger.setLevel(logging.ERROR)  # open_clip logs its own "no pretrained weights" warning
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(seed)
                model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as exc:
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
        embed_dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") and \
            model.text_projection is not None and not isinstance(model.text_projection, torch.nn.Linear) else \
            int(model.encode_text(_tokenizer_for(name, context_length)(["a"])).shape[-1])

    if pretrained is None:
        weights, is_pretrained = f"random:{seed}", False
    else:
        weights, is_file = _weights_identity(pretrained)
        is_pretrained = True
    info = ClipInfo(model=name, pretrained=is_pretrained, weights=weights, embed_dim=embed_dim,
                    image_size=image_size)
    if not is_pretrained:
        key = (name, seed)
        if key not in _WARNED_RANDOM:
            _WARNED_RANDOM.add(key)
            msg = (f"CLIP {name!r} has NO pretrained weights: it is randomly initialised (seed {seed}), so its "
                   f"image and text embeddings carry no language-vision knowledge and the numbers of this run "
                   f"are a pipeline check, not the paper's method. Set clip.model=ViT-B-32 and "
                   f"clip.pretrained=<tag or local checkpoint> for real runs.")
            banner = "!" * 100
            text = f"{banner}\nWARNING: {msg}\n{banner}"
            if log_fn is not None:  # the run's log (stderr + train.log): one banner
                log_fn(text)
            else:
                warnings.warn(msg, UserWarning, stacklevel=2)
    model = model.to(device)
    return ClipEncoder(model, _tokenizer_for(name, context_length), info, mean, std, device=device,
                       batch_size=int(opts.get("batch_size") or 256))


def reset_warnings() -> None:
    """Forget which random-init warnings were shown (tests)."""
    _WARNED_RANDOM.clear()
