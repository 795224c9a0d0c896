"""Per-pixel baselines, computed on the same inputs and the same split as an rsvl model:
what users would pick instead (majority class, nearest centroid, 1-nearest neighbour and
a 500-tree random forest, the default of SCP, dzetsaka and EnMAP-Box users).

Each baseline sees every band of every input at the labelled pixel, standardised with
the training pixels' band statistics (the same normalisation rsvl uses), and is scored
on the test pixels with the metrics of :mod:`rsvl.backend.evaluation.metrics`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data.samples import extract_patches
from ..io.labels import open_labels
from ..io.raster import LayerSpec, RasterStack, compute_band_stats
from ..io.selection import apply_selection, fit_bands
from .metrics import Accuracy, accuracy_from_matrix, confusion_matrix

log = logging.getLogger("rsvl")
FOREST_TREES = 500


@dataclass
class BaselineResult:
    name: str
    accuracy: Accuracy


def _pixels(stack, labels_path, stats, context: int = 1):
    """Features of the labelled pixels: their standardised band values, or with
    ``context`` > 1 each band's mean and standard deviation over a context × context window
    (the texture features forest users add)."""
    source = open_labels(labels_path, stack.grid)
    try:
        patches, codes, _ = extract_patches(stack, source, stats, patch_size=context)
        names = {c.code: c.name for c in source.classes}
    finally:
        source.close()
    if context == 1:
        parts = [patches[m][:, :, 0, 0] for m in stack.modalities]
    else:
        parts = [f(patches[m], axis=(2, 3)) for m in stack.modalities for f in (np.mean, np.std)]
    return np.concatenate(parts, axis=1).astype(np.float32), codes, names


def _nearest_neighbour(train_x, train_y, test_x, chunk: int = 4096):
    out = np.empty(len(test_x), dtype=train_y.dtype)
    train_sq = (train_x ** 2).sum(1)
    for i in range(0, len(test_x), chunk):
        block = test_x[i:i + chunk]
        d = train_sq[None, :] - 2.0 * block @ train_x.T  # + |block|², constant per row
        out[i:i + chunk] = train_y[d.argmin(1)]
    return out


FOREST_CONTEXT = 7  # window side of the "random forest 7x7" texture features


def run_baselines(layers: Sequence[LayerSpec], train_labels: str, test_labels: str, seed: int = 0,
                  methods: Optional[Sequence[str]] = None, test_layers: Optional[Sequence[LayerSpec]] = None,
                  normalize: str = "model") -> List[BaselineResult]:
    """Train each baseline on ``train_labels`` and score it on ``test_labels`` (class
    rasters or vectors readable by :func:`rsvl.backend.io.labels.open_labels`). With
    ``test_layers`` the test pixels come from other layers on the same grid (another date),
    standardised with the training layers' statistics (``normalize="model"``) or their own
    (``"scene"``), as rsvl's NORMALIZE does."""
    methods = list(methods or ("majority", "nearest centroid", "1-NN", "random forest"))
    contexts = sorted({FOREST_CONTEXT if m == "random forest 7x7" else 1 for m in methods})
    train_f, test_f = {}, {}
    with RasterStack(list(layers)) as stack:
        stats, selection = fit_bands(stack)  # the bands rsvl:train keeps (bad and empty ones left out)
        for ctx in contexts:
            train_f[ctx] = _pixels(stack, train_labels, stats, ctx)
            if test_layers is None:
                test_f[ctx] = _pixels(stack, test_labels, stats, ctx)
    if test_layers is not None:
        with RasterStack(list(test_layers)) as stack:
            apply_selection(stack, selection)
            test_stats = compute_band_stats(stack) if normalize == "scene" else stats
            for ctx in contexts:
                test_f[ctx] = _pixels(stack, test_labels, test_stats, ctx)
    _x, train_y, names = train_f[contexts[0]]
    _x, test_y, test_names = test_f[contexts[0]]
    names.update({c: n for c, n in test_names.items() if c not in names})
    codes = sorted(set(train_y.tolist()) | set(test_y.tolist()))
    predictions: Dict[str, np.ndarray] = {}
    for method in methods:
        ctx = FOREST_CONTEXT if method == "random forest 7x7" else 1
        train_x, test_x = train_f[ctx][0], test_f[ctx][0]
        if method == "majority":
            values, counts = np.unique(train_y, return_counts=True)
            predictions[method] = np.full_like(test_y, values[counts.argmax()])
        elif method == "nearest centroid":
            classes = np.unique(train_y)
            centroids = np.stack([train_x[train_y == c].mean(0) for c in classes])
            d = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
            predictions[method] = classes[d.argmin(1)]
        elif method == "1-NN":
            predictions[method] = _nearest_neighbour(train_x, train_y, test_x)
        elif method in ("random forest", "random forest 7x7"):
            try:
                from sklearn.ensemble import RandomForestClassifier
            except ImportError:
                log.info("scikit-learn is not installed: no random forest baseline")
                continue
            forest = RandomForestClassifier(n_estimators=FOREST_TREES, n_jobs=-1, random_state=seed)
            predictions[method] = forest.fit(train_x, train_y).predict(test_x)
        else:
            raise ValueError(f"unknown baseline {method!r}")
    return [BaselineResult(name, accuracy_from_matrix(confusion_matrix(test_y, pred, codes), codes,
                                                      [names.get(c, f"class {c}") for c in codes]))
            for name, pred in predictions.items()]


def format_table(rows) -> str:
    """(name, OA, AA, kappa) rows as an aligned text table."""
    lines = [f"  {'method':<26} {'OA':>6} {'AA':>6} {'kappa':>6}"]
    lines += [f"  {name:<26} {oa:6.3f} {aa:6.3f} {kappa:6.3f}" for name, oa, aa, kappa in rows]
    return "\n".join(lines)
