"""``shapes``: kdkit's embedded, offline, procedurally generated image-classification set.

Each image shows one geometric figure whose class name is an English noun found in WordNet
(``circle``, ``square``, ``triangle``, ...), drawn with a random position, size, rotation,
aspect jitter and colour — a light figure on a darker two-colour gradient background, inverted
in a quarter of the images — with pixel noise and, sometimes, a distracting line or dot.  The figure is rasterised from a signed distance function,
which anti-aliases the edges, and everything is vectorised with numpy.

Determinism: all randomness comes from numpy's legacy ``RandomState`` (Mersenne Twister, whose
streams numpy keeps frozen), seeded from ``(seed, split)``; the arithmetic is float64 with no
transcendental function of pixel arrays, so the same options give the same bytes everywhere.
The train and test splits are independent draws.  Generated arrays are cached per process
(and on disk under ``cache_dir`` when given).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdkit.data.base import TensorImageDataset, check_split
from kdkit.errors import ConfigError

#: Class names in label order: WordNet nouns (all in WordNet 3.0's noun index).  The first 10
#: are the default set; ``num_classes`` takes a prefix of this table.
SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross",
    "heart", "ring", "arrow", "crescent", "diamond",
    "hexagon", "pentagon", "ellipse", "rectangle", "semicircle", "trapezoid",
)

DEFAULTS = dict(num_classes=10, image_size=32, train_per_class=200, test_per_class=50, seed=0)

#: Bump when the renderer changes (it keys the caches).
GENERATOR_VERSION = 1

# Measured on the default train split (seed 0); close for any seed.
SHAPES_MEAN = (0.433, 0.435, 0.435)
SHAPES_STD = (0.270, 0.269, 0.270)

#: Difficulty knobs of the renderer (part of the generator version).
RENDER_PARAMS = dict(scale_min=0.3, scale_max=0.48, noise_min=0.01, noise_max=0.06, line_p=0.3, dot_p=0.3,
                     bg_max=0.5, fg_min=0.6, invert_p=0.25)

_SPLIT_CODE = {"train": 1, "test": 2}
_MEMORY_CACHE: dict[tuple, tuple[torch.Tensor, list[int]]] = {}


# --- signed distance functions in the figure's unit frame (y up, figure within radius ~1) ----

def _length(x, y):
    return np.sqrt(x * x + y * y)


def _box(x, y, a, b):
    return np.maximum(np.abs(x) - a, np.abs(y) - b)


def _convex(x, y, vertices):
    """Max over edges of the signed distance to the edge's line; vertices counter-clockwise."""
    d = None
    n = len(vertices)
    for i in range(n):
        x0, y0 = vertices[i]
        x1, y1 = vertices[(i + 1) % n]
        ex, ey = x1 - x0, y1 - y0
        norm = (ex * ex + ey * ey) ** 0.5
        nx, ny = ey / norm, -ex / norm  # outward normal for CCW order
        e = (x - x0) * nx + (y - y0) * ny
        d = e if d is None else np.maximum(d, e)
    return d


def _regular_polygon(k: int, radius: float, phase: float = 0.0):
    import math

    return [
        (radius * math.cos(phase + 2 * math.pi * i / k), radius * math.sin(phase + 2 * math.pi * i / k))
        for i in range(k)
    ]


_TRIANGLE = _regular_polygon(3, 0.95, phase=np.pi / 2)
_PENTAGON = _regular_polygon(5, 0.9, phase=np.pi / 2)
_HEXAGON = _regular_polygon(6, 0.9)
_HEART_TRI = [(-0.8, 0.2), (0.0, -0.9), (0.8, 0.2)]
_ARROW_HEAD = [(0.15, -0.55), (0.95, 0.0), (0.15, 0.55)]
_TRAPEZOID = [(-0.95, -0.5), (0.95, -0.5), (0.45, 0.5), (-0.45, 0.5)]


