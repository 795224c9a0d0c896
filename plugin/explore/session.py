"""What the rsvl Explore panel does, without its widgets: an :class:`ExploreSession` holds a
backend :class:`~rsvl.backend.mapping.explore.Explorer` (model and layers opened once), the
current view's embeddings, and the map layers it shows.

- :meth:`ExploreSession.open` opens the model on the chosen layers (rsvl:query's checks);
- :meth:`ExploreSession.view_extent` turns the canvas extent (or a drawn rectangle, in the
  project CRS) into the view on the layers' grid; :meth:`embed_task` embeds it in a
  :class:`~qgis.core.QgsTask` with progress and Cancel (the cache answers views seen before);
- :meth:`ask` (prompts) and :meth:`click` (pixels or a drawn polygon) compute similarity maps
  from the view's embeddings and show them as one temporary layer, styled by
  :func:`similarity_renderer`: pseudocolour above the threshold, transparent below; several
  prompts show the best prompt per pixel, its legend naming them;
- :meth:`set_threshold` restyles the layer without recomputing anything;
- :meth:`save_polygons` turns the area above the threshold into training polygons of a class
  (a GeoPackage layer that rsvl:train takes with CLASS_FIELD ``class``), :meth:`export` writes
  the current map as a GeoTIFF like rsvl:query's.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from qgis.core import (
    QgsColorRampShader,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRectangle,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
    QgsTask,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

LAYER_GROUP = "rsvl Explore"
RAMP = "Viridis"


@dataclass
class Shown:
    """The similarity map on show: (K, h, w) similarities of ``names`` (one prompt, several
    prompts, or a clicked pixel/area), and its layer."""

    sims: np.ndarray
    names: List[str]
    kind: str  # "prompt" or "click"
    layer: Optional[QgsRasterLayer] = None
    path: str = ""


def similarity_renderer(layer: QgsRasterLayer, threshold: float, top: float, band: int = 1):
    """Pseudocolour from ``threshold`` to ``top``; values below the threshold (and nodata)
    are transparent (the shader clips them)."""
    top = max(top, threshold + 1e-3)
    shader = QgsColorRampShader(threshold, top, QgsStyle.defaultStyle().colorRamp(RAMP),
                                QgsColorRampShader.Interpolated, QgsColorRampShader.Continuous)
    shader.classifyColorRamp(band=band)  # the ramp's own stops, from threshold to top
    shader.setClip(True)
    raster_shader = QgsRasterShader()
    raster_shader.setRasterShaderFunction(shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, raster_shader)
    renderer.setClassificationMin(threshold)
    renderer.setClassificationMax(top)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return renderer


class ExploreSession:
    def __init__(self, project: Optional[QgsProject] = None, cache=None, folder: Optional[str] = None):
        from ...backend.mapping.explore import EmbeddingCache

        self.project = project or QgsProject.instance()
        self.cache = cache if cache is not None else EmbeddingCache()
        self.folder = folder or tempfile.mkdtemp(prefix="rsvl-explore-")
        self.explorer = None
        self.view = None
        self.shown: Optional[Shown] = None
        self.threshold = 0.0
        self._serial = 0

    # -- model and layers ----------------------------------------------------------------
    def open(self, model_path: str, layers: Sequence[Tuple[str, QgsRasterLayer]], device: str = "auto",
             force: bool = False, **checkpoint) -> None:
        """Open ``model_path`` (an rsvl model, or a pretrained checkpoint with ``checkpoint``
        options: preset, tile_size, resolution, …) on (modality, raster layer) pairs:
        rsvl:query's checks and messages (RsvlError)."""
        from ...backend import api
        from ...backend.io.raster import LayerSpec
        from ..algorithms.base import raster_path

        specs = [LayerSpec(raster_path(layer, f"INPUT_{m.upper()}"), m) for m, layer in layers]
        self.close()
        self.explorer = api.open_explorer(model_path, specs, device=device, force=force, cache=self.cache,
                                          **checkpoint)

    def close(self) -> None:
        if self.explorer is not None:
            self.explorer.close()
        self.explorer = self.view = None

    @property
    def crs(self) -> QgsCoordinateReferenceSystem:
        return QgsCoordinateReferenceSystem.fromWkt(self.explorer.grid.crs.to_wkt())

    # -- the view --------------------------------------------------------------------------
    def view_extent(self, extent: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> Tuple[float, float, float, float]:
        """``extent`` (canvas or drawn rectangle, in ``crs``) in the layers' grid CRS."""
        rect = extent
        if crs.isValid() and crs != self.crs:
            rect = QgsCoordinateTransform(crs, self.crs, self.project).transformBoundingBox(extent)
        return rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()

    def embed_task(self, extent, max_pixels: int, on_done: Callable = None) -> QgsTask:
        """A QgsTask (not started) that embeds the view of ``extent`` (grid CRS) and calls
        ``on_done(session, ok, error)`` on the main thread."""
        session = self

        class EmbedTask(QgsTask):
            def __init__(self):
                super().__init__("rsvl Explore: embedding the view", QgsTask.CanCancel)
                self.view, self.error = None, None

            def run(self):  # worker thread
                try:
                    self.view = session.explorer.embed(extent, max_pixels=max_pixels,
                                                       progress=lambda f, _m: self.setProgress(100 * f),
                                                       is_cancelled=self.isCanceled)
                    return True
                except Exception as exc:  # noqa: BLE001 (reported in the panel)
                    self.error = str(exc)
                    return False

            def finished(self, ok):  # main thread
                if ok:
                    session.view = self.view
                if on_done is not None:
                    on_done(session, ok, self.error if not self.isCanceled() else "cancelled")

        return EmbedTask()

    # -- maps ------------------------------------------------------------------------------
    def ask(self, prompts: Sequence[str], use_template: bool = True) -> Shown:
        """Similarity of the view to the prompts, shown as the panel's layer."""
        prompts = [p.strip() for p in prompts if p and p.strip()]
        sims = self.explorer.prompts(self._view(), prompts, use_template)
        return self._show(Shown(sims, prompts, "prompt"))

    def click(self, points: Sequence[QgsPointXY] = (), crs: Optional[QgsCoordinateReferenceSystem] = None,
              area: Optional[QgsGeometry] = None) -> Shown:
        """Similarity of the view to the mean embedding of the clicked points or of the
        view pixels inside ``area`` (a drawn polygon); both in ``crs`` (the project's)."""
        view = self._view()
        to_grid = None
        if crs is not None and crs.isValid() and crs != self.crs:
            to_grid = QgsCoordinateTransform(crs, self.crs, self.project)
        pixels, mask = [], None
        for p in points:
            q = to_grid.transform(p) if to_grid else p
            pixels.append(view.pixel_of(q.x(), q.y()))
        if area is not None:
            geom = QgsGeometry(area)
            if to_grid:
                geom.transform(to_grid)
            mask = self._rasterise(geom)
        sims = self.explorer.similar_to(view, pixels, mask)[None]
        name = "similar to the drawn area" if area is not None else f"similar to {len(pixels)} clicked pixel(s)"
        return self._show(Shown(sims, [name], "click"))

    def _rasterise(self, geom: QgsGeometry) -> np.ndarray:
        import json

        from rasterio import features

        view = self.view
        return features.rasterize([json.loads(geom.asJson())], out_shape=view.shape, transform=view.grid.transform,
                                  all_touched=False).astype(bool)

    def _view(self):
        if self.explorer is None:
            raise RuntimeError("choose a model and its layers first")
        if self.view is None:
            raise RuntimeError("embed the view first")
        return self.view

    def _show(self, shown: Shown) -> Shown:
        from ...backend.mapping.explore import write_similarity

        self._serial += 1
        shown.path = os.path.join(self.folder, f"explore-{self._serial}.tif")
        if len(shown.names) == 1:
            write_similarity(self.view, shown.sims, shown.names, shown.path, compress=False)
            layer = QgsRasterLayer(shown.path, f"rsvl: {shown.names[0]}", "gdal")
        else:
            self._write_best(shown)
            layer = QgsRasterLayer(shown.path, f"rsvl: best of {len(shown.names)} prompts", "gdal")
        if not layer.isValid():
            raise RuntimeError(f"the similarity layer {shown.path} cannot be read")
        old = self.shown.layer if self.shown is not None else None
        self.shown = shown
        shown.layer = layer
        self._style()
        root = self.project.layerTreeRoot()
        group = root.findGroup(LAYER_GROUP) or root.insertGroup(0, LAYER_GROUP)
        self.project.addMapLayer(layer, False)
        group.insertLayer(0, layer)
        if old is not None and self.project.mapLayer(old.id()) is not None:
            self.project.removeMapLayer(old.id())
        return shown

    def _write_best(self, shown: Shown) -> None:
        """The best prompt per pixel (codes 1..K, 0 where the best is below the threshold or
        nodata) as a class raster: written again from the similarities in memory when the
        threshold moves."""
        import rasterio

        from ...backend.io.raster import gtiff_profile

        sims = np.nan_to_num(shown.sims, nan=-np.inf)
        best, arg = sims.max(axis=0), sims.argmax(axis=0)
        codes = np.where(best >= self.threshold, arg + 1, 0).astype(np.uint8)
        profile = {k: v for k, v in gtiff_profile(self.view.grid, 1, "uint8", 0).items()
                   if k not in ("compress", "predictor")}
        with rasterio.open(shown.path, "w", **profile) as dst:
            dst.write(codes, 1)

    def _style(self) -> None:
        shown = self.shown
        layer = shown.layer
        if len(shown.names) == 1:
            top = float(np.nanmax(shown.sims)) if np.isfinite(shown.sims).any() else self.threshold + 1
            similarity_renderer(layer, self.threshold, top)
        else:
            from ...backend.io.labels import prompt_classes

            classes = prompt_classes(shown.names, [])
            entries = [QgsPalettedRasterRenderer.Class(c.code, QColor(*c.colour), c.name) for c in classes]
            layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
            layer.triggerRepaint()

    def set_threshold(self, value: float) -> None:
        """Move the threshold: the single map is restyled, the best-prompt map written again
        from the similarities in memory; nothing is computed by the model."""
        self.threshold = float(value)
        if self.shown is None or self.shown.layer is None:
            return
        if len(self.shown.names) > 1:
            self._write_best(self.shown)
            self.shown.layer.dataProvider().reloadData()
        self._style()

    # -- from exploring to labels ------------------------------------------------------------
    def above_threshold(self) -> np.ndarray:
        shown = self.shown
        if shown is None:
            raise RuntimeError("ask a prompt or click a pixel first")
        sims = np.nan_to_num(shown.sims, nan=-np.inf)
        return sims.max(axis=0) >= self.threshold

    def save_polygons(self, path: str, class_name: str, area: Optional[QgsGeometry] = None,
                      crs: Optional[QgsCoordinateReferenceSystem] = None) -> int:
        """Append the area above the threshold (cut to ``area``, a drawn polygon in ``crs``)
        as polygons of ``class_name`` to the GeoPackage ``path`` (layer ``labels``, field
        ``class``), in the layers' CRS; the layer is added to the project (or reloaded)."""
        from osgeo import ogr

        from ...backend.mapping.explore import add_training_polygons, mask_polygons

        cut = None
        if area is not None:
            geom = QgsGeometry(area)
            if crs is not None and crs.isValid() and crs != self.crs:
                geom.transform(QgsCoordinateTransform(crs, self.crs, self.project))
            cut = ogr.CreateGeometryFromWkt(geom.asWkt())
        polygons = mask_polygons(self.view, self.above_threshold(), cut)
        if not polygons:
            raise RuntimeError("no pixel is above the threshold there: lower the threshold")
        added = add_training_polygons(path, polygons, class_name, self.explorer.grid.crs)
        source = f"{path}|layername=labels"
        existing = [lyr for lyr in self.project.mapLayers().values()
                    if isinstance(lyr, QgsVectorLayer) and lyr.source() == source]
        if existing:
            existing[0].dataProvider().reloadData()
            existing[0].triggerRepaint()
        else:
            layer = QgsVectorLayer(source, "rsvl training polygons", "ogr")
            layer.setOpacity(0.5)  # the map underneath stays readable
            self.project.addMapLayer(layer)
        return added

    def export(self, path: str) -> str:
        """The current similarity map as a GeoTIFF like rsvl:query's OUTPUT_SIMILARITY
        (one float32 band per prompt, NaN nodata)."""
        from ...backend.io.atomic import check_geotiff, check_outputs
        from ...backend.mapping.explore import write_similarity

        if self.shown is None:
            raise RuntimeError("ask a prompt or click a pixel first")
        check_geotiff([("OUTPUT_SIMILARITY", path)])
        check_outputs([("OUTPUT_SIMILARITY", path, 0)])
        return write_similarity(self.view, self.shown.sims, self.shown.names, path)
