"""Train/test splits (issue 13): random, checkerboard and buffered random blocks."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from rsvl.backend.data.splits import split_codes
from rsvl.backend.errors import LabelError


def _codes(size=80, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(1, 4, (size, size)).astype(np.uint8)
    codes[rng.random((size, size)) < 0.3] = 0
    return codes


def test_random_split_is_stratified_and_complete():
    codes = _codes()
    first, second = split_codes(codes, 0.1, seed=3)
    assert not ((first > 0) & (second > 0)).any()
    assert np.array_equal(np.where(first > 0, first, second), codes)  # every labelled pixel on one side
    for c in (1, 2, 3):
        assert (first == c).sum() == round(0.1 * (codes == c).sum())
    again, _ = split_codes(codes, 0.1, seed=3)
    assert np.array_equal(first, again)


def test_checkerboard_keeps_training_and_test_on_opposite_squares():
    codes = _codes()
    first, second = split_codes(codes, 0.2, seed=0, mode="checkerboard", block_size=20)
    rows, cols = np.indices(codes.shape)
    dark = (rows // 20 + cols // 20) % 2 == 0
    assert (first > 0).any() and not (first[~dark] > 0).any()
    assert np.array_equal(second[~dark], codes[~dark]) and not (second[dark] > 0).any()
    for c in (1, 2, 3):
        assert (first == c).sum() == round(0.2 * (codes == c).sum())


def test_blocks_with_buffer_leave_no_test_pixel_next_to_training():
    codes = _codes()
    first, second = split_codes(codes, 0.25, seed=1, mode="blocks", block_size=10, buffer=5)
    labelled = (codes > 0).sum()
    assert 0.25 * labelled <= (first > 0).sum() < 0.25 * labelled + 100  # whole blocks, one past the target
    fr, fc = np.nonzero(first)
    sr, sc = np.nonzero(second)
    assert sr.size > 0
    distance = np.maximum(np.abs(sr[:, None] - fr[None]), np.abs(sc[:, None] - fc[None])).min(1)
    assert distance.min() > 5
    first_blocks = {(r // 10, c // 10) for r, c in zip(fr, fc)}
    assert not first_blocks & {(r // 10, c // 10) for r, c in zip(sr, sc)}


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "diagonal"}, "MODE must be one of"), ({"fraction": 1.0}, "FRACTION must be between 0 and 1"),
    ({"mode": "blocks", "block_size": 0}, "BLOCK_SIZE"), ({"buffer": -1}, "BUFFER")])
def test_bad_split_parameters_are_named(kwargs, message):
    args = {"fraction": 0.1, "seed": 0, **kwargs}
    with pytest.raises(LabelError, match=message):
        split_codes(_codes(20), **args)


def test_cli_split_writes_spatial_maps(cli, scene, tmp_path):
    out = cli("split", "--labels", scene.labels, "--fraction", "0.3", "--mode", "checkerboard", "--block-size", "8",
              "--first", tmp_path / "a.tif", "--second", tmp_path / "b.tif")
    assert out.returncode == 0, out.stderr
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b, \
            rasterio.open(scene.labels) as ref:
        first, second, codes = a.read(1), b.read(1), ref.read(1)
        assert a.colormap(1)[2][:3] == ref.colormap(1)[2][:3]
    rows, cols = np.indices(codes.shape)
    dark = (rows // 8 + cols // 8) % 2 == 0
    assert not (first[~dark] > 0).any() and np.array_equal(second[~dark], codes[~dark])
