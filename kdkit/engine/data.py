"""Dataset helpers: held-out validation split, sample indices, loaders, device transfer.

(The teacher-output cache a student stage keys by these sample indices is
:class:`kdkit.distill.cache.TeacherCache`.)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from kdkit.seeding import derive_seed

__all__ = ["WithIndex", "split_train_val", "make_train_loader", "make_eval_loader", "dataset_classes", "to_device"]


class WithIndex(Dataset):
    """Wrap a dataset so every item is ``(*item, index)`` — the position of the sample in ``dataset``.

    Items that are tuples are extended (``(x, y)`` -> ``(x, y, i)``); dict items get key ``"index"``.
    The index is what keys a :class:`kdkit.distill.cache.TeacherCache`.

    No ``__getattr__`` forwarding: ``DataLoader`` fetches a batch through ``dataset.__getitems__``
    when ``hasattr`` finds one, so a forwarded ``__getitems__`` (``Subset`` has one) returned the
    wrapped items *without* the index and the label tensor landed in ``batch[-1]``.  Batched fetches
    are implemented here instead, and only ``classes`` is exposed (reach anything else through
    ``.dataset``).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @staticmethod
    def _with_index(item, index: int):
        if isinstance(item, dict):
            return {**item, "index": index}
        if isinstance(item, (tuple, list)):
            return (*item, index)
        return (item, index)

    def __getitem__(self, index: int):
        return self._with_index(self.dataset[index], index)

    def __getitems__(self, indices: list) -> list:
        # keep the wrapped dataset's batched fetch (when it has one), then attach the indices
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(list(indices)) if fetch is not None else [self.dataset[i] for i in indices]
        return [self._with_index(item, int(i)) for item, i in zip(items, indices)]

    @property
    def classes(self) -> list[str] | None:
        return dataset_classes(self.dataset)


def dataset_classes(dataset) -> list[str] | None:
    seen = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            return list(classes)
        dataset = getattr(dataset, "dataset", None)
    return None


def split_train_val(dataset: Dataset, fraction: float, seed: int, eval_dataset: Dataset | None = None,
                    ) -> tuple[Dataset, Dataset | None]:
    """Hold out ``fraction`` of ``dataset`` (seeded permutation) as the validation split.

    Returns ``(train_subset, val_subset)``; ``val_subset`` is drawn from ``eval_dataset`` (the same
    samples without training augmentation) when given.  Both keep their original order.
    ``fraction == 0`` returns ``(dataset, None)``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if fraction <= 0:
        return dataset, None
    if not 0 < fraction < 1:
        from kdkit.errors import ConfigError

        raise ConfigError(f"data.val_fraction must be in [0, 1), got {fraction}")
    n_val = max(1, int(round(n * fraction)))
    g = torch.Generator().manual_seed(derive_seed(seed, "val-split") % (2**63))
    perm = torch.randperm(n, generator=g)
    val_idx = sorted(perm[:n_val].tolist())
    train_idx = sorted(perm[n_val:].tolist())
    source = eval_dataset if eval_dataset is not None else dataset
    train, val = Subset(dataset, train_idx), Subset(source, val_idx)
    for part in (train, val):
        classes = dataset_classes(dataset)
        if classes is not None:
            part.classes = classes  # type: ignore[attr-defined]
    return train, val


def make_train_loader(dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0, collate_fn: Callable | None = None, drop_last: bool = False,
                      ) -> tuple[DataLoader, DistributedSampler]:
    """A shuffling loader whose order depends only on ``(seed, epoch)``: call ``sampler.set_epoch``.

    The same :class:`DistributedSampler` is used with one process (``num_replicas=1``), so with a
    global batch ``B`` the union of the per-rank batches of size ``B / world_size`` under torchrun
    equals the single-process batch.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed % (2**31), drop_last=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_fn, drop_last=drop_last, persistent_workers=False,
                        generator=torch.Generator().manual_seed(seed % (2**31)))
    return loader, sampler


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0,
                     collate_fn: Callable | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_fn)


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch) if not hasattr(batch, "_fields") else \
            type(batch)(*(to_device(v, device) for v in batch))
    return batch
