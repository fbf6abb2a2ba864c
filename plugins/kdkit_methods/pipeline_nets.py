"""The torch parts of the pipeline methods (:mod:`kdkit_methods.mutual`, :mod:`kdkit_methods.chains`,
:mod:`kdkit_methods.self_distillation`): their losses, the modules they train and their evaluations.

Imported when a pipeline method runs (the method modules reach it through :func:`kdkit.lazy_import`),
so resolving a method's config imports no torch.  The losses are plain functions of tensors so that
tests re-derive them on their own:

* :func:`mutual_loss` — deep mutual learning's objective of a cohort;
* :func:`byot_loss` — be-your-own-teacher's objective of a network with exits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import kdkit

__all__ = ["Cohort", "Ensemble", "ExitHead", "MutualStep", "RunningTop1", "SelfDistilled", "byot_loss",
           "cohort_eval", "exit_stride", "mutual_loss"]


# --------------------------------------------------------------------------------- shared pieces
def _split(batch):
    """``(x, y)`` of a batch ``(x, y, ...)`` (or a dict with ``image``/``input`` and ``label``)."""
    if isinstance(batch, dict):
        return batch["image"] if "image" in batch else batch["input"], batch["label"]
    return batch[0], batch[1]


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (the teacher side detached)."""
    t = teacher_logits.detach().float() / temperature
    s = student_logits.float() / temperature
    p = F.softmax(t, dim=1)
    kl = (p * (F.log_softmax(t, dim=1) - F.log_softmax(s, dim=1))).sum(dim=1).mean()
    return kl * temperature * temperature


class RunningTop1:
    """Running top-1 (percent) and mean cross-entropy of one classifier over an evaluation."""

    def __init__(self):
        self.correct, self.total, self.loss = 0, 0, 0.0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        self.loss += F.cross_entropy(logits, labels, reduction="sum").item()
        self.correct += (logits.argmax(1) == labels).sum().item()
        self.total += labels.numel()

    def metrics(self) -> tuple[float, float]:
        n = max(self.total, 1)
        return 100.0 * self.correct / n, self.loss / n


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


# --------------------------------------------------------------------------------- DML
class Cohort(nn.Module):
    """The peers of deep mutual learning as one module: ``forward(x)`` is the list of each peer's
    logits; ``peers.<i>.`` prefixes each peer's weights in the state dict."""

    def __init__(self, peers: Sequence[nn.Module]):
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, x):
        return [peer(x) for peer in self.peers]


def mutual_loss(logits: Sequence[torch.Tensor], labels: torch.Tensor, temperature: float = 1.0
                ) -> tuple[torch.Tensor, dict]:
    """Deep mutual learning's objective of a cohort of ``K >= 2`` peers (Zhang et al. 2018, Eq. 10)::

        L_k   = CE(z_k, y) + 1/(K-1) * sum_{l != k} T^2 * KL(p_l || p_k),   p = softmax(z / T)
        total = sum_k L_k

    ``p_l`` is detached in ``L_k``: the gradient of ``total`` with respect to peer ``k``'s logits is
    exactly that of ``L_k`` (each peer learns from the others, none is pulled towards them by its own
    term).  KL is averaged over the batch.  Returns ``(total, logs)`` with ``ce.<k>`` and ``kl.<k>``."""
    if len(logits) < 2:
        raise kdkit.ConfigError(f"deep mutual learning needs at least two peers, got {len(logits)}")
    k_count = len(logits)
    total = logits[0].new_zeros((), dtype=torch.float32)
    logs: dict = {}
    for k, z_k in enumerate(logits):
        ce = F.cross_entropy(z_k.float(), labels)
        kl = sum(_kl_rows(z_l, z_k, temperature) for l, z_l in enumerate(logits) if l != k) / (k_count - 1)
        total = total + ce + kl
        logs[f"ce.{k}"] = ce.detach()
        logs[f"kl.{k}"] = kl.detach()
    return total, logs


class MutualStep:
    """The cohort stage's ``step_fn``: every peer's logits on the batch, then :func:`mutual_loss`."""

    def __init__(self, temperature: float):
        self.temperature = float(temperature)

    def __call__(self, model, batch):
        x, y = _split(batch)
        return mutual_loss(model(x), y, self.temperature)


