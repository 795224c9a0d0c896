"""Layers that do not (fully) overlap the reference grid (issue 9, defect 2): no overlap
is an error naming both extents; outside a layer's coverage every output is nodata,
whether or not the layer has a nodata value."""

from __future__ import annotations

import pytest
import rasterio
from rasterio.transform import from_origin

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.io.raster import LayerSpec, RasterStack


def _shifted_lidar(shared_scene, tmp_path, helpers, dx_pixels):
    with rasterio.open(shared_scene.paths["lidar"]) as ds:
        data, t = ds.read(), ds.transform
    # no nodata value: outside its coverage nothing but the warp itself can tell
    shifted = from_origin(t.c + dx_pixels * t.a, t.f, t.a, -t.e)
    return helpers.write_raster(tmp_path / f"lidar_{dx_pixels}.tif", data, shifted, nodata=None)


def test_a_layer_300_km_away_is_refused_naming_both_extents(trained_model, shared_scene, tmp_path, helpers):
    model_path, _result, layers = trained_model
    far = _shifted_lidar(shared_scene, tmp_path, helpers, 30000)  # 300 km east at 10 m
    stack_layers = [layers[0], LayerSpec(str(far), "lidar")]
    with pytest.raises(InputError, match=r"lidar layer 'lidar_30000.tif' does not overlap the reference grid of "
                                         r"'hsi.tif': its extent is x 765000\.\.765480"):
        RasterStack(stack_layers)
    with pytest.raises(InputError, match="does not overlap"):
        api.classify(str(model_path), stack_layers, str(tmp_path / "c.tif"), device="cpu")
    assert not (tmp_path / "c.tif").exists()


def test_outside_a_layers_coverage_outputs_are_nodata(trained_model, shared_scene, tmp_path, helpers):
    model_path, _result, layers = trained_model
    half = _shifted_lidar(shared_scene, tmp_path, helpers, 24)  # covers the right half only
    out = tmp_path / "c.tif"
    api.classify(str(model_path), [layers[0], LayerSpec(str(half), "lidar")], str(out), device="cpu")
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    assert (classes[:, :24] == 0).all()  # no LiDAR there: nodata, not a confident class
    assert (classes[:, 26:] > 0).all()
