"""Fuzz the JSONL manifest of the cross-modal datasets (`crossmodal_jsonl`, plugins/kdkit_soda).

Outcomes allowed: a dataset whose labels are a 0/1 matrix over the classes (string class names
only, at most MAX_CLASSES), or a one-line DataError naming the manifest.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from _mutate import family_settings, mutated, scratch_dir, time_limit
from hypothesis import given
from hypothesis import strategies as st

from kdkit.errors import KdkitError
from kdkit_soda import data as D

pytestmark = pytest.mark.fuzz
budget = family_settings(2)  # the two tests share the family's budget

MANIFEST = "".join(json.dumps(row) + "\n" for row in (
    {"image": "images/a.png", "text": "a red circle", "labels": ["circle"]},
    {"image": "/abs/b.jpg", "text": "two shapes", "labels": ["circle", "square"]},
    {"image": "c.png", "text": None, "labels": [0, 1]},
    {"image": "d.png", "text": "", "labels": []},
)).encode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)
labels = st.lists(st.one_of(st.integers(-2, 40), st.text(max_size=4), st.integers(), json_values), max_size=4)
rows = st.one_of(
    json_values,
    st.fixed_dictionaries({"image": st.one_of(st.text(max_size=8), json_values),
                           "text": st.one_of(st.none(), st.text(max_size=8), json_values),
                           "labels": st.one_of(labels, json_values)}),
)


def _load(manifest: bytes, classes) -> None:
    with scratch_dir() as d, time_limit():
        (d / "m.jsonl").write_bytes(manifest)
        for on_no_label in ("drop", "keep"):
            try:
                data = D.load_jsonl(d / "m.jsonl", classes=classes, on_no_label=on_no_label)
            except KdkitError as exc:
                assert "\n" not in str(exc), str(exc)
                continue
            assert data.labels.dtype == np.uint8 and set(np.unique(data.labels)) <= {0, 1}
            assert data.labels.shape == (len(data.images), len(data.classes)) and len(data.texts) == len(data)
            assert all(isinstance(c, str) for c in data.classes) and len(data.classes) <= D.MAX_CLASSES
            assert all(isinstance(t, str) for t in data.texts)


@budget
@given(manifest=mutated(MANIFEST), classes=st.sampled_from([None, ["circle", "square"]]))
def test_mutated_manifest(manifest, classes):
    _load(manifest, classes)


@budget
@given(lines=st.lists(rows, min_size=0, max_size=5), junk=st.sampled_from(["", "\n", "\r\n", " \n\n"]),
       classes=st.sampled_from([None, ["circle", "square"], []]))
def test_structured_manifest(lines, junk, classes):
    _load("".join(json.dumps(r) + junk for r in lines).encode(), classes)
