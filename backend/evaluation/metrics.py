"""Accuracy figures from a confusion matrix: OA, AA, per-class accuracy (recall),
Cohen's kappa, per-class IoU and mIoU; written as JSON and CSV."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from ..io.atomic import atomic_path


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Rows = reference class, columns = predicted class, in the order of ``labels``.
    Pairs whose reference or prediction is not in ``labels`` are ignored."""
    index = {int(v): i for i, v in enumerate(labels)}
    n = len(labels)
    lut_size = int(max(max(labels), reference.max(initial=0), predicted.max(initial=0))) + 1
    lut = np.full(lut_size, -1, dtype=np.int64)
    for v, i in index.items():
        lut[v] = i
    r = lut[reference.astype(np.int64).ravel()]
    p = lut[predicted.astype(np.int64).ravel()]
    ok = (r >= 0) & (p >= 0)
    return np.bincount(r[ok] * n + p[ok], minlength=n * n).reshape(n, n)


@dataclass
class Accuracy:
    class_names: List[str]
    class_codes: List[int]
    matrix: np.ndarray
    oa: float
    aa: float
    kappa: float
    miou: float
    per_class_accuracy: List[float]
    per_class_iou: List[float]
    support: List[int]
    n_unclassified: int = 0  # reference pixels the map left unclassified (counted as errors)
    matching: str = ""  # how reference classes were matched to the map's: "name" or "code"

    @property
    def coverage(self) -> float:
        """Share of the reference pixels that the map classified."""
        n = int(self.matrix.sum())
        return (n - self.n_unclassified) / n if n else float("nan")

    def to_json(self) -> dict:
        return {
            "oa": self.oa, "aa": self.aa, "kappa": self.kappa, "miou": self.miou, "n": int(self.matrix.sum()),
            "coverage": self.coverage, "n_unclassified": self.n_unclassified, "matching": self.matching,
            "classes": [
                {"code": c, "name": n, "accuracy": a, "iou": u, "support": s}
                for c, n, a, u, s in zip(self.class_codes, self.class_names, self.per_class_accuracy,
                                         self.per_class_iou, self.support)
            ],
            "confusion_matrix": self.matrix.tolist(),
        }

    def summary(self) -> str:
        text = f"OA {self.oa:.4f}  AA {self.aa:.4f}  kappa {self.kappa:.4f}  mIoU {self.miou:.4f}  (n={int(self.matrix.sum())})"
        if self.n_unclassified:
            text += f"  coverage {self.coverage:.4f} ({self.n_unclassified} unclassified, counted as errors)"
        return text


def accuracy_from_matrix(matrix: np.ndarray, codes: Sequence[int], names: Sequence[str]) -> Accuracy:
    m = matrix.astype(np.float64)
    total = m.sum()
    diag = np.diag(m)
    support = m.sum(1)
    predicted = m.sum(0)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(present, diag / support, np.nan)
        union = support + predicted - diag
        iou = np.where(union > 0, diag / union, np.nan)
    oa = float(diag.sum() / total) if total else float("nan")
    pe = float((support * predicted).sum() / (total * total)) if total else float("nan")
    kappa = (oa - pe) / (1 - pe) if total and pe < 1 else (1.0 if total else float("nan"))
    return Accuracy(
        class_names=list(names), class_codes=[int(c) for c in codes], matrix=matrix.astype(np.int64),
        oa=oa, aa=float(np.nanmean(per_class[present])) if present.any() else float("nan"), kappa=float(kappa),
        miou=float(np.nanmean(iou[present])) if present.any() else float("nan"),
        per_class_accuracy=[float(x) for x in per_class], per_class_iou=[float(x) for x in iou],
        support=[int(x) for x in support],
    )


def write_accuracy(acc: Accuracy, json_path: str = None, csv_path: str = None) -> None:
    if json_path:
        with atomic_path(json_path) as tmp, open(tmp, "w") as f:
            json.dump(acc.to_json(), f, indent=2)
    if csv_path:
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["reference \\ predicted"] + acc.class_names + ["total", "accuracy", "iou"])
            for name, row, a, u in zip(acc.class_names, acc.matrix, acc.per_class_accuracy, acc.per_class_iou):
                w.writerow([name] + [int(x) for x in row] + [int(row.sum()), f"{a:.6f}", f"{u:.6f}"])
            w.writerow(["total"] + [int(x) for x in acc.matrix.sum(0)] + [int(acc.matrix.sum()), "", ""])
            w.writerow([])
            for k in ("oa", "aa", "kappa", "miou"):
                w.writerow([k, f"{getattr(acc, k):.6f}"])
