"""Builds tests/data/rsvl_chain.model3: a Model Designer chain rsvl:train → rsvl:classify →
rsvl:evaluate (fast training settings for tests). Run with the venv's Python:

    QT_QPA_PLATFORM=offscreen .venv/bin/python tests/data/make_chain_model.py

The .model3 is committed; the script documents how it was made (Model Designer would
produce the same structure)."""

import os
import sys

from qgis.core import (
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtCore import QPointF


def source(name):
    return [QgsProcessingModelChildParameterSource.fromModelParameter(name)]


def static(value):
    return [QgsProcessingModelChildParameterSource.fromStaticValue(value)]


def child_output(child, output):
    return [QgsProcessingModelChildParameterSource.fromChildOutput(child, output)]


def step(model, alg_id, child_id, description, x, sources, outputs):
    child = QgsProcessingModelChildAlgorithm(alg_id)
    child.setChildId(child_id)
    child.setDescription(description)
    child.setPosition(QPointF(x, 250))
    for name, value in sources.items():
        child.addParameterSources(name, value)
    model_outputs = {}
    for name, (child_name, title) in outputs.items():
        out = QgsProcessingModelOutput(name, title)
        out.setChildId(child_id)
        out.setChildOutputName(child_name)
        model_outputs[name] = out
    child.setModelOutputs(model_outputs)
    model.addChildAlgorithm(child)


def build(path):
    model = QgsProcessingModelAlgorithm("rsvl train classify evaluate", "rsvl")
    for i, (name, title) in enumerate([("hsi", "Hyperspectral raster"), ("lidar", "LiDAR raster"),
                                       ("labels", "Training labels (class raster)"),
                                       ("reference", "Reference labels (class raster)")]):
        param = QgsProcessingModelParameter(name)
        param.setPosition(QPointF(100 + 200 * i, 80))
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, title), param)
    step(model, "rsvl:train", "train", "Train MMLGNet", 150, {
        "INPUT_HSI": source("hsi"), "INPUT_LIDAR": source("lidar"), "TRAINING": source("labels"),
        "PATCH_SIZE": static(5), "EPOCHS": static(20), "LEARNING_RATE": static(0.003), "BATCH_SIZE": static(64),
        "DEVICE": static(1), "SEED": static(0),
    }, {"model": ("OUTPUT_MODEL", "Model")})
    step(model, "rsvl:classify", "classify", "Classify scene", 400, {
        "MODEL": child_output("train", "OUTPUT_MODEL"), "INPUT_HSI": source("hsi"), "INPUT_LIDAR": source("lidar"),
        "DEVICE": static(1),
    }, {"classes": ("OUTPUT", "Classes")})
    step(model, "rsvl:evaluate", "evaluate", "Evaluate", 650, {
        "INPUT": child_output("classify", "OUTPUT"), "REFERENCE": source("reference"),
    }, {"confusion": ("OUTPUT_CSV", "Confusion matrix")})
    if not model.toFile(path):
        raise SystemExit(f"could not write {path}")


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    import rsvl

    plugin = rsvl.classFactory(None)
    plugin.initProcessing()
    build(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rsvl_chain.model3"))
    print("written rsvl_chain.model3")
