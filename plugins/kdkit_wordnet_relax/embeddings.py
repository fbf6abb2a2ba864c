"""CLIP image embeddings of a run's data for ``wordnet_relax``: computed once per split, un-augmented,
cached on disk, and looked up for any (``Subset`` of a) split.  Importing this module is cheap (torch
loads when a function runs)."""
from __future__ import annotations

from pathlib import Path

from kdkit import DataError, KdkitError

__all__ = ["unwrap", "targets", "content_key", "clip_image_embeddings", "Embeddings"]


def unwrap(dataset):
    """``(base dataset, indices into it or None)`` through nested ``Subset`` wrappers."""
    indices = None
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        idx = list(dataset.indices)
        indices = idx if indices is None else [idx[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def targets(dataset):
    """The class labels of ``dataset`` (a long tensor), through ``Subset`` wrappers."""
    import torch

    base, idx = unwrap(dataset)
    labels = getattr(base, "targets", None)
    if labels is None:
        labels = [int(base[i][1]) for i in range(len(base))]
    t = torch.as_tensor(list(labels), dtype=torch.long)
    return t if idx is None else t[torch.as_tensor(idx, dtype=torch.long)]


def content_key(dataset) -> dict:
    """What identifies a dataset's images cheaply (a digest of in-memory images or file paths)."""
    from kdkit_wordnet_relax.paths import digest, tensor_digest

    import torch

    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        return {"images": tensor_digest(images)}
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if samples:
        return {"samples": digest([str(s[0]) if isinstance(s, (tuple, list)) else str(s) for s in samples])}
    return {}


def clip_image_embeddings(encoder, dataset, data_key: dict, cache_dir: Path | None, log) -> "object":
    """L2-normalised CLIP embeddings of every image of ``dataset`` (a base dataset, no Subset),
    un-augmented, cached on disk under a key of the CLIP identity and the data."""
    import torch
    from kdkit_wordnet_relax.paths import digest, load_keyed, save_keyed

    n = len(dataset)
    key = {"kind": "image-embeddings", "v": 1, "clip": encoder.identity, "data": data_key, "n": n,
           "content": content_key(dataset)}
    path = Path(cache_dir) / f"images-{digest(key)}.pt" if cache_dir is not None else None
    if path is not None:
        cached = load_keyed(path, key)
        if cached is not None:
            log(f"wordnet_relax: CLIP image embeddings of {n} {data_key.get('split')} images from cache")
            return cached
    stored = getattr(dataset, "images", None)
    if isinstance(stored, torch.Tensor) and stored.dtype == torch.uint8 and stored.dim() == 4:
        # the stored images at their native size: CLIP's preprocessing resizes them once, and a
        # resized copy of the whole set (e.g. CIFAR at 224 px: 7.5 GB) is never materialised
        fetch = lambda a, b: stored[a:b]  # noqa: E731
    elif hasattr(dataset, "get_uint8"):
        fetch = lambda a, b: torch.stack([dataset.get_uint8(i) for i in range(a, b)])  # noqa: E731
    else:
        raise DataError(f"dataset {type(dataset).__name__} has no get_uint8(i): wordnet_relax needs the "
                        f"un-normalised images for CLIP (kdkit's datasets provide it)")
    log(f"wordnet_relax: encoding {n} {data_key.get('split')} images with CLIP {encoder.info.model} "
        f"at {encoder.info.image_size} px")
    bs = max(1, encoder.batch_size)
    out = []
    report = max(bs, (n // 10) // bs * bs)
    for start in range(0, n, bs):
        out.append(encoder.encode_images(fetch(start, min(n, start + bs))).cpu())
        if n > 20000 and (start + bs) % report < bs:
            log(f"wordnet_relax:   {min(n, start + bs)}/{n} images")
    emb = torch.cat(out) if out else torch.zeros(0, encoder.embed_dim)
    if path is not None:
        save_keyed(path, key, emb)
    return emb


class Embeddings:
    """CLIP embeddings of the train and test splits, looked up for any (Subset of a) split."""

    def __init__(self, train, test):
        self.tables = {"train": train, "test": test}

    def of(self, dataset):
        import torch

        base, idx = unwrap(dataset)
        split = getattr(base, "split", None)
        if split not in self.tables:
            raise KdkitError(f"cannot tell which split {type(base).__name__} is (no 'split' attribute)")
        table = self.tables[split]
        return table if idx is None else table[torch.as_tensor(idx, dtype=torch.long)]
