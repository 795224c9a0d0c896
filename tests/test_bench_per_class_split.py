"""The accuracy bench's per-class split (bench/accuracy.py): N pixels of each class train,
and a class too small for N trains on all of it but one or, with ``small="half"``, on at
most half of it."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.transform import from_origin


@pytest.fixture()
def labels(tmp_path, helpers):
    codes = np.zeros((20, 20), np.uint8)
    codes.ravel()[:11] = 1  # a class of 11 pixels
    codes.ravel()[11:111] = 2  # one of 100
    codes.ravel()[111:114] = 3  # one of 3
    path = helpers.write_labels(tmp_path / "labels.tif", codes, from_origin(500000, 5000000, 10, 10))
    return str(path), codes


def _split(accuracy_bench, labels, tmp_path, n, small):
    import rasterio

    first, second = str(tmp_path / f"train_{small}.tif"), str(tmp_path / f"test_{small}.tif")
    accuracy_bench.per_class_split(labels, n, 0, first, second, small=small)
    with rasterio.open(first) as a, rasterio.open(second) as b:
        return a.read(1), b.read(1)


@pytest.mark.parametrize("small, expected", [("all-but-one", {1: (10, 1), 2: (20, 80), 3: (2, 1)}),
                                             ("half", {1: (5, 6), 2: (20, 80), 3: (1, 2)})])
def test_per_class_split_counts(accuracy_bench, labels, tmp_path, small, expected):
    path, codes = labels
    train, test = _split(accuracy_bench, path, tmp_path, 20, small)
    assert not np.any((train > 0) & (test > 0)), "a pixel both trains and tests"
    assert np.array_equal(np.where(train > 0, train, test), codes), "the split loses or relabels pixels"
    assert {c: (int((train == c).sum()), int((test == c).sum())) for c in (1, 2, 3)} == expected


def test_half_draws_the_same_large_classes(accuracy_bench, labels, tmp_path):
    """Only classes too small for N differ between the two rules: the same seed draws the
    same pixels of the others, so runs under either rule are paired."""
    path, _codes = labels
    a, _ = _split(accuracy_bench, path, tmp_path, 20, "all-but-one")
    b, _ = _split(accuracy_bench, path, tmp_path, 20, "half")
    assert np.array_equal(a == 2, b == 2)


def test_per_class_split_rejects_an_unknown_rule(accuracy_bench, labels, tmp_path):
    with pytest.raises(ValueError, match="small must be one of"):
        accuracy_bench.per_class_split(labels[0], 5, 0, str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), small="third")
