"""The teacher-output cache of a student stage: teacher logits (and tapped features) computed once
per sample index and reused every epoch.  :class:`~kdkit.distill.StudentStage` builds one per
teacher when ``distill.teacher_cache`` allows it."""
from __future__ import annotations

from contextlib import closing
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from kdkit.distill.taps import FeatureTaps
from kdkit.engine.data import make_eval_loader, to_device
from kdkit.errors import ConfigError

__all__ = ["TeacherCache", "AUTO_FEATURE_CACHE_BYTES", "feature_caches_fit", "describe_caches"]


#: ``distill.teacher_cache: null`` (auto) caches tapped teacher features only when the estimate of
#: their size (:meth:`TeacherCache.estimate_nbytes`, all teachers together) is below this many bytes
#: (2 GiB of CPU memory per process: room for a ``64 x 8 x 8`` float32 map of all 50 000 CIFAR
#: training images, 800 MiB, without crowding a machine that trains); above it the teachers run online.
AUTO_FEATURE_CACHE_BYTES = 2 * 1024 ** 3


class TeacherCache:
    """Teacher outputs computed once per sample index and reused every epoch: the logits and,
    optionally, the outputs of tapped modules (the features feature terms distil).

    Valid only when the teacher's input for a sample is deterministic (no random augmentation on
    the teacher's view): ``dataset`` is that view, index-aligned with the training data (wrap the
    training data in :class:`~kdkit.engine.data.WithIndex` and look up ``cache[indices]``).  ``forward(model, batch)``
    maps a batch of ``dataset`` to the teacher output (default: ``model(batch[0])``).

    :param paths: module paths of ``model`` (as :class:`kdkit.distill.FeatureTaps` spells them)
        whose outputs are cached too, read with :meth:`features`.  Given to a
        :class:`~kdkit.distill.step.DistillStep` in place of the teacher module, the cache hands the
        feature terms these outputs for the batch's sample indices and the teacher does not run.
        A tapped module must return one tensor whose first dimension is the batch.
    :param feature_dtype: the dtype features are stored in.  ``None`` (default): the dtype the
        teacher produced, so a lookup returns exactly what the teacher computed.  ``torch.float16``
        halves the memory of float32 features at the cost of rounding them (about 3 significant
        digits; values beyond 65504 overflow) — worth it only when the full-precision cache would not
        fit.  A lookup casts back to the dtype the teacher produced.

    Memory: the logits stay on ``device`` (float32, ``N x C``).  Features
    are kept in CPU memory, because every training sample's feature maps can be large (a
    ``64 x 8 x 8`` float32 map is 16 KiB a sample, 800 MiB for 50 000 samples), and the batch's
    rows are copied to ``device`` on each lookup; under DDP every process holds the whole cache.
    :meth:`estimate_nbytes` gives the size before anything is built (from one sample), and
    :data:`AUTO_FEATURE_CACHE_BYTES` (2 GiB) is the bound under which the ``kd`` method caches
    features on its own (``distill.teacher_cache: null``).
    """

    def __init__(self, model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256,
                 forward: Callable | None = None, num_workers: int = 0, paths: Sequence[str] = (),
                 feature_dtype: torch.dtype | None = None):
        self.model = model
        self.dataset = dataset
        self.device = device
        self.batch_size = batch_size
        self.forward = forward or (lambda m, batch: m(batch[0]))
        self.num_workers = num_workers
        self.feature_dtype = feature_dtype
        self._taps = None
        if paths:
            self._taps = FeatureTaps(model, paths, detach=True, owner="teacher (cache)")  # wrong paths fail here
        self._table: torch.Tensor | None = None
        self._features: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}

    @property
    def paths(self) -> list[str]:
        """The module paths whose outputs are cached (empty: logits only)."""
        return list(self._taps.paths) if self._taps is not None else []

    def _run(self, batch) -> tuple[torch.Tensor, dict]:
        """The logits (float32, on ``device``) and the tapped features (CPU, storage dtype) of one batch."""
        if self._taps is None:
            return self.forward(self.model, batch).float(), {}
        self._taps.pop()
        logits = self.forward(self.model, batch).float()
        got = self._taps.pop()
        feats = {}
        for path in self._taps.paths:
            value = got.get(path)
            what = type(self.model).__name__
            if not isinstance(value, torch.Tensor):
                problem = "did not run in the forward pass" if value is None else \
                    f"returned {type(value).__name__}, not a tensor"
                raise ConfigError(f"teacher cache: module {path!r} of {what} {problem}; only a tensor output can be "
                                  "cached (set distill.teacher_cache=false to run the teacher online)")
            if value.dim() == 0 or value.shape[0] != logits.shape[0]:
                raise ConfigError(f"teacher cache: module {path!r} of {what} returned shape {tuple(value.shape)} for "
                                  f"a batch of {logits.shape[0]}; only outputs with one row per sample can be cached "
                                  "(set distill.teacher_cache=false to run the teacher online)")
            self._dtypes.setdefault(path, value.dtype)
            feats[path] = value.detach().to("cpu", dtype=self.feature_dtype or value.dtype)
        return logits, feats

    @torch.no_grad()
    def _evaluate(self, batches):
        """``(logits, features)`` of each batch, the teacher in eval mode and its taps attached."""
        was_training = self.model.training
        self.model.eval()
        if self._taps is not None:
            self._taps.attach()
        try:
            for batch in batches:
                yield self._run(to_device(batch, self.device))
        finally:
            if self._taps is not None:
                self._taps.remove()
            self.model.train(was_training)

    def build(self) -> torch.Tensor:
        """Run the teacher over ``dataset`` once; returns the logits table."""
        n, start, outs = len(self), 0, []
        features: dict[str, torch.Tensor] = {}
        with closing(self._evaluate(make_eval_loader(self.dataset, self.batch_size, self.num_workers))) as batches:
            for logits, feats in batches:
                outs.append(logits)
                for path, value in feats.items():  # written in place: no second copy of the features
                    if path not in features:
                        features[path] = torch.empty((n, *value.shape[1:]), dtype=value.dtype)
                    if value.shape[1:] != features[path].shape[1:]:
                        raise ConfigError(f"teacher cache: module {path!r} returned {tuple(value.shape[1:])} per "
                                          f"sample after {tuple(features[path].shape[1:])}; only outputs of one shape "
                                          "can be cached (set distill.teacher_cache=false to run the teacher online)")
                    features[path][start:start + value.shape[0]] = value
                start += logits.shape[0]
        self._table = torch.cat(outs) if outs else torch.empty(0)
        self._features = features
        return self._table

    def estimate_nbytes(self) -> dict:
        """``{"logits": bytes, "features": bytes}`` the cache takes (or will take: the teacher runs on
        one sample, the size of everything else follows from it)."""
        if self._table is not None:
            return self.nbytes
        n = len(self)
        if n == 0:
            return {"logits": 0, "features": 0}
        (logits, feats), = list(self._evaluate([next(iter(make_eval_loader(self.dataset, 1)))]))
        return {"logits": n * logits[0].numel() * logits.element_size(),
                "features": n * sum(f[0].numel() * f.element_size() for f in feats.values())}

    @property
    def nbytes(self) -> dict:
        """``{"logits": bytes, "features": bytes}`` of the built cache."""
        table = self.table
        return {"logits": table.numel() * table.element_size(),
                "features": sum(f.numel() * f.element_size() for f in self._features.values())}

    @property
    def table(self) -> torch.Tensor:
        if self._table is None:
            self.build()
        assert self._table is not None
        return self._table

    def __getitem__(self, indices) -> torch.Tensor:
        table = self.table
        if isinstance(indices, torch.Tensor):
            indices = indices.to(table.device)
        return table[indices]

    def features(self, indices) -> dict:
        """``{path: cached outputs of the samples indices}`` on ``device``, in the dtype the teacher
        produced (what the taps of an online teacher give for the same samples)."""
        if self._table is None:
            self.build()
        if isinstance(indices, torch.Tensor):
            indices = indices.to("cpu")
        return {path: table[indices].to(self.device, dtype=self._dtypes[path])
                for path, table in self._features.items()}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def _mib(nbytes: int) -> str:
    """``nbytes`` for a log line: KiB, MiB or GiB."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2 ** 10:.1f} KiB"


def feature_caches_fit(caches: Sequence[TeacherCache], setting: bool | None, log: Callable[[str], None],
                       limit: int | None = None) -> bool:
    """Should ``caches`` (not built yet) that also hold tapped features be used?  Estimates their size
    (:meth:`TeacherCache.estimate_nbytes`: one sample through each teacher) and logs it.

    ``setting`` is ``distill.teacher_cache``: ``None`` (auto) answers yes only when the features of
    all teachers together take less than ``limit`` bytes of CPU memory (default
    :data:`AUTO_FEATURE_CACHE_BYTES`, 2 GiB) and every tapped output can be cached; ``True`` answers
    yes whatever the size (with a warning above ``limit``; an output that cannot be cached is a
    :class:`~kdkit.errors.ConfigError`).  No: run the teachers online.
    """
    limit = AUTO_FEATURE_CACHE_BYTES if limit is None else int(limit)
    try:
        sizes = [c.estimate_nbytes() for c in caches]
    except ConfigError as e:
        if setting is True:
            raise
        log(f"teacher_cache=null: the tapped teacher features cannot be cached ({e}); teachers run online")
        return False
    features = sum(s["features"] for s in sizes)
    log(f"teacher cache estimate: logits {_mib(sum(s['logits'] for s in sizes))}, tapped features "
        f"{_mib(features)} in CPU memory (teacher_cache=null caches features below {_mib(limit)})")
    if features < limit:
        return True
    if setting is True:
        log(f"WARNING: teacher_cache=true holds {_mib(features)} of teacher features in CPU memory")
        return True
    log("teacher_cache=null: the tapped teacher features exceed the bound, teachers run online "
        "(distill.teacher_cache=true caches them anyway)")
    return False


def describe_caches(caches: Sequence[TeacherCache]) -> str:
    """One line on built caches: how many, and the memory their logits and features take."""
    logits, features = (sum(c.nbytes[k] for c in caches) for k in ("logits", "features"))
    devices = sorted({str(c.device) for c in caches})
    return (f"teacher cache of {len(caches)} teacher(s) x {len(caches[0]) if caches else 0} samples: logits "
            f"{_mib(logits)} on {', '.join(devices)}"
            + (f", tapped features {_mib(features)} in CPU memory" if any(c.paths for c in caches) else ""))
