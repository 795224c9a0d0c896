"""The accuracy bench's summary: issue 11's goal row by row, with the paired per-seed
margins against the better forest (bench/accuracy.py; nothing is trained here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _row(split, seed, method, oa, aa):
    return {"split": split, "seed": seed, "method": method, "oa": oa, "aa": aa, "kappa": 0.0}


ROWS = [
    # random split: rsvl ahead in OA on one seed of two, in AA on both
    _row("random", 0, "rsvl --recipe r", 0.90, 0.60),
    _row("random", 1, "rsvl --recipe r", 0.80, 0.70),
    _row("random", 0, "random forest", 0.88, 0.50),
    _row("random", 1, "random forest", 0.84, 0.40),
    _row("random", 0, "random forest 7x7", 0.85, 0.55),
    _row("random", 1, "random forest 7x7", 0.85, 0.45),
    # another date: only the forests standardised the same way are compared
    _row("d", 0, "rsvl --recipe r, NORMALIZE=model", 0.70, 0.40),
    _row("d", 1, "rsvl --recipe r, NORMALIZE=model", 0.72, 0.42),
    _row("d", 0, "random forest, model standardisation", 0.60, 0.30),
    _row("d", 1, "random forest, model standardisation", 0.62, 0.30),
    _row("d", 0, "random forest, scene standardisation", 0.99, 0.99),
    _row("d", 1, "random forest, scene standardisation", 0.99, 0.99),
]


def test_goal_rows_compare_means_and_pair_seeds(accuracy_bench):
    table, goal = accuracy_bench.summarise(ROWS, "r")
    by = {g["row"]: g for g in goal}
    assert set(by) == {"random", "d, NORMALIZE=model"}  # no rsvl row with the scene's statistics: no goal row
    g = by["random"]
    # means: rsvl 0.85 / 0.65; the best forest OA is the pixel forest's (0.86), the best AA the 7x7 one's (0.50)
    assert g["oa"] == pytest.approx(0.85) and g["aa"] == pytest.approx(0.65)
    assert g["forest_oa"] == pytest.approx(0.86) and g["forest_aa"] == pytest.approx(0.50)
    assert g["ahead"] is False  # behind in mean OA
    # per seed against the forest with the better mean in each measure: OA vs the pixel forest, AA vs the 7x7 one
    assert g["seeds"] == 2
    assert g["oa_margin"] == pytest.approx((0.02 - 0.04) / 2)
    assert g["oa_margin_std"] == pytest.approx(0.03)
    assert g["oa_margin_seeds_ahead"] == 1
    assert g["aa_margin"] == pytest.approx((0.05 + 0.25) / 2)
    assert g["aa_margin_std"] == pytest.approx(0.10)
    assert g["aa_margin_seeds_ahead"] == 2
    d = by["d, NORMALIZE=model"]
    assert d["forest_oa"] == pytest.approx(0.61) and d["ahead"] is True
    assert d["oa_margin"] == pytest.approx(0.10) and d["oa_margin_seeds_ahead"] == 2
    assert d["aa_margin"] == pytest.approx(0.11) and d["aa_margin_std"] == pytest.approx(0.01)


def test_summarise_option_rewrites_an_earlier_run(tmp_path):
    path = tmp_path / "accuracy.json"
    path.write_text(json.dumps({"seeds": [0, 1], "rows": ROWS, "mean": [], "goal": [], "bench_seconds": 1.0}))
    out = subprocess.run([sys.executable, str(REPO / "bench" / "accuracy.py"), "--summarise", str(path),
                          "--recipes", "spectral-spatial"], capture_output=True, text=True, check=False)
    # rows of recipe "r", not spectral-spatial: means, and no goal rows
    assert out.returncode == 0, out.stderr
    data = json.loads(path.read_text())
    assert data["bench_seconds"] == 1.0 and data["rows"] == ROWS
    assert {(m["split"], m["method"]) for m in data["mean"]} == {(r["split"], r["method"]) for r in ROWS}
    assert data["goal"] == []
    assert "| random | random forest | 0.860 ± 0.020 |" in out.stdout
