"""The teacher-output cache of a student stage: teacher logits (and tapped features) computed once
per sample index and reused every epoch.  :class:`~kdkit.distill.StudentStage` builds one per
teacher when ``distill.teacher_cache`` allows it (:func:`plan_cache` decides where):

* ``memory`` — :class:`TeacherCache`: the logits on the device, the features in CPU memory, in every
  process;
* ``disk`` — :class:`DiskTeacherCache`: a :class:`~kdkit.distill.store.TeacherStore` in kdkit's cache
  directory, memory-mapped, built once per (teacher weights, data, transform) and reused by later runs;
* ``off`` — the teachers run on every batch;
* ``auto`` — ``memory`` below :data:`AUTO_FEATURE_CACHE_BYTES`, ``disk`` above, ``off`` when the
  training data is augmented (the teacher's input is then not deterministic).
"""
from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from kdkit.distill.taps import FeatureTaps
from kdkit.engine.data import make_eval_loader, to_device
from kdkit.errors import ConfigError

__all__ = ["TeacherCache", "DiskTeacherCache", "AUTO_FEATURE_CACHE_BYTES", "CACHE_MODES", "CachePlan",
           "cache_mode", "plan_cache", "describe_caches"]


#: ``distill.teacher_cache: auto`` keeps teacher outputs in memory when the estimate of their size
#: (logits and tapped features of all teachers together, per process) is below this many bytes (2 GiB:
#: room for a ``64 x 8 x 8`` float32 map of all 50 000 CIFAR training images, 800 MiB, without
#: crowding a machine that trains); above it they go to the disk store.
AUTO_FEATURE_CACHE_BYTES = 2 * 1024 ** 3

#: the values of ``distill.teacher_cache`` (``null`` / ``true`` / ``false``, its earlier values, mean
#: ``auto`` / ``memory`` / ``off``)
CACHE_MODES = ("auto", "memory", "disk", "off")


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
        self._sample_sizes: dict | None = None

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

    def sample_sizes(self) -> dict:
        """``{"logits": values, "features": values, "feature_bytes": bytes}`` of one sample: the
        teacher runs on the first sample (once; remembered)."""
        if self._sample_sizes is None:
            (logits, feats), = list(self._evaluate([next(iter(make_eval_loader(self.dataset, 1)))]))
            self._sample_sizes = {"logits": logits[0].numel(),
                                  "features": sum(f[0].numel() for f in feats.values()),
                                  "feature_bytes": sum(f[0].numel() * f.element_size() for f in feats.values())}
        return self._sample_sizes

    def estimate_nbytes(self) -> dict:
        """``{"logits": bytes, "features": bytes}`` the cache takes (or will take: the teacher runs on
        one sample, the size of everything else follows from it)."""
        if self._table is not None:
            return self.nbytes
        n = len(self)
        if n == 0:
            return {"logits": 0, "features": 0}
        one = self.sample_sizes()
        return {"logits": n * one["logits"] * 4, "features": n * one["feature_bytes"]}

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


@dataclass(frozen=True)
class CachePlan:
    """Where a student stage keeps its teachers' outputs, and why (the log line and ``summary.json``)."""

    #: ``memory``, ``disk`` or ``off``
    mode: str
    #: one sentence: why this mode
    reason: str

    @property
    def cached(self) -> bool:
        return self.mode != "off"


def cache_mode(setting) -> str:
    """``distill.teacher_cache`` as one of :data:`CACHE_MODES` (``null``/``true``/``false`` are
    ``auto``/``memory``/``off``)."""
    mode = {None: "auto", True: "memory", False: "off"}.get(setting, setting) \
        if setting is None or isinstance(setting, bool) else setting
    if mode not in CACHE_MODES:
        raise ConfigError(f"config key distill.teacher_cache: expected one of {', '.join(CACHE_MODES)}, got {setting!r}")
    return mode


def _spelling(setting) -> str:
    return {None: "null", True: "true", False: "false"}.get(setting, str(setting)) \
        if setting is None or isinstance(setting, bool) else str(setting)