def _star(x, y, r=0.95, rf=0.45):
    # Inigo Quilez's sdStar5: folds the plane with reflections, no trigonometry on arrays.
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    x = np.abs(x)
    d = np.maximum(k1x * x + k1y * y, 0.0) * 2.0
    x, y = x - d * k1x, y - d * k1y
    d = np.maximum(k2x * x + k2y * y, 0.0) * 2.0
    x, y = x - d * k2x, y - d * k2y
    x = np.abs(x)
    y = y - r
    bax, bay = rf * -k1y - 0.0, rf * k1x - 1.0
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0.0, r)
    return _length(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def _sdf(name: str, x, y):
    if name == "circle":
        return _length(x, y) - 0.85
    if name == "square":
        return _box(x, y, 0.68, 0.68)
    if name == "triangle":
        return _convex(x, y, _TRIANGLE)
    if name == "star":
        return _star(x, y)
    if name == "cross":
        return np.minimum(_box(x, y, 0.9, 0.26), _box(x, y, 0.26, 0.9))
    if name == "heart":
        lobes = np.minimum(_length(x + 0.4, y - 0.3) - 0.45, _length(x - 0.4, y - 0.3) - 0.45)
        return np.minimum(lobes, _convex(x, y, _HEART_TRI))
    if name == "ring":
        return np.abs(_length(x, y) - 0.68) - 0.22
    if name == "arrow":
        return np.minimum(_box(x + 0.35, y, 0.55, 0.16), _convex(x, y, _ARROW_HEAD))
    if name == "crescent":
        return np.maximum(_length(x, y) - 0.88, -(_length(x - 0.42, y - 0.18) - 0.7))
    if name == "diamond":  # a rhombus, elongated so that no rotation turns a square into it
        return (np.abs(x) * 0.52 + np.abs(y) * 0.95 - 0.95 * 0.52) / (0.52 ** 2 + 0.95 ** 2) ** 0.5
    if name == "hexagon":
        return _convex(x, y, _HEXAGON)
    if name == "pentagon":
        return _convex(x, y, _PENTAGON)
    if name == "ellipse":
        return (_length(x / 0.95, y / 0.5) - 1.0) * 0.5
    if name == "rectangle":
        return _box(x, y, 0.95, 0.45)
    if name == "semicircle":
        return np.maximum(_length(x, y + 0.4) - 0.95, -(y + 0.4))
    if name == "trapezoid":
        return _convex(x, y, _TRAPEZOID)
    raise ValueError(name)


def _segment(px, py, ax, ay, bx, by):
    """Distance from points to the segments a-b (per image; a, b are (n,1,1) arrays)."""
    pax, pay = px - ax, py - ay
    bax, bay = bx - ax, by - ay
    h = np.clip((pax * bax + pay * bay) / np.maximum(bax * bax + bay * bay, 1e-9), 0.0, 1.0)
    return _length(pax - bax * h, pay - bay * h)


def _composite(img, alpha, colour):
    """img (n,3,H,W) <- colour (n,3) over img with coverage alpha (n,H,W)."""
    a = alpha[:, None]
    img *= 1.0 - a
    img += a * colour[:, :, None, None]


def _cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin through the C library one value at a time (numpy's SIMD kernels may differ
    in the last bit between CPUs)."""
    import math

    return (np.array([math.cos(a) for a in angles.tolist()], dtype=np.float64),
            np.array([math.sin(a) for a in angles.tolist()], dtype=np.float64))


def render(labels: np.ndarray, class_names, image_size: int, rng: np.random.RandomState) -> np.ndarray:
    """Render ``len(labels)`` images as ``uint8`` ``N x 3 x S x S``; draws from ``rng`` in a fixed order."""
    n, s = len(labels), int(image_size)
    P = RENDER_PARAMS
    u = rng.random_sample  # only uniform [0, 1) draws: exact and stable across platforms

    # Per-image parameters (all drawn before any pixel work, in a fixed order).
    scale = s * (P['scale_min'] + (P['scale_max'] - P['scale_min']) * u(n))   # figure radius in pixels
    margin = scale * 0.8
    cx = margin + (s - 2 * margin) * u(n)
    cy = margin + (s - 2 * margin) * u(n)
    angle = 2 * np.pi * u(n)
    cos_t, sin_t = _cos_sin(angle)                      # per-image scalars only
    aspect = 0.9 + 0.2 * u((n, 2))
    bg0, bg1 = u((n, 3)), u((n, 3))
    grad_angle = 2 * np.pi * u(n)
    grad_strength = u(n)
    fg = u((n, 3))
    invert_draw = u(n)
    noise_level = P['noise_min'] + (P['noise_max'] - P['noise_min']) * u(n)
    line_on = u(n) < P['line_p']
    line_pts = u((n, 4)) * s
    line_width = 0.5 + 0.8 * u(n)
    line_colour = u((n, 3))
    dot_on = u(n) < P['dot_p']
    dot_xy = u((n, 2)) * s
    dot_r = 1.0 + 0.06 * s * u(n)
    dot_colour = u((n, 3))
    noise = u((n, 3, s, s))

    # Polarity: a light figure on a darker background, inverted in a share of the images.
    bg0 *= P["bg_max"]
    bg1 *= P["bg_max"]
    fg = P["fg_min"] + (1.0 - P["fg_min"]) * fg
    invert = (invert_draw < P["invert_p"])[:, None]
    bg0, bg1, fg = np.where(invert, 1.0 - bg0, bg0), np.where(invert, 1.0 - bg1, bg1), np.where(invert, 1.0 - fg, fg)

    coords = np.arange(s, dtype=np.float64) + 0.5
    py = coords[None, :, None]
    px = coords[None, None, :]

    # Background: gradient between two colours in a random direction, times a random strength.
    gx, gy = (a[:, None, None] for a in _cos_sin(grad_angle))
    t = ((px / s - 0.5) * gx + (py / s - 0.5) * gy) / 1.5 + 0.5          # (n,S,S) in [0,1]
    t = 0.5 + (t - 0.5) * grad_strength[:, None, None]
    img = bg0[:, :, None, None] + (bg1 - bg0)[:, :, None, None] * t[:, None]

    # Distractors behind the figure: a line and a dot.
    col = lambda a: a[:, None, None]  # noqa: E731
    d_line = _segment(px, py, col(line_pts[:, 0]), col(line_pts[:, 1]), col(line_pts[:, 2]), col(line_pts[:, 3]))
    a_line = np.clip(col(line_width) - d_line + 0.5, 0.0, 1.0) * col(line_on.astype(np.float64))
    _composite(img, a_line, line_colour)
    d_dot = _length(px - col(dot_xy[:, 0]), py - col(dot_xy[:, 1])) - col(dot_r)
    a_dot = np.clip(0.5 - d_dot, 0.0, 1.0) * col(dot_on.astype(np.float64))
    _composite(img, a_dot, dot_colour)

    # The figure, per class (vectorised over the images of that class).
    dx, dy = px - col(cx), py - col(cy)
    for label in np.unique(labels):
        idx = np.nonzero(labels == label)[0]
        c, sn = cos_t[idx][:, None, None], sin_t[idx][:, None, None]
        sc = scale[idx][:, None, None]
        ax, ay = aspect[idx, 0][:, None, None], aspect[idx, 1][:, None, None]
        x = (c * dx[idx] + sn * dy[idx]) / (sc * ax)
        y = -(-sn * dx[idx] + c * dy[idx]) / (sc * ay)                # y up
        d_px = _sdf(class_names[label], x, y) * sc * np.minimum(ax, ay)
        alpha = np.clip(0.5 - d_px, 0.0, 1.0)
        sub = img[idx]
        _composite(sub, alpha, fg[idx])
        img[idx] = sub

    img += (noise - 0.5) * (2 * noise_level)[:, None, None, None]
    return np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _seed_words(seed: int, split: str, num_classes: int, per_class: int, image_size: int) -> list[int]:
    seed = int(seed)
    if seed < 0:
        raise ConfigError(f"data.seed must be >= 0; got {seed}")
    return [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, _SPLIT_CODE[split], num_classes, per_class,
            image_size, GENERATOR_VERSION]


def generate(
    split: str = "train",
    *,
    num_classes: int = 10,
    image_size: int = 32,
    per_class: int = 200,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """The images (``uint8`` tensor ``N x 3 x S x S``) and labels of one split, cached.

    Labels cycle ``0, 1, ..., C-1, 0, 1, ...`` so that every prefix is class-balanced.
    """
    check_split(split, "shapes")
    if not 1 <= int(num_classes) <= len(SHAPE_CLASSES):
        raise ConfigError(f"data.num_classes must be between 1 and {len(SHAPE_CLASSES)} for shapes; got {num_classes}")
    if int(image_size) < 8:
        raise ConfigError(f"data.image_size must be >= 8 for shapes; got {image_size}")
    if int(per_class) < 1:
        raise ConfigError(f"shapes: the number of images per class must be >= 1; got {per_class}")
    words = _seed_words(seed, split, int(num_classes), int(per_class), int(image_size))
    key = tuple(words)
    hit = _MEMORY_CACHE.get(key)
    if hit is not None:
        return hit
    path = None
    if cache_dir is not None:
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"shapes-v{GENERATOR_VERSION}-{digest}.pt"
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                if blob["key"] == list(key):
                    _MEMORY_CACHE[key] = (blob["images"], list(blob["targets"]))
                    return _MEMORY_CACHE[key]
            except Exception:  # a broken cache file is regenerated
                pass
    labels = np.arange(int(num_classes) * int(per_class)) % int(num_classes)
    rng = np.random.RandomState(words)
    images = torch.from_numpy(render(labels, SHAPE_CLASSES, int(image_size), rng))
    targets = labels.tolist()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"key": list(key), "images": images, "targets": targets}, tmp)
            os.replace(tmp, path)
        except OSError:
            pass
    _MEMORY_CACHE[key] = (images, targets)
    return images, targets


class ShapesDataset(TensorImageDataset):
    """The ``shapes`` dataset; see the module docstring.

    Options: ``num_classes`` (10; at most ``len(SHAPE_CLASSES)``), ``image_size`` (32),
    ``train_per_class`` (200), ``test_per_class`` (50), ``seed`` (0), ``augment`` (train split:
    ``"none"`` (default: position, size and rotation are already random) | ``"weak"`` |
    ``"strong"``), ``normalize`` (True), ``cache_dir`` (None: memory only).
    ``images`` holds the ``uint8`` ``N x 3 x S x S`` tensor.
    """

    name = "shapes"
    mean = SHAPES_MEAN
    std = SHAPES_STD

    def __init__(
        self,
        split: str = "train",
        root: str | None = None,
        *,
        num_classes: int = DEFAULTS["num_classes"],
        image_size: int = DEFAULTS["image_size"],
        train_per_class: int = DEFAULTS["train_per_class"],
        test_per_class: int = DEFAULTS["test_per_class"],
        seed: int = DEFAULTS["seed"],
        augment: str | None = "none",
        normalize: bool = True,
        cache_dir: str | None = None,
        transform: Callable | None = None,
    ):
        check_split(split, "shapes")
        per_class = train_per_class if split == "train" else test_per_class
        self.images, self.targets = generate(
            split, num_classes=num_classes, image_size=image_size, per_class=per_class, seed=seed,
            cache_dir=cache_dir,
        )
        self.classes = list(SHAPE_CLASSES[: int(num_classes)])
        self.raw_classes = list(self.classes)
        self.seed = int(seed)
        self.native_size = int(image_size)
        self._init_transform(split, image_size, augment, normalize, transform)


def build_shapes(split: str, root: str | None = None, **options) -> ShapesDataset:
    """Registry factory for ``shapes`` (``root`` is ignored: nothing is read from disk)."""
    return ShapesDataset(split, root, **options)