@torch.no_grad()
def cohort_eval(model: Cohort, loader) -> dict:
    """Each peer's top-1 and loss (``peer.<k>.top1``, ``peer.<k>.loss``); ``top1`` and ``loss`` are their
    means over the peers — the cohort stage selects its best epoch on the mean top-1."""
    device = _model_device(model)
    heads = [RunningTop1() for _ in model.peers]
    for batch in loader:
        x, y = _split(kdkit.to_device(batch, device))
        for head, z in zip(heads, model(x)):
            head.add(z, y)
    out: dict = {}
    for k, head in enumerate(heads):
        out[f"peer.{k}.top1"], out[f"peer.{k}.loss"] = head.metrics()
    out["top1"] = sum(out[f"peer.{k}.top1"] for k in range(len(heads))) / len(heads)
    out["loss"] = sum(out[f"peer.{k}.loss"] for k in range(len(heads))) / len(heads)
    return out


# --------------------------------------------------------------------------------- born-again ensemble
class Ensemble(nn.Module):
    """Born-again network ensemble (BANE): ``forward(x)`` is the log of the mean of the members'
    softmax probabilities, so top-1 is the ensemble's and cross-entropy its negative log-likelihood."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


# --------------------------------------------------------------------------------- BYOT
def exit_stride(exit_size: int, deepest_size: int) -> int:
    """The kernel size and stride of an exit's middle convolution: the ratio of the exit's spatial size
    to the deepest stage's (the reference's 8, 4, 2 for ResNet-18's stages at 32, 16, 8 px down to 4),
    rounded down, at least 1."""
    return max(1, int(exit_size) // max(1, int(deepest_size)))


class ExitHead(nn.Module):
    """One auxiliary exit: a bottleneck (1x1 conv to ``C/4``, BN, ReLU; ``k x k`` conv of stride ``k``,
    BN, ReLU; 1x1 conv to ``C``, BN, ReLU — ``C`` the deepest stage's channels, ``k`` its
    :func:`exit_stride`), global average pooling and a linear classifier (pytorch-be-your-own-teacher
    ``models/resnet.py``: ``branchBottleNeck``, ``avgpool<i>``, ``middle_fc<i>``).

    ``forward(feature_map) -> (logits, pooled feature B x C)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, num_classes: int):
        super().__init__()
        mid = max(1, out_channels // 4)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=stride, stride=stride), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out_channels, kernel_size=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(out_channels, num_classes)
        for m in self.modules():  # the reference initialises its whole network this way, heads included
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feature_map: torch.Tensor):
        feature = self.pool(self.bottleneck(feature_map)).flatten(1)
        return self.fc(feature), feature