def plan_cache(caches: Sequence[TeacherCache], setting, num_classes: int, log: Callable[[str], None], *,
               deterministic: bool = True, augmentation: str = "", store_options=None,
               limit: int | None = None) -> CachePlan:
    """Where ``caches`` (one per image teacher, not built) should keep their outputs.

    ``setting`` is ``distill.teacher_cache`` (:func:`cache_mode`).  ``auto``: ``off`` when the training
    data is augmented (``deterministic`` false; ``augmentation`` says how) or a tapped output cannot be
    cached, else ``memory`` when the estimate (logits ``N x num_classes`` float32 and tapped features,
    all teachers, per process) is below ``limit`` (default :data:`AUTO_FEATURE_CACHE_BYTES`), else
    ``disk``.  ``memory`` and ``disk`` cache whatever the size (``memory`` warns above ``limit``; an
    output that cannot be cached is a :class:`~kdkit.errors.ConfigError`).  Tapped features are
    estimated by running each teacher on one sample; logits only, nothing runs.  Logs the estimate
    (with features) and returns the decision with its reason.
    """
    from kdkit.distill.store import StoreOptions, store_nbytes

    mode, said = cache_mode(setting), f"teacher_cache={_spelling(setting)}"
    limit = AUTO_FEATURE_CACHE_BYTES if limit is None else int(limit)
    options = store_options or StoreOptions()
    if mode == "off":
        return CachePlan("off", f"distill.{said}")
    if mode == "auto" and not deterministic:
        return CachePlan("off", f"the training data is augmented{f' ({augmentation})' if augmentation else ''}, "
                                "so the teachers' outputs differ every epoch (distill.teacher_cache=memory or disk "
                                "caches the un-augmented images instead)")
    with_features = any(c.paths for c in caches)
    try:
        sizes = [c.sample_sizes() if c.paths else {"logits": num_classes, "features": 0, "feature_bytes": 0}
                 for c in caches]
    except ConfigError as e:
        if mode != "auto":
            raise
        log(f"{said}: the tapped teacher features cannot be cached ({e}); teachers run online")
        return CachePlan("off", f"the tapped teacher features cannot be cached ({e})")
    rows = len(caches[0]) if caches else 0
    logits = rows * sum(s["logits"] for s in sizes) * 4
    features = rows * sum(s["feature_bytes"] for s in sizes)
    memory = logits + features
    disk = sum(store_nbytes(rows, s["logits"], s["features"], options) for s in sizes)
    if with_features:
        log(f"teacher cache estimate: logits {_mib(logits)}, tapped features {_mib(features)} in CPU memory "
            f"(teacher_cache=auto keeps them in memory below {_mib(limit)}; a disk store would take {_mib(disk)})")
    if mode == "memory":
        if memory >= limit:
            log(f"WARNING: {said} holds {_mib(memory)} of teacher outputs in memory in every process "
                f"(distill.teacher_cache=disk keeps them in a memory-mapped store)")
        return CachePlan("memory", f"distill.{said}")
    if mode == "disk":
        return CachePlan("disk", f"distill.{said}")
    if memory < limit:
        return CachePlan("memory", f"the teacher outputs take {_mib(memory)}, below the {_mib(limit)} "
                                   "that teacher_cache=auto keeps in memory")
    return CachePlan("disk", f"the teacher outputs would take {_mib(memory)} in every process, at least the "
                             f"{_mib(limit)} that teacher_cache=auto keeps in memory: a disk store of {_mib(disk)} "
                             f"({options.dtype}{f', top-{options.topk}' if options.topk else ''})")


def describe_caches(caches: Sequence[TeacherCache]) -> str:
    """One line on built caches: how many, and the memory (or disk) their logits and features take."""
    if caches and isinstance(caches[0], DiskTeacherCache):
        total = sum(c.store_nbytes for c in caches)
        return (f"teacher store of {len(caches)} teacher(s) x {len(caches[0])} samples: {_mib(total)} on disk, "
                "memory-mapped (" + "; ".join(f"{c.store.path} {'built' if c.built else 'reused'}" for c in caches)
                + ")")
    logits, features = (sum(c.nbytes[k] for c in caches) for k in ("logits", "features"))
    devices = sorted({str(c.device) for c in caches})
    return (f"teacher cache of {len(caches)} teacher(s) x {len(caches[0]) if caches else 0} samples: logits "
            f"{_mib(logits)} on {', '.join(devices)}"
            + (f", tapped features {_mib(features)} in CPU memory" if any(c.paths for c in caches) else ""))


