"""Fuzz the CIFAR pickles (kdkit/data/cifar.py, read through a restricted unpickler).

Outcomes allowed: a dataset whose images, labels and classes agree, or a one-line DataError.
Nothing in a pickle may run code: the globals a fuzzed pickle names are refused.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kdkit.data.cifar import CIFAR10Dataset, read_pickle
from kdkit.errors import KdkitError

pytestmark = pytest.mark.fuzz
budget = family_settings(3)  # the three tests share the family's budget

N = 3
_rng = np.random.default_rng(0)
# torchvision's files are Python 2 pickles (protocol 2, byte-string keys); protocol 4 covers newer writers
BATCH = {b"batch_label": b"testing batch 1 of 1", b"labels": [1, 0, 9],
         b"data": _rng.integers(0, 256, (N, 3072), dtype=np.uint8), b"filenames": [b"a.png", b"b.png", b"c.png"]}
META = {b"num_cases_per_batch": N, b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                                                    b"frog", b"horse", b"ship", b"truck"], b"num_vis": 3072}
SEEDS = {name: {protocol: pickle.dumps(obj, protocol=protocol) for protocol in (2, 4)}
         for name, obj in (("test_batch", BATCH), ("batches.meta", META))}


def _load(files: dict) -> None:
    with scratch_dir() as d, time_limit():
        folder = d / "cifar-10-batches-py"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        try:
            ds = CIFAR10Dataset("test", str(d), augment="none", normalize=False)
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert ds.images.dtype.is_floating_point is False and tuple(ds.images.shape[1:]) == (3, 32, 32)
        assert len(ds.targets) == ds.images.shape[0] and all(0 <= t < len(ds.classes) for t in ds.targets)
        assert all(isinstance(c, str) for c in ds.classes)
        if len(ds):
            x, y = ds[0]
            assert tuple(x.shape) == (3, 32, 32) and 0 <= y < len(ds.classes)


@budget
@given(name=st.sampled_from(sorted(SEEDS)), protocol=st.sampled_from([2, 4]), data=st.data())
def test_mutated_pickles(name, protocol, data):
    files = {n: SEEDS[n][protocol] for n in SEEDS}
    files[name] = data.draw(mutated(files[name]))
    _load(files)


keys = st.sampled_from([b"data", b"labels", b"label_names", "data", "labels", "label_names", b"coarse_labels"])
values = st.one_of(
    st.none(), st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=4),
    st.lists(st.one_of(st.integers(-3, 12), st.text(max_size=3), st.binary(max_size=3), st.floats(), st.none()),
             max_size=5),
    hnp.arrays(dtype=st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes()),
               shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8)),
    st.just(np.zeros((2, 3072), np.uint8)), st.just(np.zeros((1, 3072), np.float64)),
)


@budget
@given(batch=st.one_of(st.dictionaries(keys, values, max_size=4), values.map(lambda v: v)),
       meta=st.one_of(st.just(META), st.dictionaries(keys, values, max_size=3)))
def test_structured_pickles(batch, meta):
    base = dict(BATCH) if isinstance(batch, dict) else None
    if base is not None:
        base.update(batch)
    _load({"test_batch": pickle.dumps(base if base is not None else batch, protocol=2),
           "batches.meta": pickle.dumps(meta, protocol=2)})


@budget
@given(payload=mutated(pickle.dumps(BATCH, protocol=2)))
def test_read_pickle_refuses_or_returns_a_dict(payload):
    with scratch_dir() as d, time_limit():
        (d / "f").write_bytes(payload)
        try:
            entry = read_pickle(d / "f")
        except KdkitError as exc:
            assert "\n" not in str(exc), str(exc)
            return
        assert isinstance(entry, dict)
