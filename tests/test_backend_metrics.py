"""rsvl's accuracy figures (rsvl.backend.evaluation.metrics) against scikit-learn's on random
cases: class codes that are not 0..K-1 and not sorted, classes missing from the predictions,
classes missing from the reference, classes in neither, and pixels of codes outside the class
list (0: unlabelled reference, unclassified map) that both ignore.

What rsvl does with a class absent from the reference (support 0), and asserts below: its
accuracy (recall) is NaN, its IoU is 0 where the map predicts it and NaN where it does not,
and it is left out of AA and mIoU (scikit-learn's balanced accuracy leaves it out too; its
macro Jaccard counts every label it is given, so it is given the reference's classes only).
Its wrong pixels still count: they are errors of the reference classes they cover (OA,
kappa, those classes' accuracy and IoU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as sk

from rsvl.backend.evaluation.metrics import accuracy_from_matrix, confusion_matrix

CASES = 50


def _case(rng: np.random.Generator):
    """(reference, predicted, labels) with the awkward parts drawn at random."""
    k = int(rng.integers(2, 11))
    labels = rng.choice(np.arange(1, 256), size=k, replace=False)  # codes 1..255, unsorted, not 0..K-1
    n = int(rng.integers(30, 400))
    # Classes the reference has (at least one), and classes the map predicts (at least one).
    in_truth = labels[rng.random(k) < 0.8] if rng.random() < 0.6 else labels
    in_truth = in_truth if in_truth.size else labels[:1]
    in_pred = labels[rng.random(k) < 0.7] if rng.random() < 0.6 else labels
    in_pred = in_pred if in_pred.size else labels[-1:]
    truth = rng.choice(in_truth, size=n)
    pred = np.where(rng.random(n) < rng.uniform(0.2, 0.95), truth, rng.choice(in_pred, size=n))
    # Codes outside the class list: 0 (unlabelled / unclassified) and a code no class has.
    outside = np.setdiff1d(np.arange(0, 256), labels)
    truth = np.where(rng.random(n) < 0.05, rng.choice(outside, size=n), truth)
    pred = np.where(rng.random(n) < 0.05, rng.choice(outside, size=n), pred)
    kept = np.isin(truth, labels) & np.isin(pred, labels)
    if not kept.any():
        truth[0], pred[0] = labels[0], labels[0]
    dtype = np.uint8 if rng.random() < 0.5 else np.int32  # class rasters are uint8 or wider
    return truth.astype(dtype), pred.astype(dtype), [int(v) for v in labels]


@pytest.mark.parametrize("seed", range(CASES))
def test_figures_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    truth, pred, labels = _case(rng)
    matrix = confusion_matrix(truth, pred, labels)
    # Rows: reference, columns: prediction, in the order of ``labels``; pairs with a code
    # outside ``labels`` (either side) are left out, as scikit-learn's ``labels=`` does.
    np.testing.assert_array_equal(matrix, sk.confusion_matrix(truth, pred, labels=labels))
    kept = np.isin(truth, labels) & np.isin(pred, labels)
    t, p = truth[kept].astype(np.int64), pred[kept].astype(np.int64)
    assert matrix.sum() == kept.sum()

    acc = accuracy_from_matrix(matrix, labels, [f"c{v}" for v in labels])
    present = [v for v in labels if (t == v).any()]
    absent = [v for v in labels if v not in present]
    predicted = set(p.tolist())

    assert acc.class_codes == labels and acc.support == [int((t == v).sum()) for v in labels]
    assert acc.oa == pytest.approx(sk.accuracy_score(t, p), abs=1e-12)
    recall = dict(zip(present, sk.recall_score(t, p, labels=present, average=None, zero_division=0)))
    iou = dict(zip(present, sk.jaccard_score(t, p, labels=present, average=None, zero_division=0)))
    for v, a, u in zip(labels, acc.per_class_accuracy, acc.per_class_iou):
        if v in present:
            assert a == pytest.approx(recall[v], abs=1e-12) and u == pytest.approx(iou[v], abs=1e-12), v
        else:  # absent from the reference: no accuracy; IoU 0 if the map predicts it, else none
            assert np.isnan(a), v
            assert (u == 0.0) if v in predicted else np.isnan(u), (v, u)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": the absent classes
        balanced = sk.balanced_accuracy_score(t, p)
    assert acc.aa == pytest.approx(balanced, abs=1e-12)
    assert acc.aa == pytest.approx(np.mean([recall[v] for v in present]), abs=1e-12)
    assert acc.miou == pytest.approx(sk.jaccard_score(t, p, labels=present, average="macro", zero_division=0),
                                     abs=1e-12)
    if absent and set(absent) & predicted:  # scikit-learn over every label: lower, rsvl leaves them out
        everything = sk.jaccard_score(t, p, labels=labels, average="macro", zero_division=0)
        assert everything < acc.miou
    if len(set(t.tolist()) | predicted) == 1:  # one class everywhere: kappa is 0/0, rsvl calls it 1
        assert acc.oa == 1.0 and acc.kappa == 1.0
    else:
        assert acc.kappa == pytest.approx(sk.cohen_kappa_score(t, p, labels=labels), abs=1e-12)


def test_the_cases_cover_the_awkward_parts():
    """The random cases above do hold what they are meant to test."""
    seen = {"unsorted codes": 0, "absent from reference": 0, "absent from map": 0, "in neither": 0,
            "outside codes": 0}
    for seed in range(CASES):
        truth, pred, labels = _case(np.random.default_rng(seed))
        assert min(labels) >= 1 and labels != list(range(len(labels)))
        seen["unsorted codes"] += labels != sorted(labels)
        seen["absent from reference"] += any(not (truth == v).any() for v in labels)
        seen["absent from map"] += any(not (pred == v).any() for v in labels)
        seen["in neither"] += any(not (truth == v).any() and not (pred == v).any() for v in labels)
        seen["outside codes"] += bool((~np.isin(truth, labels)).any() and (~np.isin(pred, labels)).any())
    assert all(n >= 5 for n in seen.values()), seen


def test_one_class_everywhere_has_kappa_one_where_scikit_learn_has_none():
    """Reference and map all one class: chance agreement is 1, kappa is 0/0. rsvl calls the
    perfect map's kappa 1.0; scikit-learn returns NaN."""
    truth = pred = np.full(20, 7, np.uint8)
    acc = accuracy_from_matrix(confusion_matrix(truth, pred, [7, 3]), [7, 3], ["a", "b"])
    assert (acc.oa, acc.aa, acc.kappa, acc.miou) == (1.0, 1.0, 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(sk.cohen_kappa_score(truth, pred, labels=[7, 3]))
    assert np.isnan(acc.per_class_accuracy[1]) and np.isnan(acc.per_class_iou[1])


def test_nothing_in_common_gives_nan_figures():
    """No pixel whose reference and prediction are both classes: every figure is NaN, not 0."""
    acc = accuracy_from_matrix(confusion_matrix(np.array([0, 9]), np.array([5, 0]), [5, 6]), [5, 6], ["a", "b"])
    assert acc.matrix.sum() == 0
    assert all(np.isnan(x) for x in (acc.oa, acc.aa, acc.kappa, acc.miou))
