"""The sample-scene job behind ``make demo``: train → classify → query → evaluate on the
bundled real Sentinel-2 + elevation + land-cover patch (resources/sample).

A seeded, class-stratified 10 % of the labelled pixels trains the model; the other 90 %
are the test set. Prints the output paths and OA/AA/kappa next to per-pixel baselines (majority, nearest
centroid, 1-NN, random forest) trained and tested on the same split in the same run.
"""

from __future__ import annotations

import os

from .io.labels import split_label_raster
from .io.raster import LayerSpec

QUERY_PROMPTS = ["forest", "grassland", "artificial surface", "cultivated land", "water"]


def split_sample(sample: str, out: str, fraction: float = 0.1, seed: int = 0):
    train_path, test_path = os.path.join(out, "train_labels.tif"), os.path.join(out, "test_labels.tif")
    split_label_raster(os.path.join(sample, "lulc.tif"), fraction, seed, train_path, test_path)
    return train_path, test_path


def run_demo(sample: str, out: str, epochs: int = 100, progress=None) -> dict:
    from . import api

    os.makedirs(out, exist_ok=True)
    layers = [
        LayerSpec(os.path.join(sample, "s2_l1c_2015-07-11.tif"), "ms"),
        LayerSpec(os.path.join(sample, "dem.tif"), "lidar"),
    ]
    train_labels, test_labels = split_sample(sample, out)
    model = os.path.join(out, "model.safetensors")
    trained = api.train(layers, train_labels, model, epochs=epochs, progress=progress)
    classes = os.path.join(out, "classes.tif")
    api.classify(model, layers, classes, confidence=os.path.join(out, "confidence.tif"), progress=progress)
    similarity = os.path.join(out, "query_similarity.tif")
    api.query(model, layers, QUERY_PROMPTS, similarity, output=os.path.join(out, "query_classes.tif"),
              progress=progress)
    ev = api.evaluate(classes, test_labels, output_json=os.path.join(out, "accuracy.json"),
                      output_csv=os.path.join(out, "confusion.csv"))
    print("\nrsvl demo on the sample scene (train: 10 % of labelled pixels, test: the other 90 %)")
    print(f"  model       {model}  ({trained.epochs_run} epochs, best {trained.best_epoch}, {trained.seconds:.1f} s)")
    for name in ("classes.tif", "confidence.tif", "query_similarity.tif", "query_classes.tif", "accuracy.json",
                 "confusion.csv"):
        print(f"  {name:<21} {os.path.join(out, name)}")
    print(f"  test accuracy: {ev.accuracy.summary()}")
    from .evaluation.baselines import format_table, run_baselines

    baselines = run_baselines(layers, train_labels, test_labels)
    print("  side by side on the same split (per-pixel baselines: all bands at the pixel):")
    print(format_table([("rsvl", ev.accuracy.oa, ev.accuracy.aa, ev.accuracy.kappa)] +
                       [(b.name, b.accuracy.oa, b.accuracy.aa, b.accuracy.kappa) for b in baselines]))
    return ev.accuracy.to_json()
