"""Two rsvl runs at once in one process (two QGIS background tasks) do not disturb each
other: the same outputs as one after the other (issue 9, concurrency)."""

from __future__ import annotations

import threading

import numpy as np
import rasterio

from rsvl.backend import api
from rsvl.backend.io.raster import gdal_cache_limit


def test_two_runs_in_parallel_threads_equal_sequential_runs(trained_model, shared_scene, tmp_path):
    model_path, _result, layers = trained_model
    prompts = ["water", "forest", "a building"]

    def classify(name):
        api.classify(str(model_path), layers, str(tmp_path / f"{name}.tif"), confidence=str(tmp_path / f"{name}_p.tif"),
                     device="cpu", tile_size=16)

    def query(name):
        api.query(str(model_path), layers, prompts, str(tmp_path / f"{name}.tif"), device="cpu", tile_size=16)

    classify("c_seq")
    query("q_seq")
    from osgeo import gdal

    cache_before = gdal.GetCacheMax()
    errors = []

    def guarded(fn, name):
        try:
            for i in range(3):
                fn(f"{name}{i}")
        except BaseException as exc:  # surfaces in the main thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(classify, "c_par")),
               threading.Thread(target=guarded, args=(query, "q_par"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert gdal.GetCacheMax() == cache_before  # the shared cache cap came back once both left
    for seq, par in [("c_seq", "c_par"), ("c_seq_p", "c_par{}_p"), ("q_seq", "q_par")]:
        with rasterio.open(tmp_path / f"{seq}.tif") as ds:
            expected = ds.read()
        for i in range(3):
            name = par.format(i) if "{}" in par else f"{par}{i}"
            with rasterio.open(tmp_path / f"{name}.tif") as ds:
                np.testing.assert_array_equal(ds.read(), expected, err_msg=name)
    with gdal_cache_limit(1):
        assert gdal.GetCacheMax() <= 2**20
    assert gdal.GetCacheMax() == cache_before
