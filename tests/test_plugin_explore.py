"""The rsvl Explore panel's logic in a real QGIS (pytest-qgis): the view from the canvas
extent and the pixel budget, the embedding cache (hits, eviction, disk), prompts and clicks
equal to rsvl:query's numbers, the threshold restyling without recomputing, the best-prompt
map, training polygons with their class and CRS (and rsvl:train taking them), and export."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from qgis.core import QgsPointXY, QgsProject, QgsRasterLayer, QgsRectangle, QgsSettings

from rsvl.backend import api
from rsvl.backend.io.raster import Grid
from rsvl.backend.mapping.explore import EmbeddingCache, View


@pytest.fixture(scope="module")
def query_maps(trained_model, tmp_path_factory):
    model_path, _result, layers = trained_model
    out = tmp_path_factory.mktemp("explore") / "query.tif"
    api.query(str(model_path), layers, ["water", "forest"], output_similarity=str(out), device="cpu")
    with rasterio.open(out) as ds:
        return ds.read()


@pytest.fixture
def panel(plugin, trained_model, qgis_iface, tmp_path):
    from rsvl.plugin.explore.panel import ExplorePanel
    from rsvl.plugin.explore.session import ExploreSession

    model_path, _result, layers = trained_model
    project = QgsProject.instance()
    project.clear()
    raster = {}
    for spec in layers:
        raster[spec.modality] = QgsRasterLayer(spec.path, spec.modality, "gdal")
        project.addMapLayer(raster[spec.modality])
    project.setCrs(raster["hsi"].crs())
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(raster["hsi"].crs())
    QgsSettings().remove("rsvl/explore")  # the defaults, whatever an earlier panel saved
    panel = ExplorePanel(qgis_iface, session=ExploreSession(folder=str(tmp_path / "layers")))
    panel.model.setFilePath(str(model_path))
    yield panel, raster
    panel.session.close()
    project.clear()


def _extent(layer: QgsRasterLayer, rows, cols) -> QgsRectangle:
    """The map rectangle of pixel rows r0..r1 and columns c0..c1 of ``layer``."""
    e, px = layer.extent(), layer.rasterUnitsPerPixelX()
    return QgsRectangle(e.xMinimum() + cols[0] * px, e.yMaximum() - rows[1] * px,
                        e.xMinimum() + cols[1] * px, e.yMaximum() - rows[0] * px)


def test_layers_are_proposed_by_the_models_modalities_and_band_counts(panel):
    panel, raster = panel
    assert panel.layer_boxes["hsi"].currentLayer() is raster["hsi"]
    assert panel.layer_boxes["lidar"].currentLayer() is raster["lidar"]
    assert panel.layer_boxes["sar"].isHidden() and panel.layer_boxes["ms"].isHidden()


def test_view_from_extent_and_budget_and_the_cache(panel):
    panel, raster = panel
    assert panel.embed(_extent(raster["hsi"], (8, 40), (4, 36)), wait=True), panel.status.text()
    view = panel.session.view
    assert view.window == (8, 4, 32, 32) and view.step == 1 and view.shape == (32, 32) and not view.note
    calls = []
    engine = panel.session.explorer.embedder
    original = engine.embed
    engine.embed = lambda *a, **k: calls.append(1) or original(*a, **k)
    hits = panel.session.cache.hits
    assert panel.embed(_extent(raster["hsi"], (8, 40), (4, 36)), wait=True)
    assert panel.session.cache.hits == hits + 1 and not calls and "from the cache" in panel.status.text()
    panel.budget.setValue(0.001)  # 1000 px: 32 x 32 is embedded every 2nd pixel
    assert panel.embed(_extent(raster["hsi"], (8, 40), (4, 36)), wait=True)
    view = panel.session.view
    assert view.step == 2 and view.shape == (16, 16) and "one pixel in 2" in panel.status.text() and calls
    assert view.grid.transform.a == 2 * raster["hsi"].rasterUnitsPerPixelX()


def test_the_cache_keeps_its_budget_and_reads_views_back_from_disk(tmp_path):
    from affine import Affine
    from rasterio.crs import CRS

    def view(key, n):
        return View(key, Grid(CRS.from_epsg(32633), Affine.identity(), n, 1), (0, 0, 1, n), 1,
                    np.arange(n, dtype=np.int32)[None], torch.zeros((n, 8), dtype=torch.float16))

    cache = EmbeddingCache(budget=3 * view("x", 10).nbytes, folder=str(tmp_path / "cache"))
    for k in "abcd":
        cache.put(view(k, 10))
    assert list(cache.views) == ["b", "c", "d"] and cache.nbytes <= cache.budget
    cache.put(view("big", 100))  # larger than the budget: never kept in memory
    assert "big" not in cache.views and cache.nbytes <= cache.budget
    again = cache.get("a")  # evicted from memory, read back from disk
    assert again is not None and again.emb.shape == (10, 8) and list(cache.views)[-1] == "a"
    assert EmbeddingCache(folder=str(tmp_path / "nothing")).get("a") is None


def test_prompts_equal_query_and_the_threshold_restyles_without_recomputing(panel, query_maps):
    panel, raster = panel
    assert panel.embed(_extent(raster["hsi"], (0, 48), (0, 48)), wait=True)
    panel.prompt.setText("water")
    panel.ask()
    shown = panel.session.shown
    first_id = shown.layer.id()
    assert shown.layer.name() == "rsvl: water"
    assert QgsProject.instance().layerTreeRoot().findGroup("rsvl Explore").findLayer(shown.layer.id())
    with rasterio.open(shown.path) as ds:
        on_disk = ds.read(1)
    assert np.nanmax(np.abs(on_disk - query_maps[0])) < 2e-3
    assert np.array_equal(np.isnan(on_disk), np.isnan(query_maps[0]))
    calls = []
    explorer = panel.session.explorer
    original = explorer.prompts
    explorer.prompts = lambda *a, **k: calls.append(1) or original(*a, **k)
    panel.slider.setValue(25)
    renderer = shown.layer.renderer()
    assert renderer.classificationMin() == pytest.approx(0.25) and not calls
    assert renderer.shader().rasterShaderFunction().clip()  # below the threshold: transparent
    # several prompts: the best prompt per pixel, named in the legend
    panel.prompt.setText("water; forest")
    panel.ask()
    best = panel.session.shown
    assert [c.label for c in best.layer.renderer().classes()] == ["water", "forest"]
    with rasterio.open(best.path) as ds:
        codes = ds.read(1)
    ref = np.where(query_maps.max(axis=0) >= 0.25, query_maps.argmax(axis=0) + 1, 0)
    assert (codes == ref).mean() > 0.99
    assert QgsProject.instance().mapLayer(first_id) is None  # the earlier map was replaced


def test_click_area_polygons_and_export(panel, trained_model, shared_scene, tmp_path):
    panel, raster = panel
    assert panel.embed(_extent(raster["hsi"], (0, 48), (0, 48)), wait=True)
    e, px = raster["hsi"].extent(), raster["hsi"].rasterUnitsPerPixelX()
    rows, cols = np.nonzero(shared_scene.truth[5:-5, 5:-5] == 1)  # a water pixel
    r, c = int(rows[0]) + 5, int(cols[0]) + 5
    point = QgsPointXY(e.xMinimum() + (c + 0.5) * px, e.yMaximum() - (r + 0.5) * px)
    panel.clicked(point)
    shown = panel.session.shown
    assert shown.kind == "click" and shown.sims[0, r, c] == pytest.approx(1.0, abs=2e-3)
    panel.slider.setValue(90)
    panel.class_name.setText("like the click")
    labels = tmp_path / "labels.gpkg"
    panel.labels_file.setFilePath(str(labels))
    panel.save_polygons()
    assert "polygon(s) of 'like the click' added" in panel.status.text(), panel.status.text()
    from osgeo import ogr, osr

    ds = ogr.Open(str(labels))
    lyr = ds.GetLayerByName("labels")
    assert {f.GetField("class") for f in lyr} == {"like the click"} and lyr.GetFeatureCount() >= 1
    srs = osr.SpatialReference()
    srs.ImportFromWkt(raster["hsi"].crs().toWkt())
    assert lyr.GetSpatialRef().IsSame(srs)
    ds = None
    # a second class from a prompt, then rsvl:train takes the polygons
    panel.slider.setValue(20)
    panel.prompt.setText("forest")
    panel.ask()
    panel.class_name.setText("forest")
    panel.save_polygons()
    model_path, _result, layers = trained_model
    res = api.train(layers, str(labels), str(tmp_path / "from_explore.safetensors"), class_field="class", epochs=2,
                    patch_size=5, device="cpu")
    assert sorted(c.name for c in res.classes) == ["forest", "like the click"]
    assert panel.session.above_threshold()[shared_scene.truth == 2].mean() > 0.8  # "forest" finds the forest
    # export: rsvl:query's similarity GeoTIFF
    out = tmp_path / "forest.tif"
    panel.export_file.setFilePath(str(out))
    panel.export()
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("forest",) and ds.crs.to_epsg() == 32633
        assert np.allclose(ds.read(1), panel.session.shown.sims[0], equal_nan=True)


def test_errors_are_said_in_the_panel(panel):
    panel, raster = panel
    panel.prompt.setText("water")
    panel.clicked(QgsPointXY(0, 0))
    assert "embed the view first" in panel.status.text()
    panel.layer_boxes["lidar"].setLayer(None)
    assert not panel.embed(wait=True)
    assert "the model needs a LiDAR / elevation input" in panel.status.text(), panel.status.text()


def test_a_drawn_area_is_the_example_and_cuts_the_polygons(panel, tmp_path):
    from qgis.core import QgsGeometry

    panel, raster = panel
    assert panel.embed(_extent(raster["hsi"], (0, 48), (0, 48)), wait=True)
    area = QgsGeometry.fromRect(_extent(raster["hsi"], (10, 20), (10, 20)))
    panel.area_drawn(area)
    shown = panel.session.shown
    assert shown.names == ["similar to the drawn area"] and np.isfinite(shown.sims).all()
    panel.slider.setValue(-100)  # everything above the threshold: the polygons are the drawn area
    panel.only_area.setChecked(True)
    panel.class_name.setText("patch")
    panel.labels_file.setFilePath(str(tmp_path / "area.gpkg"))
    panel.save_polygons()
    from osgeo import ogr

    ds = ogr.Open(str(tmp_path / "area.gpkg"))
    total = sum(f.GetGeometryRef().GetArea() for f in ds.GetLayerByName("labels"))
    assert total == pytest.approx(area.area(), rel=1e-6)


def test_a_pretrained_checkpoint_in_the_panel(plugin, rgb_checkpoint, qgis_iface, tmp_path):
    from rsvl.plugin.explore.panel import ExplorePanel
    from rsvl.plugin.explore.session import ExploreSession

    ckpt, _preset, scene, arch = rgb_checkpoint
    QgsSettings().remove("rsvl/explore")
    project = QgsProject.instance()
    project.clear()
    layer = QgsRasterLayer(scene, "rgb", "gdal")
    project.addMapLayer(layer)
    qgis_iface.mapCanvas().setDestinationCrs(layer.crs())
    panel = ExplorePanel(qgis_iface, session=ExploreSession(folder=str(tmp_path / "layers")))
    try:
        panel.model.setFilePath(ckpt)
        assert panel.kind == "checkpoint" and not panel.preset.isHidden()
        assert panel.layer_boxes["ms"].currentLayer() is layer and panel.layer_boxes["hsi"].isHidden()
        panel.preset.setCurrentText("open_clip")
        assert not panel.embed(layer.extent(), wait=True) and "needs the checkpoint's open_clip architecture" in \
            panel.status.text()
        panel.arch.setText(f"local-dir:{arch}")
        assert panel.embed(layer.extent(), wait=True), panel.status.text()
        panel.prompt.setText("water")
        panel.ask()
        shown = panel.session.shown
        assert shown.layer.name() == "rsvl: water" and np.isnan(shown.sims[0, :4]).all()
        assert np.isfinite(shown.sims[0, 4:]).all()
    finally:
        panel.session.close()
        project.clear()


def test_budget_and_cache_settings_persist_and_bound_the_cache(panel, tmp_path, monkeypatch):
    from rsvl.plugin.explore.panel import ExplorePanel
    from rsvl.plugin.explore.session import ExploreSession

    panel, raster = panel
    monkeypatch.setenv("RSVL_CACHE_DIR", str(tmp_path / "cache"))
    panel.budget.setValue(2.5)
    panel.cache_gib.setValue(0.5)
    panel.cache_disk.setChecked(True)
    assert panel.session.cache.budget == 2**29 and panel.session.cache.folder == str(tmp_path / "cache" / "explore")
    assert panel.embed(_extent(raster["hsi"], (0, 16), (0, 16)), wait=True)
    assert list((tmp_path / "cache" / "explore").glob("view-*.safetensors"))
    other = ExplorePanel(panel.iface, session=ExploreSession(folder=str(tmp_path / "other")))
    assert other.budget.value() == 2.5 and other.cache_gib.value() == 0.5 and other.cache_disk.isChecked()
    other.cache_gib.setValue(0.1)
    assert other.session.cache.budget == int(0.1 * 2**30)
    QgsSettings().remove("rsvl/explore")
