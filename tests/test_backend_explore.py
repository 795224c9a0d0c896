"""The explore backend (backend/mapping/explore.py, backend/foundation/explore.py): a view's
prompt maps equal rsvl:query's, for an rsvl model (dense engine, native and coarser steps)
and for a pretrained checkpoint (tile and token resolution: the windows covering a pixel),
and the ``rsvl explore`` command."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.io.raster import LayerSpec


def _box(grid, rows, cols):
    t = grid.transform
    x0, y0 = t * (cols[0], rows[0])
    x1, y1 = t * (cols[1], rows[1])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


@pytest.mark.parametrize("resolution", ["tile", "token"])
def test_checkpoint_view_equals_query(rgb_checkpoint, resolution, tmp_path):
    ckpt, preset, scene, _arch = rgb_checkpoint
    layers = [LayerSpec(scene, "ms")]
    api.query(ckpt, layers, ["water", "forest"], output_similarity=str(tmp_path / "q.tif"), preset=preset,
              tile_size=32, stride=16, resolution=resolution, device="cpu")
    with rasterio.open(tmp_path / "q.tif") as ds:
        ref = ds.read()
    with api.open_explorer(ckpt, layers, preset=preset, tile_size=32, stride=16, resolution=resolution,
                           device="cpu") as ex:
        assert ex.kind == "checkpoint"
        view = ex.embed(_box(ex.grid, (2, 60), (5, 77)))
        assert view.window == (2, 5, 58, 72)
        sims = ex.prompts(view, ["water", "forest"])
        part = ref[:, 2:60, 5:77]
        assert np.array_equal(np.isnan(sims), np.isnan(part))
        assert np.nanmax(np.abs(sims - part)) < 2e-3
        assert view.emb.shape[0] < 0.1 * view.index.size  # one vector per cell of covering windows, not per pixel
        sim = ex.similar_to(view, [(30, 30)])
        assert sim[30, 30] == pytest.approx(1.0, abs=2e-3) and np.nanmax(sim) <= 1 + 2e-3


def test_rsvl_view_equals_query_and_cli(trained_model, tmp_path, cli):
    model_path, _result, layers = trained_model
    api.query(str(model_path), layers, ["water", "buildings"], output_similarity=str(tmp_path / "q.tif"),
              device="cpu")
    with rasterio.open(tmp_path / "q.tif") as ds:
        ref, grid_t = ds.read(), ds.transform
    with api.open_explorer(str(model_path), layers, device="cpu") as ex:
        view = ex.embed(_box(ex.grid, (3, 40), (6, 45)))
        assert np.nanmax(np.abs(ex.prompts(view, ["water", "buildings"]) - ref[:, 3:40, 6:45])) < 2e-3
        coarse = ex.embed(_box(ex.grid, (3, 40), (6, 45)), max_pixels=400)
        assert coarse.step == 2 and coarse.shape == (19, 20)
        assert np.nanmax(np.abs(ex.prompts(coarse, ["water"])[0] - ref[0, 3:40:2, 6:45:2])) < 2e-3
    x, y = grid_t * (10.5, 12.5)
    out = tmp_path / "explore.tif"
    res = cli("explore", "-m", model_path, "--hsi", layers[0].path, "--lidar", layers[1].path, "--prompt", "water",
              "--similar-to", f"{x},{y}", "--output-similarity", out, "--device", "cpu", "--cache-dir",
              tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "prompts: 1 in" in res.stdout and "similar to" in res.stdout
    with rasterio.open(out) as ds:
        got = ds.read()
        assert ds.descriptions[0] == "water" and ds.descriptions[1].startswith("similar to")
    assert np.nanmax(np.abs(got[0] - ref[0])) < 2e-3 and got[1, 12, 10] == pytest.approx(1.0, abs=2e-3)
    again = cli("explore", "-m", model_path, "--hsi", layers[0].path, "--lidar", layers[1].path, "--prompt", "water",
                "--output-similarity", tmp_path / "again.tif", "--device", "cpu", "--cache-dir", tmp_path / "cache")
    assert again.returncode == 0 and "(from the cache)" in again.stdout, again.stdout + again.stderr
    bad = cli("explore", "-m", model_path, "--hsi", layers[0].path, "--lidar", layers[1].path, "--prompt", "water",
              "--output-similarity", tmp_path / "x.tif", "--extent", "1,2,3")
    assert bad.returncode == 2 and "--extent takes 4 comma-separated numbers" in bad.stderr