def byot_loss(deepest_logits: torch.Tensor, exit_logits: Sequence[torch.Tensor], deepest_feature: torch.Tensor,
              exit_features: Sequence[torch.Tensor], labels: torch.Tensor, temperature: float = 3.0,
              alpha: float = 0.1, beta: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """Be your own teacher's objective (Zhang et al. 2019; pytorch-be-your-own-teacher ``train.py``)::

        total = (1 - alpha) * (CE(z, y) + sum_i CE(z_i, y))
              + alpha * sum_i T^2 * KL(softmax(z / T) || softmax(z_i / T))
              + beta  * sum_i sum_{b,c} [(f_i - f)^2 * ((f_i > 0) | (f > 0))]

    ``z``/``f``: the deepest classifier's logits and its pooled feature (both detached in the KL and
    feature terms, as in the reference); ``z_i``/``f_i``: exit ``i``'s.  The feature term is a sum over
    the batch and the channels, as the reference's.  Returns ``(total, logs)``."""
    if len(exit_logits) != len(exit_features):
        raise ValueError("byot_loss: one feature per exit")
    ce_deep = F.cross_entropy(deepest_logits.float(), labels)
    f_deep = deepest_feature.detach().float()
    ce_exits, kd_exits, hint_exits = [], [], []
    for z_i, f_i in zip(exit_logits, exit_features):
        ce_exits.append(F.cross_entropy(z_i.float(), labels))
        kd_exits.append(_kl_rows(deepest_logits, z_i, temperature))
        f_i = f_i.float()
        if f_i.shape != f_deep.shape:
            raise kdkit.ConfigError(f"byot: an exit's feature {tuple(f_i.shape)} does not match the deepest "
                                    f"feature {tuple(f_deep.shape)}")
        active = ((f_i > 0) | (f_deep > 0)).to(f_i.dtype)
        hint_exits.append(((f_i - f_deep) ** 2 * active).sum())
    ce = ce_deep + sum(ce_exits)
    kd, hint = sum(kd_exits), sum(hint_exits)
    total = (1.0 - alpha) * ce + alpha * kd + beta * hint
    logs = {"ce": ce.detach(), "kd": kd.detach(), "feature": hint.detach()}
    return total, logs


class SelfDistilled:
    """A backbone with exits after some of its stages, through forward hooks (the backbone's class is
    not edited): :class:`kdkit.distill.FeatureTaps` on the exit stages and the deepest stage, an
    :class:`ExitHead` per exit (an ``nn.ModuleDict`` keyed by position, trained as the stage's extra
    module: the backbone's exported weights stay the backbone's own).

    :param backbone: the deployed network; its own classifier is the deepest exit.
    :param exits: module paths of the stages the exits follow, shallow to deep.
    :param deepest: module path of the deepest stage (its pooled output is the features' target; its
        channels and spatial size shape the heads).
    """

    def __init__(self, backbone: nn.Module, exits: Sequence[str], deepest: str):
        from kdkit.distill import FeatureTaps

        self.backbone = backbone
        self.exits = list(exits)
        self.deepest = deepest
        self.taps = FeatureTaps(backbone, [*self.exits, deepest], owner="student")
        self.heads = nn.ModuleDict()

    @torch.no_grad()
    def build_heads(self, sample: torch.Tensor, num_classes: int, seed: int) -> None:
        """The heads, shaped by one forward pass of ``sample`` (eval mode: no BatchNorm statistic moves),
        initialised from ``seed``."""
        was = self.backbone.training
        self.backbone.eval()
        try:
            with self.taps:
                self.backbone(sample)
                maps = self.taps.pop()
        finally:
            self.backbone.train(was)
        for path in [*self.exits, self.deepest]:
            out = maps.get(path)
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise kdkit.ConfigError(f"byot: module {path!r} gives {shape}, not a B x C x H x W feature map; "
                                        "exits and deepest name convolutional stages (kdkit layers MODEL lists them)")
        deep = maps[self.deepest]
        kdkit.seed_everything(seed)
        for i, path in enumerate(self.exits):
            m = maps[path]
            stride = exit_stride(m.shape[-1], deep.shape[-1])
            self.heads[str(i)] = ExitHead(m.shape[1], deep.shape[1], stride, num_classes).to(sample.device)

    def outputs(self, model, x):
        """``(deepest logits, [exit logits], deepest pooled feature, [exit features])`` of one forward of
        ``model`` (the backbone, or its DDP wrapper) on ``x``; the taps must be attached."""
        logits = model(x)
        maps = self.taps.pop()
        exit_logits, exit_features = [], []
        for i, path in enumerate(self.exits):
            z, f = self.heads[str(i)](maps[path])
            exit_logits.append(z)
            exit_features.append(f)
        deep_feature = F.adaptive_avg_pool2d(maps[self.deepest], 1).flatten(1)
        return logits, exit_logits, deep_feature, exit_features

    def step(self, temperature: float, alpha: float, beta: float):
        """The stage's ``step_fn``."""
        def step_fn(model, batch):
            x, y = _split(batch)
            logits, exit_logits, deep_feature, exit_features = self.outputs(model, x)
            return byot_loss(logits, exit_logits, deep_feature, exit_features, y, temperature, alpha, beta)

        return step_fn

    @torch.no_grad()
    def evaluate(self, model, loader) -> dict:
        """The stage's ``eval_fn``: ``top1``/``loss`` of the deployed (deepest) classifier, which selects the
        best epoch, and ``exit.<path>.top1``/``.loss`` of each exit.  Attaches the taps when they are not."""
        attached = self.taps.attached
        if not attached:
            self.taps.attach()
        try:
            device = _model_device(model)
            deep = RunningTop1()
            exits = [RunningTop1() for _ in self.exits]
            for batch in loader:
                x, y = _split(kdkit.to_device(batch, device))
                logits, exit_logits, _, _ = self.outputs(model, x)
                deep.add(logits, y)
                for acc, z in zip(exits, exit_logits):
                    acc.add(z, y)
        finally:
            if not attached:
                self.taps.remove()
        out: dict = {}
        out["top1"], out["loss"] = deep.metrics()
        for path, acc in zip(self.exits, exits):
            out[f"exit.{path}.top1"], out[f"exit.{path}.loss"] = acc.metrics()
        return out
