"""The embedded default dataset: seeded procedural multi-label scenes with noisy captions
(:func:`make_scenes`), no files needed."""
from __future__ import annotations

import math

import numpy as np

from .container import CrossModalData

#: Categories of the embedded scenes (shapes, each drawn procedurally) and the words captions use.
SCENE_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "stripe"]
_SYNONYMS = {
    "circle": ["circle", "disc", "round dot", "ball"],
    "square": ["square", "box", "block", "tile"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "star": ["star", "sparkle", "asterisk"],
    "cross": ["cross", "plus sign", "x mark"],
    "ring": ["ring", "hoop", "loop", "donut"],
    "diamond": ["diamond", "rhombus", "gem"],
    "stripe": ["stripe", "bar", "band", "line"],
}
_COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
            "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220)}
_FILLER = ["photo", "picture", "nice", "today", "my", "view", "art", "pattern", "colourful", "simple", "shape",
           "drawing", "background", "texture", "bright", "dark", "design", "abstract"]


def _shape_mask(kind: str, size: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
                angle: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if kind == "triangle":
        return (v <= 0.7 * r) & (v >= -r + 1.7 * np.abs(u))
    if kind == "cross":
        w = 0.3 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if kind == "star":
        ang = np.arctan2(v, u)
        rad = np.sqrt(u * u + v * v)
        return rad <= r * (0.55 + 0.45 * np.cos(5 * ang))
    if kind == "stripe":
        return np.abs(v) <= 0.22 * r
    raise ValueError(kind)


def make_scenes(n: int = 3000, image_size: int = 64, seed: int = 0, max_objects: int = 3,
                caption_drop: float = 0.15, caption_noise: float = 0.1, colour_bias: float = 0.85) -> CrossModalData:
    """Seeded procedural multi-label scenes: 1..``max_objects`` coloured shapes on a noisy background,
    multi-hot labels over :data:`SCENE_CLASSES` and a caption naming the shapes with synonyms,
    colours and filler words.  Captions are noisier than labels on purpose: with probability
    ``caption_drop`` an object is not mentioned, with probability ``caption_noise`` a wrong shape is
    (what makes a label teacher useful).  Each category has a preferred colour (probability
    ``colour_bias``).  Deterministic for a given ``seed``; ~1 s for 3,000 images."""
    rng = np.random.RandomState(seed)
    k = len(SCENE_CLASSES)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.zeros((n, k), np.uint8)
    texts = []
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    colour_names = list(_COLOURS)
    for i in range(n):
        base = rng.randint(0, 90, size=3)
        img = np.clip(base + rng.normal(0, 12, (image_size, image_size, 3)), 0, 255)
        n_obj = rng.randint(1, max_objects + 1)
        kinds = rng.choice(k, size=n_obj, replace=False)
        words = []
        for c in kinds:
            kind = SCENE_CLASSES[c]
            r = rng.uniform(0.12, 0.24) * image_size
            cy, cx = rng.uniform(r, image_size - r, size=2)
            # each category has a preferred colour (p = colour_bias), so even random-init
            # features carry some of the label; the shape carries the rest
            colour = colour_names[c] if rng.rand() < colour_bias else colour_names[rng.randint(len(colour_names))]
            y0, y1 = max(0, int(cy - r) - 1), min(image_size, int(cy + r) + 2)
            x0, x1 = max(0, int(cx - r) - 1), min(image_size, int(cx + r) + 2)
            mask = _shape_mask(kind, image_size, yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], cy, cx, r,
                               rng.uniform(0, math.pi))
            img[y0:y1, x0:x1][mask] = np.asarray(_COLOURS[colour]) * rng.uniform(0.8, 1.0)
            labels[i, c] = 1
            if rng.rand() >= caption_drop or len(words) == 0 and c == kinds[-1]:
                syn = _SYNONYMS[kind][rng.randint(len(_SYNONYMS[kind]))]
                words.append(f"{colour} {syn}" if rng.rand() < 0.6 else syn)
        if rng.rand() < caption_noise:
            wrong = SCENE_CLASSES[rng.randint(k)]
            words.append(_SYNONYMS[wrong][rng.randint(len(_SYNONYMS[wrong]))])
        fill = list(rng.choice(_FILLER, size=rng.randint(0, 3), replace=False))
        rng.shuffle(words)
        texts.append(" ".join(fill[:1] + words + fill[1:]))
        images[i] = img.astype(np.uint8)
    return CrossModalData("soda_scenes", images, texts, labels, list(SCENE_CLASSES),
                          source=f"embedded procedural scenes (n={n}, seed={seed})")
