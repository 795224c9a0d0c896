"""rsvl accuracy bench: rsvl beside the per-pixel baselines users have (majority, nearest
centroid, 1-NN, 500-tree random forest), on the same inputs and the same splits, for a
random and a spatially honest (checkerboard) split and several seeds. Prints a table and
writes bench/accuracy.json.

``--losses supervised clip`` adds the paper's loss. With one prompt per class (one
template, as here) the two losses are equal as functions of the weights (same-class rows
of the similarity matrix are identical, and the paper's same-class 'negatives' cancel in
the batch sum; tests/test_backend_loss.py shows it), so runs differ only by floating-point
summation order.

    .venv/bin/python bench/accuracy.py [--seeds 0 1 2] [--fraction 0.1] [--block 20]
        [--ms resources/sample/s2_l1c_2015-07-11.tif --lidar resources/sample/dem.tif
         --labels resources/sample/lulc.tif]

Takes about 6 minutes on 2 cores for the bundled sample (6 trainings)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "resources" / "sample"


def main(argv=None):
    from rsvl.backend import api
    from rsvl.backend.baselines import run_baselines
    from rsvl.backend.labels import split_label_raster
    from rsvl.backend.raster import LayerSpec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ms", default=str(SAMPLE / "s2_l1c_2015-07-11.tif"))
    p.add_argument("--lidar", default=str(SAMPLE / "dem.tif"))
    p.add_argument("--labels", default=str(SAMPLE / "lulc.tif"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--block", type=int, default=20, help="checkerboard square side in pixels")
    p.add_argument("--losses", nargs="+", default=["supervised"], choices=["supervised", "clip"])
    p.add_argument("--out", default=str(HERE / "accuracy.json"))
    args = p.parse_args(argv)
    layers = [LayerSpec(args.ms, "ms"), LayerSpec(args.lidar, "lidar")]
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rsvl-accuracy-") as tmp:
        for split in ("random", "checkerboard"):
            for seed in args.seeds:
                train, test = os.path.join(tmp, "train.tif"), os.path.join(tmp, "test.tif")
                split_label_raster(args.labels, args.fraction, seed, train, test, mode=split, block_size=args.block)
                for loss in args.losses:
                    model, classes = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "classes.tif")
                    t = time.perf_counter()
                    trained = api.train(layers, train, model, seed=seed, loss=loss, device="cpu")
                    seconds = time.perf_counter() - t
                    api.classify(model, layers, classes, device="cpu")
                    acc = api.evaluate(classes, test).accuracy
                    rows.append({"split": split, "seed": seed, "method": f"rsvl ({loss} loss)", "oa": acc.oa,
                                 "aa": acc.aa, "kappa": acc.kappa, "epochs": trained.epochs_run,
                                 "train_seconds": round(seconds, 1)})
                    print(rows[-1], file=sys.stderr, flush=True)
                for b in run_baselines(layers, train, test, seed=seed):
                    rows.append({"split": split, "seed": seed, "method": b.name, "oa": b.accuracy.oa,
                                 "aa": b.accuracy.aa, "kappa": b.accuracy.kappa})
    summary = {}
    for row in rows:
        key = f"{row['split']}|{row['method']}"
        summary.setdefault(key, []).append(row)
    table = []
    for key, items in summary.items():
        split, method = key.split("|")
        mean = {k: sum(r[k] for r in items) / len(items) for k in ("oa", "aa", "kappa")}
        spread = {k: max(r[k] for r in items) - min(r[k] for r in items) for k in ("oa", "aa")}
        table.append({"split": split, "method": method, **mean, "oa_range": spread["oa"],
                      "aa_range": spread["aa"], "seeds": len(items)})
    result = {"inputs": {"ms": args.ms, "lidar": args.lidar, "labels": args.labels}, "fraction": args.fraction,
              "checkerboard_block": args.block, "seeds": args.seeds, "rows": rows, "mean": table,
              "bench_seconds": round(time.perf_counter() - start, 1)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"| split | method | OA (mean of {len(args.seeds)} seeds, range) | AA (range) | κ |")
    print("|---|---|---|---|---|")
    for r in table:
        print(f"| {r['split']} | {r['method']} | {r['oa']:.3f} ({r['oa_range']:.3f}) | {r['aa']:.3f} "
              f"({r['aa_range']:.3f}) | {r['kappa']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
