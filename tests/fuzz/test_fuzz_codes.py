"""Fuzz `kdkit encode --features` and `kdkit search`: `.npy` arrays and `.npy.json` sidecars.

The only outcomes allowed: the command succeeds with a result of the right shape, or it raises a
one-line KdkitError (which the CLI prints and exits 2 with).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
import pytest
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kdkit.commands import encode, search
from kdkit.errors import KdkitError

pytestmark = pytest.mark.fuzz
budget = family_settings(4)  # the four tests share the family's budget


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


FEATURES = _npy_bytes(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
CODES = _npy_bytes(np.random.default_rng(1).integers(0, 256, (6, 2), dtype=np.uint8))
SIDECAR = json.dumps({"format": "kdkit-codes-1", "count": 6, "bits": 16, "indices": [0, 1, 2, 3, 4, 5]}).encode()

# Any numpy array a user might save: every scalar kind, objects, odd shapes, both memory orders.
_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=17)
any_array = st.one_of(
    hnp.arrays(dtype=st.one_of(hnp.scalar_dtypes(), hnp.array_dtypes(max_size=2)), shape=_shapes),
    hnp.arrays(dtype=object, shape=_shapes, elements=st.one_of(st.integers(), st.floats(), st.text(max_size=3))),
)


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _kdkit_error_or(run) -> bool:
    """Run; True when it succeeded, False on a one-line KdkitError; anything else propagates."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert run() == 0
    except KdkitError as exc:
        assert "\n" not in str(exc), str(exc)
        return False
    return True


def _encode(features: bytes, raw: np.ndarray | None = None) -> None:
    with scratch_dir() as d, time_limit():
        (d / "f.npy").write_bytes(features)
        out = d / "codes.npy"
        if _kdkit_error_or(lambda: encode.run(_parse(encode, ["--features", str(d / "f.npy"), "--out", str(out)]))):
            x = np.load(d / "f.npy") if raw is None else raw
            codes = np.load(out)
            assert codes.dtype == np.uint8 and codes.shape == (x.shape[0], x.shape[1] // 8)
            bits = x if x.dtype == np.bool_ else x >= 0
            np.testing.assert_array_equal(codes, np.packbits(bits, axis=1, bitorder="little"))


@budget
@given(features=mutated(FEATURES))
def test_encode_mutated_npy(features):
    _encode(features)


@budget
@given(array=any_array, fortran=st.booleans())
def test_encode_any_array(array, fortran):
    _encode(_npy_bytes(np.asfortranarray(array) if fortran else array), array)


def _search(db: bytes, queries: bytes, sidecar: bytes | None, k: int) -> None:
    with scratch_dir() as d, time_limit():
        (d / "db.npy").write_bytes(db)
        (d / "q.npy").write_bytes(queries)
        if sidecar is not None:
            (d / "db.npy.json").write_bytes(sidecar)
        argv = ["--db", str(d / "db.npy"), "--queries", str(d / "q.npy"), "-k", str(k), "--batch-size", "3",
                "--out", str(d / "r.npz")]
        if _kdkit_error_or(lambda: search.run(_parse(search, argv))):
            result = np.load(d / "r.npz")
            n_db, n_q = np.load(d / "db.npy").shape[0], np.load(d / "q.npy").shape[0]
            assert result["indices"].shape == result["distances"].shape == (n_q, min(k, n_db))
            assert ((result["indices"] >= 0) & (result["indices"] < max(n_db, 1))).all()


@budget
@given(db=st.one_of(st.just(CODES), mutated(CODES)), queries=st.one_of(st.just(CODES), mutated(CODES)),
       sidecar=st.one_of(st.none(), mutated(SIDECAR), st.binary(max_size=64)), k=st.integers(-2, 9))
def test_search_mutated_codes_and_sidecar(db, queries, sidecar, k):
    _search(db, queries, sidecar, k)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=4), max_leaves=12)


@budget
@given(db=any_array, queries=any_array, sidecar=json_values, k=st.integers(1, 20))
def test_search_any_arrays_and_json_sidecar(db, queries, sidecar, k):
    _search(_npy_bytes(db), _npy_bytes(queries), json.dumps(sidecar).encode(), k)