def _gather(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    from kdkit.engine import distributed as dist

    if not dist.is_distributed():
        return [obj]
    import torch.distributed

    out = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class DiskTeacherCache(TeacherCache):
    """A :class:`TeacherCache` whose outputs live in a :class:`~kdkit.distill.store.TeacherStore`:
    written once per key by the first process that needs them (under DDP: local rank 0 of each
    machine, under the key's lock, while the other ranks wait), memory-mapped and read by sample
    index; a later run with the same teacher weights, data and options reuses the store.

    :param options: the store's dtype and top-k (:class:`~kdkit.distill.store.StoreOptions`).
    :param root: the stores' directory (default :func:`~kdkit.distill.store.store_root`).
    :param identity: what else identifies this teacher's outputs (the teacher's config, the ``data``
        section, the seed): part of the key.
    :param log: where the store's waits are said.

    Lookups return what :class:`TeacherCache` returns (float32 logits on ``device``, features in the
    teacher's dtype), rounded to the store's dtype (``float32``: exact).
    """

    def __init__(self, model, dataset, device, batch_size: int = 256, forward: Callable | None = None,
                 num_workers: int = 0, paths: Sequence[str] = (), options=None, root=None,
                 identity: dict | None = None, log: Callable[[str], None] | None = None):
        from kdkit.distill.store import StoreOptions

        super().__init__(model, dataset, device, batch_size, forward, num_workers, paths)
        self.options = options or StoreOptions()
        self.root = root
        self.identity = dict(identity or {})
        self.log = log or (lambda m: None)
        self.store = None
        self.built: bool | None = None
        self._rows = None

    def key_parts(self) -> dict:
        """What the store's key hashes (see :mod:`kdkit.distill.store`)."""
        from kdkit.distill.store import dataset_fingerprint, weights_digest

        return {"teacher": weights_digest(self.model), "identity": self.identity,
                "data": dataset_fingerprint(self.dataset), "paths": self.paths,
                "dtype": self.options.dtype, "topk": self.options.topk}

    def _fill(self, writer) -> dict:
        names = {path: f"feature-{i}" for i, path in enumerate(self.paths)}
        with closing(self._evaluate(make_eval_loader(self.dataset, self.batch_size, self.num_workers))) as batches:
            for logits, feats in batches:
                writer.write_logits(logits)
                for path, value in feats.items():
                    writer.write(names[path], value)
        return {"features": names, "feature_dtypes": {p: str(d).removeprefix("torch.") for p, d in self._dtypes.items()}}

    def build(self):
        """Open the store of this key, building it first when no complete one exists."""
        import torch

        from kdkit.distill.store import StoreRows, TeacherStore, store_key, store_root
        from kdkit.engine import distributed as dist
        from kdkit.errors import KdkitError

        parts = dist.broadcast_object(self.key_parts() if dist.is_main() else None)  # one key for every rank
        self.store = store = TeacherStore(store_root(self.root), store_key(parts), parts)
        # the first process of each machine builds or verifies (the key's lock lets one builder at a time
        # through when machines share the cache directory, and a machine with a cache of its own builds
        # its own); the other ranks wait in the gather below, and fail with it (no rank is left waiting)
        builder = not dist.is_distributed() or int(os.environ.get("LOCAL_RANK", "0")) == 0
        failure = built = None
        if builder:
            try:
                built = store.ensure(len(self), self.options, self._fill, self.log)
            except KdkitError as exc:
                failure = exc
        outcomes = _gather((built, None if failure is None else (type(failure), str(failure))))
        if failure is not None:
            raise failure
        for _, error in outcomes:
            if error is not None:
                raise error[0](error[1])
        built = outcomes[0][0]  # rank 0's: what the log says
        manifest, arrays = store.open(verify=False)
        if manifest["rows"] != len(self):
            raise KdkitError(f"teacher store {store.path}: {manifest['rows']} rows for {len(self)} samples; "
                             f"remove it to rebuild it (rm -r {store.path})")
        self.built = bool(built)
        self._rows = StoreRows(manifest, arrays)
        self._features = {path: name for path, name in manifest["features"].items()}
        self._dtypes = {path: getattr(torch, name) for path, name in manifest["feature_dtypes"].items()}
        self._table = torch.empty(0)  # built: TeacherCache's table is not used
        return self._table

    def _ensure(self):
        if self._rows is None:
            self.build()
        return self._rows

    @property
    def store_nbytes(self) -> int:
        """Bytes of the store's shards on disk."""
        return self._ensure().nbytes

    @property
    def nbytes(self) -> dict:
        """``{"logits": bytes, "features": bytes}`` of the store on disk."""
        rows = self._ensure()
        shards = rows.manifest["shards"]
        features = sum(int(shards[name]["bytes"]) for name in rows.manifest["features"].values())
        return {"logits": rows.nbytes - features, "features": features}

    def __getitem__(self, indices):
        return self._ensure().logits(indices).to(self.device)

    def features(self, indices) -> dict:
        rows = self._ensure()
        return {path: rows.rows(name, indices).to(self.device, dtype=self._dtypes[path])
                for path, name in self._features.items()}
