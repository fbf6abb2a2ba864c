"""kdkit.engine.data: the sample index survives every wrapper, through a real DataLoader."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from kdkit.engine.data import WithIndex, dataset_classes, split_train_val


class BatchedFetch(Dataset):
    """A dataset with its own ``__getitems__`` (as DataLoader's batched-fetch protocol allows)."""

    def __init__(self, n: int):
        self.x = torch.arange(n).float() * 10
        self.y = torch.arange(n) % 10
        self.batched_calls = 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, indices):
        self.batched_calls += 1
        return [(self.x[i], self.y[i]) for i in indices]


def _base():
    return TensorDataset(torch.arange(100).float() * 10, torch.arange(100) % 10)


def test_issue_reproduction_keeps_the_index():
    b = next(iter(DataLoader(WithIndex(Subset(_base(), list(range(50, 100)))), batch_size=4)))
    assert len(b) == 3
    torch.testing.assert_close(b[-1], torch.arange(4))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["subset", "nested_subset", "concat", "batched_fetch", "subset_of_batched"])
def test_index_is_the_position_in_the_wrapped_dataset(kind, workers):
    """Every item of a shuffled epoch carries its own position: ``x`` (10 x the base index) must be
    the wrapped dataset's ``x`` at ``index``."""
    if kind == "subset":
        data = Subset(_base(), list(range(99, -1, -3)))
    elif kind == "nested_subset":
        data = Subset(Subset(_base(), list(range(10, 100))), list(range(80, 0, -2)))
    elif kind == "concat":
        data = ConcatDataset([Subset(_base(), list(range(60, 100))), Subset(_base(), list(range(0, 30)))])
    elif kind == "batched_fetch":
        data = BatchedFetch(40)
    else:
        data = Subset(BatchedFetch(60), list(range(59, 0, -2)))
    loader = DataLoader(WithIndex(data), batch_size=7, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert len(batch) == 3
        x, y, idx = batch
        expected = torch.stack([data[int(i)][0] for i in idx])
        torch.testing.assert_close(x, expected)
        torch.testing.assert_close(y, torch.stack([torch.as_tensor(data[int(i)][1]) for i in idx]))
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(data)))


def test_batched_fetch_of_the_wrapped_dataset_is_kept():
    data = BatchedFetch(20)
    batch = next(iter(DataLoader(WithIndex(data), batch_size=5)))
    assert data.batched_calls == 1 and batch[-1].tolist() == [0, 1, 2, 3, 4]


def test_dict_items_get_an_index_key():
    class Dicts(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"image": torch.full((2,), float(i)), "label": i % 2}

    batch = next(iter(DataLoader(WithIndex(Subset(Dicts(), [5, 3, 1])), batch_size=3)))
    assert batch["index"].tolist() == [0, 1, 2] and batch["image"][:, 0].tolist() == [5.0, 3.0, 1.0]


def test_no_attribute_forwarding_but_classes():
    """Forwarding let ``Subset.__getitems__`` (and ``indices``) pose as the wrapper's own."""
    sub = Subset(_base(), [1, 2, 3])
    sub.classes = [str(c) for c in range(10)]
    wrapped = WithIndex(sub)
    assert wrapped.classes == sub.classes and dataset_classes(wrapped) == sub.classes
    assert not hasattr(wrapped, "indices")
    assert WithIndex.__getitems__ is not Subset.__getitems__


def test_split_keeps_classes_and_disjoint_parts():
    ds = _base()
    ds.classes = [str(c) for c in range(10)]
    train, val = split_train_val(ds, 0.2, seed=3)
    assert set(train.indices).isdisjoint(val.indices) and len(train) + len(val) == 100
    assert train.classes == ds.classes and val.classes == ds.classes


def test_no_class_in_kdkit_or_the_plugins_forwards_attributes_but_the_hook_stand_in():
    """The audit, kept: a class with ``__getattr__`` can pose as any protocol its target speaks.
    Three are allowed: the hook relay stand-in of unit tests, which refuses dunder names, the lazy
    module proxy, which must behave exactly like the module it stands for (it wraps no dataset), and
    the frozen config, whose attributes are its own keys (it wraps nothing; dunder names refused)."""
    import ast
    from pathlib import Path

    from kdkit.engine.context import _NoHooks

    root = Path(__file__).resolve().parents[2]
    found = set()
    for path in [*(root / "kdkit").rglob("*.py"), *(root / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for f in node.body):
                found.add(f"{path.relative_to(root).as_posix()}:{node.name}")
    assert found == {"kdkit/engine/context.py:_NoHooks", "kdkit/lazy.py:_LazyModule",
                     "kdkit/config/view.py:FrozenConfig"}
    assert not hasattr(_NoHooks(), "__getitems__") and _NoHooks().kdkit_before_epoch(trainer=None, epoch=0) == []
