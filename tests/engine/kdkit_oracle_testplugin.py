"""Oracle teachers and a recording student/loss: what the distillation loss sees, sample by sample.

* dataset ``tagged_shapes`` — the ``shapes`` images, sorted by class, each carrying its own
  identity in the top-left pixel (channel 0/1: the sample's position in the split, base 256;
  channel 2: its label; row 0 col 1 channel 0: 0 for train, 1 for test).  Everything else —
  transforms, normalisation, ``get_uint8``, CLIP caching — is the real ``shapes`` dataset's.
* teachers ``oracle_label`` (``scale`` x one-hot of the sample's *own* label, + a tiny per-sample term) and
  ``oracle_sample`` (a fixed vector of the sample's *position*, so label-vs-index confusion
  shows too); both read the tag, so they are right whatever order samples arrive in.
* student ``probe`` — a BN-free MLP blind to the tag pixel that records, in training mode, which
  samples each batch holds (``RECORD["student_ids"]``).
* loss ``record_kl`` — Hinton KD that records the teacher logits it is given
  (``RECORD["teacher_logits"]``), one entry per call.

The tag is decoded with the normalisation of the last ``tagged_shapes`` built (``TAG``).
"""
from __future__ import annotations

import kdkit

TAG: dict = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "normalize": True}
RECORD: dict = {"student_ids": [], "teacher_logits": []}


def reset_record() -> None:
    RECORD["student_ids"].clear()
    RECORD["teacher_logits"].clear()


def decode(x):
    """``(positions, labels, split)`` of a batch of ``tagged_shapes`` images (as the model sees them)."""
    import torch

    px = x[:, :, 0, :2].detach().float().cpu()
    if TAG["normalize"]:
        px = px * torch.tensor(TAG["std"]).view(1, 3, 1) + torch.tensor(TAG["mean"]).view(1, 3, 1)
    v = (px * 255).round().long()
    return v[:, 0, 0] + 256 * v[:, 1, 0], v[:, 2, 0], v[:, 0, 1]


def sample_vector(positions, num_classes: int):
    """The ``oracle_sample`` logits: a fixed, distinct vector per sample position."""
    import torch

    j = torch.arange(num_classes, dtype=torch.float32)
    return 3.0 * torch.sin(1.37 * positions.float().view(-1, 1) + 0.59 * j.view(1, -1))


def label_logits(positions, labels, num_classes: int, scale: float = 10.0):
    """The ``oracle_label`` logits: ``scale`` x one-hot of the label, plus a tiny per-sample term
    (no real teacher gives two images bit-identical logits, and the guard checks that)."""
    import torch.nn.functional as F

    return scale * F.one_hot(labels, num_classes).float() + 1e-3 * sample_vector(positions, num_classes)


def _tagged_shapes(split, root=None, **options):
    import torch

    from kdkit.data.shapes import ShapesDataset

    ds = ShapesDataset(split, root, **options)
    targets = torch.as_tensor(ds.targets)
    order = torch.sort(targets, stable=True).indices  # class-sorted: shuffling is the loader's job
    images = ds.images[order].clone()
    n = images.shape[0]
    pos = torch.arange(n)
    images[:, 0, 0, 0] = (pos % 256).to(torch.uint8)
    images[:, 1, 0, 0] = (pos // 256).to(torch.uint8)
    images[:, 2, 0, 0] = targets[order].to(torch.uint8)
    images[:, 0, 0, 1] = 0 if split == "train" else 1
    ds.images, ds.targets = images, targets[order].tolist()
    TAG.update(mean=tuple(ds.mean), std=tuple(ds.std), normalize=ds.normalize)
    return ds


def _oracle(kind: str):
    import torch
    import torch.nn as nn

    class Oracle(nn.Module):
        def __init__(self, num_classes: int, scale: float = 10.0, **_):
            super().__init__()
            self.num_classes, self.scale = num_classes, float(scale)
            self.anchor = nn.Parameter(torch.zeros(()))  # something for the teacher stage to "train"

        def forward(self, x):
            positions, labels, _ = decode(x)
            if kind == "label":
                out = label_logits(positions, labels, self.num_classes, self.scale)
            else:
                out = sample_vector(positions, self.num_classes)
            return out.to(x.device) + 0.0 * self.anchor

    return Oracle


def _probe(num_classes: int, hidden: int = 64, image_size: int = 32, **_):
    import torch.nn as nn

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * (image_size // 2) ** 2, hidden),
                                     nn.ReLU(), nn.Linear(hidden, num_classes))

        def forward(self, x):
            if self.training:
                RECORD["student_ids"].append(decode(x)[0])
            x = x.clone()
            x[:, :, 0, :2] = 0  # blind to the tag: it must learn from the shapes
            return self.net(x)

    return Probe()


class RecordingKL:
    def __init__(self, **options):
        from kdkit.losses import KLDivLoss

        self.kl = KLDivLoss(**options)

    def __call__(self, inputs):
        RECORD["teacher_logits"].append(inputs.teacher_logits.detach().float().cpu())
        return self.kl(inputs)


@kdkit.hookimpl
def kdkit_register_datasets(register):
    register("tagged_shapes", _tagged_shapes, description="shapes, class-sorted, identity in a pixel (tests)")


@kdkit.hookimpl
def kdkit_register_teachers(register):
    register("oracle_label", _oracle("label"), description="scaled one-hot of the sample's own label (tests)")
    register("oracle_sample", _oracle("sample"), description="a fixed vector per sample position (tests)")


@kdkit.hookimpl
def kdkit_register_students(register):
    register("probe", _probe, description="BN-free MLP that records which samples it is given (tests)")


@kdkit.hookimpl
def kdkit_register_losses(register):
    register("record_kl", RecordingKL, description="Hinton KD that records the teacher logits it sees (tests)")
