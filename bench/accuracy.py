"""rsvl accuracy bench: rsvl beside the per-pixel baselines users have (majority, nearest
centroid, 1-NN, 500-tree random forest per pixel and with 7x7 mean/std texture features),
on the same inputs and the same splits, over several seeds. Prints a Markdown table and
writes bench/accuracy.json.

Rows (each the mean over the seeds, with the range):
- ``random``: a stratified random ``--fraction`` of the labelled pixels trains, the rest tests;
- ``checkerboard``: squares of ``--block`` pixels alternate between training and test
  (spatially honest: neighbours of training pixels are not tested);
- ``N per class``: ``--per-class`` labelled pixels of each class train, the rest tests;
- ``date shift``: the ``random`` models classify the scene with every band changed by a
  gain (±5 %, plus ±5 % common) and an offset (±3 % of its mean), as another date might
  change it; rsvl with NORMALIZE=model and =scene, the forests with the training scene's
  standardisation and with the scene's own.

``--recipes`` trains each recipe (default: mmlgnet and band-groups) on every split;
``--variants`` adds rsvl training options (``augment``, ``balanced``, ``augment+balanced``)
on the random split. ``--losses supervised clip`` adds the paper's loss (with one
prompt per class the two losses are equal functions of the weights; tests/test_backend_loss.py).

    .venv/bin/python bench/accuracy.py [--seeds 0 1 2] [--fraction 0.1] [--block 20]
        [--per-class 5 20] [--variants augment+balanced]
        [--ms resources/sample/s2_l1c_2015-07-11.tif --lidar resources/sample/dem.tif
         --labels resources/sample/lulc.tif]

About 6 minutes on 2 cores for the bundled sample with the defaults."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "resources" / "sample"
BASELINES = ("majority", "nearest centroid", "1-NN", "random forest", "random forest 7x7")


def per_class_split(labels: str, n: int, seed: int, first: str, second: str) -> None:
    """``n`` labelled pixels of each class (all of a smaller class but one) in ``first``,
    the others in ``second``, same grid and metadata as ``labels``."""
    import rasterio

    with rasterio.open(labels) as ds:
        codes, profile = ds.read(1), ds.profile
        try:
            cmap = ds.colormap(1)
        except ValueError:  # no colour table
            cmap = None
    nodata = profile.get("nodata")
    rng = np.random.default_rng(seed)
    train = np.zeros_like(codes)
    for c in np.unique(codes):
        if c == 0 or (nodata is not None and c == nodata):
            continue
        idx = np.flatnonzero(codes.ravel() == c)
        take = rng.permutation(idx)[:min(n, max(idx.size - 1, 1))]
        train.ravel()[take] = c
    test = np.where(train > 0, 0, codes)
    test[(codes == nodata) if nodata is not None else np.zeros_like(codes, bool)] = 0
    for path, data in ((first, train), (second, test)):
        with rasterio.open(path, "w", **{**profile, "nodata": 0}) as dst:
            dst.write(data, 1)
            if cmap:
                dst.write_colormap(1, cmap)
        aux = labels + ".aux.xml"
        if os.path.exists(aux):  # category names
            with open(aux) as f, open(path + ".aux.xml", "w") as g:
                g.write(f.read())


def shifted_scene(path: str, out: str, seed: int = 42) -> dict:
    """A copy of ``path`` with each band × gain + offset (another date, simulated)."""
    import rasterio

    from rsvl.backend.augment import shift_scene

    with rasterio.open(path) as ds:
        data, profile, descriptions = ds.read(), ds.profile, ds.descriptions
    rng = np.random.default_rng(seed)
    gains = rng.uniform(0.95, 1.05, data.shape[0]) * rng.uniform(0.95, 1.05)
    valid = np.isfinite(data) & ((data != profile["nodata"]) if profile.get("nodata") is not None else True)
    means = np.array([np.abs(b[v]).mean() for b, v in zip(data, valid)])
    offsets = rng.uniform(-0.03, 0.03, data.shape[0]) * means
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(shift_scene(data, gains, offsets, profile.get("nodata")))
        for i, d in enumerate(descriptions, start=1):
            if d:
                dst.set_band_description(i, d)
    return {"gains": gains.round(4).tolist(), "offsets": offsets.round(6).tolist()}


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
    p.add_argument("--per-class", type=int, nargs="*", default=[5, 20], help="labelled pixels per class")
    p.add_argument("--variants", nargs="*", default=["augment+balanced"],
                   choices=["augment", "balanced", "augment+balanced"], help="rsvl options on the random split")
    p.add_argument("--losses", nargs="+", default=["supervised"], choices=["supervised", "clip"])
    p.add_argument("--recipes", nargs="+", default=["mmlgnet", "band-groups"], choices=["mmlgnet", "band-groups"])
    p.add_argument("--no-date-shift", action="store_true")
    p.add_argument("--out", default=str(HERE / "accuracy.json"))
    args = p.parse_args(argv)
    layers = [LayerSpec(args.ms, "ms"), LayerSpec(args.lidar, "lidar")]
    rows = []
    start = time.perf_counter()

    def record(split, seed, method, acc, **extra):
        rows.append({"split": split, "seed": seed, "method": method, "oa": acc.oa, "aa": acc.aa,
                     "kappa": acc.kappa, **extra})
        print(rows[-1], file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="rsvl-accuracy-") as tmp:
        shifted = None
        if not args.no_date_shift:
            shifted = os.path.join(tmp, "shifted.tif")
            shift = shifted_scene(args.ms, shifted)
            shifted_layers = [LayerSpec(shifted, "ms"), layers[1]]
        splits = [("random", None), ("checkerboard", None)] + [(f"{n} per class", n) for n in args.per_class]
        for split, n in splits:
            for seed in args.seeds:
                train, test = os.path.join(tmp, "train.tif"), os.path.join(tmp, "test.tif")
                if n is None:
                    split_label_raster(args.labels, args.fraction, seed, train, test, mode=split,
                                       block_size=args.block)
                else:
                    per_class_split(args.labels, n, seed, train, test)
                configs = [(("rsvl" if recipe == "mmlgnet" else f"rsvl --recipe {recipe}")
                             + (f" ({loss} loss)" if len(args.losses) > 1 else ""), dict(loss=loss, recipe=recipe))
                           for recipe in args.recipes for loss in args.losses]
                if split == "random":
                    configs += [(f"rsvl --{v.replace('+', ' --')}",
                                 {k: True for k in v.split("+")}) for v in args.variants]
                for name, options in configs:
                    model, classes = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "classes.tif")
                    t = time.perf_counter()
                    trained = api.train(layers, train, model, seed=seed, device="cpu", **options)
                    seconds = round(time.perf_counter() - t, 1)
                    api.classify(model, layers, classes, device="cpu")
                    record(split, seed, name, api.evaluate(classes, test).accuracy, epochs=trained.epochs_run,
                           train_seconds=seconds)
                    if split == "random" and shifted:
                        for norm in ("model", "scene"):
                            api.classify(model, shifted_layers, classes, device="cpu", normalize=norm)
                            record("date shift", seed, f"{name}, NORMALIZE={norm}",
                                   api.evaluate(classes, test).accuracy)
                for b in run_baselines(layers, train, test, seed=seed, methods=BASELINES):
                    record(split, seed, b.name, b.accuracy)
                if split == "random" and shifted:
                    for norm in ("model", "scene"):
                        for b in run_baselines(layers, train, test, seed=seed, methods=BASELINES[3:],
                                               test_layers=shifted_layers, normalize=norm):
                            record("date shift", seed, f"{b.name}, {norm} standardisation", b.accuracy)
    summary = {}
    for row in rows:
        summary.setdefault((row["split"], row["method"]), []).append(row)
    table = []
    for (split, method), items in summary.items():
        mean = {k: float(np.mean([r[k] for r in items])) for k in ("oa", "aa", "kappa")}
        std = {f"{k}_std": float(np.std([r[k] for r in items])) for k in ("oa", "aa")}
        table.append({"split": split, "method": method, **mean, **std, "seeds": len(items)})
    result = {"inputs": {"ms": args.ms, "lidar": args.lidar, "labels": args.labels}, "fraction": args.fraction,
              "checkerboard_block": args.block, "per_class": args.per_class, "seeds": args.seeds,
              "date_shift": None if args.no_date_shift else shift, "rows": rows, "mean": table,
              "bench_seconds": round(time.perf_counter() - start, 1)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"| split | method | OA (mean ± std of {len(args.seeds)} seeds) | AA | κ |")
    print("|---|---|---|---|---|")
    for r in table:
        print(f"| {r['split']} | {r['method']} | {r['oa']:.3f} ± {r['oa_std']:.3f} | {r['aa']:.3f} ± "
              f"{r['aa_std']:.3f} | {r['kappa']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
