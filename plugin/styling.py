"""Class rasters look right in QGIS: a paletted renderer with the model's class names
and colours, saved as a .qml beside the file and applied when Processing loads it."""

from __future__ import annotations

import os
from typing import Iterable, Tuple

from qgis.core import (
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QColor

ClassTuple = Tuple[int, str, Tuple[int, int, int]]


def palette_classes(classes: Iterable[ClassTuple]):
    return [QgsPalettedRasterRenderer.Class(int(code), QColor(*colour), name) for code, name, colour in classes]


def apply_palette(layer: QgsRasterLayer, classes: Iterable[ClassTuple]) -> None:
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, palette_classes(classes))
    layer.setRenderer(renderer)


def qml_path(raster_path: str) -> str:
    return os.path.splitext(raster_path)[0] + ".qml"


def write_class_style(raster_path: str, classes: Iterable[ClassTuple]) -> str:
    """Save the paletted style as ``<raster>.qml`` (QGIS loads it as the layer's default
    style). Uses a layer private to the calling thread, so it is safe in processAlgorithm."""
    layer = QgsRasterLayer(raster_path, "classes", "gdal")
    if not layer.isValid():
        raise RuntimeError(f"cannot open {raster_path} to style it")
    apply_palette(layer, classes)
    path = qml_path(raster_path)
    message, ok = layer.saveNamedStyle(path)
    if not ok:
        raise RuntimeError(f"cannot save the style {path}: {message}")
    return path


def backend_classes(classes) -> list:
    """(code, name, colour) tuples from backend ClassInfo objects."""
    return [(c.code, c.name, tuple(c.colour)) for c in classes]


class ClassStylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies the paletted renderer to the output layer once Processing loaded it (main
    thread). Instances are kept in ``_alive`` because QGIS does not own Python objects."""

    _alive = []

    def __init__(self, classes, name=None):
        super().__init__()
        self.classes = list(classes)
        self.name = name

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            apply_palette(layer, self.classes)
            if self.name:
                layer.setName(self.name)
            layer.triggerRepaint()
        if self in ClassStylePostProcessor._alive:  # QGIS calls this once per layer
            ClassStylePostProcessor._alive.remove(self)

    @classmethod
    def create(cls, classes, name=None) -> ClassStylePostProcessor:
        processor = cls(classes, name)
        cls._alive.append(processor)
        return processor


def style_output_on_load(context, output_path: str, classes, name=None) -> None:
    """If Processing will load ``output_path`` into the project, style it there too."""
    if context.willLoadLayerOnCompletion(output_path):
        details = context.layerToLoadOnCompletionDetails(output_path)
        if name:
            details.name = name
        details.setPostProcessor(ClassStylePostProcessor.create(classes, name))


class ScoreStylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles retrieved tiles on load: graduated by score (light to dark), outlines only
    where the fill would hide the map."""

    _alive = []

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        from qgis.core import QgsGradientColorRamp, QgsGraduatedSymbolRenderer, QgsVectorLayer

        if isinstance(layer, QgsVectorLayer) and layer.isValid() and layer.fields().indexOf("score") >= 0:
            renderer = QgsGraduatedSymbolRenderer("score")
            renderer.setSourceColorRamp(QgsGradientColorRamp(QColor(255, 255, 178, 150), QColor(189, 0, 38, 200)))
            renderer.updateClasses(layer, QgsGraduatedSymbolRenderer.Quantile, min(5, max(layer.featureCount(), 1)))
            layer.setRenderer(renderer)
            layer.triggerRepaint()
        if self in ScoreStylePostProcessor._alive:
            ScoreStylePostProcessor._alive.remove(self)


def style_scores_on_load(context, output_path: str) -> None:
    """If Processing will load the retrieved tiles, style them by score there."""
    if context.willLoadLayerOnCompletion(output_path):
        processor = ScoreStylePostProcessor()
        ScoreStylePostProcessor._alive.append(processor)
        context.layerToLoadOnCompletionDetails(output_path).setPostProcessor(processor)
