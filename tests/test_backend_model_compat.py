"""A model file written before the backend was split into subpackages (rsvl 0.3.0, commit
9d290f8; tests/data/premove/make.py) still loads, and classifies its scene into the same class
map and similarity stack that version wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from rsvl.backend import api
from rsvl.backend.io.raster import LayerSpec
from rsvl.backend.models.modelfile import read_header

DATA = Path(__file__).parent / "data" / "premove"


def test_a_model_from_before_the_move_loads_and_maps_the_same(tmp_path):
    header = read_header(str(DATA / "model.safetensors"))
    assert [c.code for c in header.classes] and header.training["recipe"] == "spectral-spatial"
    layers = [LayerSpec(str(DATA / "hsi.tif"), "hsi"), LayerSpec(str(DATA / "dsm.tif"), "lidar")]
    api.classify(str(DATA / "model.safetensors"), layers, str(tmp_path / "classes.tif"),
                 similarity=str(tmp_path / "similarity.tif"), device="cpu")
    with rasterio.open(DATA / "classes.tif") as old, rasterio.open(tmp_path / "classes.tif") as new:
        np.testing.assert_array_equal(new.read(), old.read())
        assert new.colormap(1) == old.colormap(1) and new.descriptions == old.descriptions
    with rasterio.open(DATA / "similarity.tif") as old, rasterio.open(tmp_path / "similarity.tif") as new:
        np.testing.assert_allclose(new.read(), old.read(), atol=1e-5, equal_nan=True)
