"""rsvl accuracy bench: rsvl beside the per-pixel baselines users have (majority, nearest
centroid, 1-NN, 500-tree random forest per pixel and with 7x7 mean/std texture features),
on the same inputs and the same splits, over several seeds. Prints a Markdown table and
writes bench/accuracy.json.

Rows (each the mean over the seeds, with the range):
- ``random``: a stratified random ``--fraction`` of the labelled pixels trains, the rest tests;
- ``checkerboard``: squares of ``--block`` pixels alternate between training and test
  (spatially honest: neighbours of training pixels are not tested);
- ``N per class``: ``--per-class`` labelled pixels of each class train, the rest tests; a
  class with fewer pixels than that trains on all of them but one, or with
  ``--small-classes half`` on at most half of them (its AA then rests on more than one
  test pixel);
- ``2015-08-30``, ``2015-09-09``: the ``random`` models (trained on 2015-07-11) classify
  the same area on two later real dates (``--other-dates``), tested on the same test
  pixels; rsvl with NORMALIZE=model and =scene, the forests with the training scene's
  standardisation and with the scene's own;
- ``date shift``: the same with the training scene changed by a per-band gain (±5 %, plus
  ±5 % common) and offset (±3 % of its mean), a simulated other date;
- ``EnMAP random``, ``EnMAP checkerboard``: the real EnMAP L2A scene of ``../shared/data/enmap-potsdam``
  (224 bands at 30 m, the water-vapour bands empty as in the product: rsvl and the baselines
  leave them out), a stratified random ``--enmap-fraction`` of its labels, and a checkerboard of
  ``--enmap-block``-pixel squares (the same fraction drawn from one colour, the other colour
  tests); skipped with a message when the data is not there. ``--only enmap`` runs these rows
  alone and puts them into the ``--out`` JSON in place of its earlier EnMAP rows;
- ``multi-sensor``: a generated 128 × 128 scene of HSI (32 bands), LiDAR DSM, SAR (VV, VH,
  speckled) and 4-band MS whose classes differ in spatial texture as much as in spectrum
  (orchards are rows of trees on grass, residential blocks are roofs between gardens),
  trained on a random ``--multi-fraction`` of its pixels, tested on the rest. Its design
  favours methods that see the neighbourhood: it says what context buys, not more.

The goal of issue 11 (``goal`` in the JSON, the last table printed): the first recipe
against the better forest, row by row, in mean OA and AA, with the paired margins seed by
seed (rsvl minus the same seed's forest: mean, standard deviation, seeds ahead).
``--summarise accuracy.json`` recomputes the means and the goal of an earlier run from
its rows without training anything.

Every rsvl model's row records ``ema``, the decay of the weight average it kept
(spectral-spatial chooses it on its validation split; None: a recipe without one).

``--splits`` picks the kinds of split (default all three) and ``--dates-for`` the splits
whose models also classify the other dates (default ``random``; e.g. ``--splits per-class
--per-class 5 20 50 --dates-for per-class`` asks how few-label models hold up on other
dates; those rows are named ``N per class, <date>``).

``--recipes`` trains each recipe (default: spectral-spatial, mmlgnet, band-groups) on every split;
``--variants`` adds rsvl training options to the first recipe (default ``semi-supervised``
and ``members``, a deep ensemble of 3 models; also ``augment``, ``balanced``,
``augment+balanced``) on every split but the multi-sensor one. ``--losses supervised clip``
adds the paper's loss (with one prompt per class the two losses are equal functions of the
weights; tests/test_backend_loss.py).

    .venv/bin/python bench/accuracy.py [--seeds 0 1 2] [--fraction 0.1] [--block 20]
        [--per-class 5 20] [--small-classes half] [--variants augment+balanced]
        [--ms resources/sample/s2_l1c_2015-07-11.tif --lidar resources/sample/dem.tif
         --labels resources/sample/lulc.tif]
    .venv/bin/python bench/accuracy.py --summarise bench/accuracy.json

30–45 minutes on 2 cores with the defaults (45 with other jobs running)."""

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
ENMAP = HERE.parent.parent / "shared" / "data" / "enmap-potsdam"  # beside the repository, when it is there
OTHER_DATES = [str(SAMPLE / "s2_l1c_2015-08-30.tif"), str(SAMPLE / "s2_l1c_2015-09-09.tif")]
SPLIT_KINDS = ("random", "checkerboard", "per-class")
BASELINES = ("majority", "nearest centroid", "1-NN", "random forest", "random forest 7x7")
# --variants: name → (the method's suffix, api.train options)
VARIANTS = {
    "semi-supervised": ("--semi-supervised", {"semi_supervised": True}),
    "augment": ("--augment", {"augment": True}),
    "balanced": ("--balanced", {"balanced": True}),
    "augment+balanced": ("--augment --balanced", {"augment": True, "balanced": True}),
    "members": ("--members 3", {"members": 3}),
    "semi-supervised+augment": ("--semi-supervised --augment", {"semi_supervised": True, "augment": True}),
}


SMALL_CLASSES = ("all-but-one", "half")


def per_class_split(labels: str, n: int, seed: int, first: str, second: str, small: str = "all-but-one") -> None:
    """``n`` labelled pixels of each class in ``first``, the others in ``second``, same grid
    and metadata as ``labels``. A class with too few pixels for that (``small``) trains on
    all of them but one (``all-but-one``: the committed JSONs) or on at most half of them,
    so that it tests on as many (``half``; a class of 11 pixels tests on 6, not on 1)."""
    if small not in SMALL_CLASSES:
        raise ValueError(f"small must be one of {', '.join(SMALL_CLASSES)} (got {small!r})")
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
        most = idx.size - 1 if small == "all-but-one" else idx.size // 2
        take = rng.permutation(idx)[:min(n, max(most, 1))]
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

    from rsvl.backend.data.augment import shift_scene

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


MULTI_CLASSES = ["water", "grassland", "forest", "orchard", "residential", "bare soil"]


def textured_scene(folder: str, size: int = 128, seed: int = 0) -> dict:
    """A generated multi-sensor scene (HSI, LiDAR, SAR, MS on one 2 m grid) and its full
    label raster: Voronoi regions of six classes; orchards are rows of trees on grass and
    residential blocks are roofs between gardens, so their pixels look like forest, grass
    or bare soil one by one and only the neighbourhood tells them apart."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    n_seeds = size * size // 400
    centres = rng.uniform(0, size, (n_seeds, 2))
    region_class = rng.permutation(np.arange(n_seeds) % len(MULTI_CLASSES))
    rr, cc = np.mgrid[0:size, 0:size]
    region = ((rr[..., None] - centres[:, 0]) ** 2 + (cc[..., None] - centres[:, 1]) ** 2).argmin(-1)
    truth = region_class[region]  # 0..5
    # Materials per pixel: 0 water, 1 grass, 2 tree canopy, 3 roof, 4 bare soil.
    material = np.choose(truth, [0, 1, 2, 1, 1, 4]).astype(int)
    trees = (rr % 5 < 2) & (cc % 5 < 2)  # orchard: 2 x 2 crowns every 5 px
    material[(truth == 3) & trees] = 2
    block = ((rr // 6 + cc // 6) % 2 == 0) & (rr % 6 > 0) & (cc % 6 > 0)  # residential: roofs between gardens
    material[(truth == 4) & block] = 3
    wl = np.linspace(0.42, 2.4, 32)
    red_edge = 1 / (1 + np.exp(-(wl - 0.72) / 0.02))
    spectra = np.stack([
        0.06 * np.exp(-((wl - 0.5) / 0.12) ** 2) + 0.01,  # water
        0.05 + 0.35 * red_edge * np.exp(-((wl - 0.9) / 1.0) ** 2) + 0.08 * (wl > 1.5),  # grass
        0.03 + 0.45 * red_edge * np.exp(-((wl - 0.9) / 1.1) ** 2),  # tree canopy
        0.12 + 0.08 * wl,  # roof
        0.10 + 0.12 * wl - 0.02 * (wl > 1.9),  # bare soil
    ])
    refl = spectra[material].transpose(2, 0, 1) * (1 + 0.08 * rng.standard_normal((1, size, size)))
    refl = refl + 0.012 * rng.standard_normal(refl.shape)
    terrain = 200 + 0.05 * rr + 3 * np.sin(cc / 17.0)
    height = np.choose(material, [0.0, 0.2, 12.0, 7.0, 0.0]) * (1 + 0.2 * rng.standard_normal((size, size)))
    dsm = terrain + height + 0.3 * rng.standard_normal((size, size))
    sigma0 = np.array([[-22, -28], [-10, -16], [-7, -12], [-2, -9], [-12, -20]], dtype=float)[material]
    sar = sigma0.transpose(2, 0, 1) + 10 * np.log10(rng.gamma(4.0, 0.25, (2, size, size)))  # 4-look speckle
    ms_ranges = [(0.45, 0.52), (0.52, 0.60), (0.63, 0.69), (0.76, 0.90)]
    ms = np.stack([refl[(wl >= a) & (wl <= b)].mean(0) for a, b in ms_ranges])
    ms = ms + 0.005 * rng.standard_normal(ms.shape)
    transform = from_origin(500000.0, 5100000.0, 2.0, 2.0)
    paths = {}
    for name, data, dtype in (("hsi", np.clip(refl * 10000, 0, 32767), "int16"), ("lidar", dsm[None], "float32"),
                              ("sar", sar, "float32"), ("ms", ms, "float32")):
        paths[name] = os.path.join(folder, f"multi_{name}.tif")
        with rasterio.open(paths[name], "w", driver="GTiff", width=size, height=size, count=data.shape[0],
                           dtype=dtype, crs="EPSG:32633", transform=transform) as dst:
            dst.write(data.astype(dtype))
    labels = os.path.join(folder, "multi_labels.tif")
    with rasterio.open(labels, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=transform, nodata=0) as dst:
        dst.write((truth + 1).astype(np.uint8), 1)
    from osgeo import gdal

    ds = gdal.Open(labels, gdal.GA_Update)
    ds.GetRasterBand(1).SetCategoryNames(["unlabelled"] + MULTI_CLASSES)
    ds = None
    return {"paths": paths, "labels": labels}


def _date_of(path: str) -> str:
    """The acquisition date in a file name (``s2_l1c_2015-08-30.tif`` → 2015-08-30), else the name."""
    import re

    m = re.search(r"\d{4}-\d{2}-\d{2}", os.path.basename(path))
    return m.group(0) if m else os.path.basename(path)


def main(argv=None):
    from rsvl.backend import api
    from rsvl.backend.evaluation.baselines import run_baselines
    from rsvl.backend.io.labels import split_label_raster
    from rsvl.backend.io.raster import LayerSpec
    from rsvl.backend.training.recipes import RECIPE_NAMES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ms", default=str(SAMPLE / "s2_l1c_2015-07-11.tif"))
    p.add_argument("--lidar", default=str(SAMPLE / "dem.tif"))
    p.add_argument("--labels", default=str(SAMPLE / "lulc.tif"))
    p.add_argument("--other-dates", nargs="*", default=OTHER_DATES,
                   help="the same area's MS on other dates (same grid and bands), classified by the random-split models")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--block", type=int, default=20, help="checkerboard square side in pixels")
    p.add_argument("--per-class", type=int, nargs="*", default=[5, 20], help="labelled pixels per class")
    p.add_argument("--small-classes", default="all-but-one", choices=list(SMALL_CLASSES),
                   help="a class with too few pixels for --per-class trains on all of them but one, "
                        "or on at most half (it then tests on as many)")
    p.add_argument("--splits", nargs="+", default=list(SPLIT_KINDS), choices=list(SPLIT_KINDS),
                   help="which kinds of split of the real scene to run")
    p.add_argument("--dates-for", nargs="*", default=["random"], choices=list(SPLIT_KINDS),
                   help="the splits whose models also classify the other dates and the simulated shift "
                        "(rows of other splits are named '<split>, <date>')")
    p.add_argument("--variants", nargs="*", default=["semi-supervised", "members"], choices=list(VARIANTS),
                   help="rsvl training options added to the first recipe, on every split but the multi-sensor one")
    p.add_argument("--losses", nargs="+", default=["supervised"], choices=["supervised", "clip"])
    p.add_argument("--recipes", nargs="+", default=list(RECIPE_NAMES), choices=list(RECIPE_NAMES))
    p.add_argument("--no-date-shift", action="store_true")
    p.add_argument("--no-multi", action="store_true", help="skip the generated multi-sensor scene")
    p.add_argument("--multi-fraction", type=float, default=0.05)
    p.add_argument("--enmap", default=str(ENMAP), help="folder of the EnMAP scene (enmap_l2a_*.tif, landcover_*.tif, "
                                                        "CLASSES.txt); skipped when absent")
    p.add_argument("--enmap-fraction", type=float, default=0.1)
    p.add_argument("--enmap-block", type=int, default=8, help="EnMAP checkerboard square side in pixels")
    p.add_argument("--only", choices=["enmap"], help="run only these rows and merge them into --out")
    p.add_argument("--train-options", type=json.loads, default={},
                   help='more api.train options for every rsvl model, as JSON (e.g. \'{"patch_size": 5}\'): for '
                        "experiments (docs/experiments)")
    p.add_argument("--out", default=str(HERE / "accuracy.json"))
    p.add_argument("--summarise", metavar="JSON",
                   help="train nothing: recompute the means and the goal of an earlier run's JSON from its rows, "
                        "rewrite it and print the tables (for a change to the summary alone)")
    args = p.parse_args(argv)
    if args.summarise:
        return resummarise(args.summarise, args.recipes[0])
    if args.only == "enmap":
        return enmap_only(args)
    layers = [LayerSpec(args.ms, "ms"), LayerSpec(args.lidar, "lidar")]
    rows = []
    start = time.perf_counter()

    def record(split, seed, method, acc, **extra):
        rows.append({"split": split, "seed": seed, "method": method, "oa": acc.oa, "aa": acc.aa,
                     "kappa": acc.kappa, **extra})
        print(rows[-1], file=sys.stderr, flush=True)

    def name_of(recipe, loss=None):
        return f"rsvl --recipe {recipe}" + (f" ({loss} loss)" if loss and len(args.losses) > 1 else "")

    with tempfile.TemporaryDirectory(prefix="rsvl-accuracy-") as tmp:
        shifts = []  # (row name, MS layer of another date)
        for path in args.other_dates:
            shifts.append((_date_of(path), path))
        shift = None
        if not args.no_date_shift:
            shifted = os.path.join(tmp, "shifted.tif")
            shift = shifted_scene(args.ms, shifted)
            shifts.append(("date shift (simulated)", shifted))
        splits = [(kind, None) for kind in ("random", "checkerboard") if kind in args.splits]
        splits += [(f"{n} per class", n) for n in args.per_class if "per-class" in args.splits]
        for split, n in splits:
            kind = split if n is None else "per-class"
            dated = [(row if split == "random" else f"{split}, {row}", path) for row, path in shifts
                     ] if kind in args.dates_for else []
            for seed in args.seeds:
                train, test = os.path.join(tmp, "train.tif"), os.path.join(tmp, "test.tif")
                if n is None:
                    split_label_raster(args.labels, args.fraction, seed, train, test, mode=split,
                                       block_size=args.block)
                else:
                    per_class_split(args.labels, n, seed, train, test, small=args.small_classes)
                configs = [(name_of(recipe, loss), dict(loss=loss, recipe=recipe))
                           for recipe in args.recipes for loss in args.losses]
                configs += [(f"rsvl --recipe {args.recipes[0]} {VARIANTS[v][0]}",
                             {"recipe": args.recipes[0], **VARIANTS[v][1]}) for v in args.variants]
                for name, options in configs:
                    model, classes = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "classes.tif")
                    t = time.perf_counter()
                    trained = api.train(layers, train, model, seed=seed, device="cpu", **options, **args.train_options)
                    seconds = round(time.perf_counter() - t, 1)
                    api.classify(model, layers, classes, device="cpu")
                    record(split, seed, name, api.evaluate(classes, test).accuracy, epochs=trained.epochs_run,
                           train_seconds=seconds, ema=trained.header["training"].get("ema"),
                           precision=trained.header["training"].get("precision"))
                    for row, path in dated:
                        for norm in ("model", "scene"):
                            api.classify(model, [LayerSpec(path, "ms"), layers[1]], classes, device="cpu",
                                         normalize=norm)
                            record(row, seed, f"{name}, NORMALIZE={norm}", api.evaluate(classes, test).accuracy)
                for b in run_baselines(layers, train, test, seed=seed, methods=BASELINES):
                    record(split, seed, b.name, b.accuracy)
                for row, path in dated:
                    for norm in ("model", "scene"):
                        for b in run_baselines(layers, train, test, seed=seed, methods=BASELINES[3:],
                                               test_layers=[LayerSpec(path, "ms"), layers[1]], normalize=norm):
                            record(row, seed, f"{b.name}, {norm} standardisation", b.accuracy)
        for row in enmap_rows(args, tmp):
            record(**row)
        if not args.no_multi:
            multi = textured_scene(tmp)
            multi_layers = [LayerSpec(multi["paths"][m], m) for m in ("hsi", "lidar", "sar", "ms")]
            for seed in args.seeds:
                train, test = os.path.join(tmp, "mtrain.tif"), os.path.join(tmp, "mtest.tif")
                split_label_raster(multi["labels"], args.multi_fraction, seed, train, test)
                for recipe in args.recipes:
                    model, classes = os.path.join(tmp, "mmodel.safetensors"), os.path.join(tmp, "mclasses.tif")
                    t = time.perf_counter()
                    trained = api.train(multi_layers, train, model, seed=seed, device="cpu", recipe=recipe,
                                        **args.train_options)
                    seconds = round(time.perf_counter() - t, 1)
                    api.classify(model, multi_layers, classes, device="cpu")
                    record("multi-sensor", seed, name_of(recipe), api.evaluate(classes, test).accuracy,
                           epochs=trained.epochs_run, train_seconds=seconds, ema=trained.header["training"].get("ema"),
                           precision=trained.header["training"].get("precision"))
                for b in run_baselines(multi_layers, train, test, seed=seed, methods=BASELINES):
                    record("multi-sensor", seed, b.name, b.accuracy)
    table, goal = summarise(rows, args.recipes[0])
    result = {"inputs": {"ms": args.ms, "lidar": args.lidar, "labels": args.labels, "other_dates": args.other_dates,
                         "enmap": args.enmap},
              "enmap_fraction": args.enmap_fraction, "enmap_block": args.enmap_block,
              "train_options": args.train_options, "precision_env": os.environ.get("RSVL_PRECISION") or None,
              "fraction": args.fraction,
              "multi_fraction": None if args.no_multi else args.multi_fraction,
              "checkerboard_block": args.block, "per_class": args.per_class,
              "small_classes": args.small_classes, "seeds": args.seeds,
              "date_shift": None if args.no_date_shift else shift, "rows": rows, "mean": table, "goal": goal,
              "bench_seconds": round(time.perf_counter() - start, 1)}
    write_json(args.out, result)
    print_tables(table, goal, args.recipes[0], len(args.seeds))
    return 0


def enmap_files(folder: str):
    """(scene, labels, class names file or None) of the EnMAP folder, or None when it is not there."""
    import glob

    scenes = sorted(glob.glob(os.path.join(folder, "enmap_*.tif")))
    labels = sorted(glob.glob(os.path.join(folder, "landcover_*.tif")))
    if not scenes or not labels:
        return None
    names = os.path.join(folder, "CLASSES.txt")
    return scenes[0], labels[0], names if os.path.exists(names) else None


def enmap_rows(args, tmp: str):
    """The EnMAP rows (dicts for ``record``): rsvl's first recipe and the baselines on the
    same random and checkerboard splits, seed by seed; none (and a message) without the data."""
    from rsvl.backend import api
    from rsvl.backend.evaluation.baselines import run_baselines
    from rsvl.backend.io.labels import split_label_raster
    from rsvl.backend.io.raster import LayerSpec

    files = enmap_files(args.enmap)
    if files is None:
        print(f"EnMAP rows skipped: no enmap_*.tif and landcover_*.tif in {args.enmap}", file=sys.stderr)
        return
    scene, labels, names = files
    layers = [LayerSpec(scene, "hsi")]
    for kind in ("random", "checkerboard"):
        split = f"EnMAP {kind}"
        for seed in args.seeds:
            train, test = os.path.join(tmp, "etrain.tif"), os.path.join(tmp, "etest.tif")
            split_label_raster(labels, args.enmap_fraction, seed, train, test, mode=kind, block_size=args.enmap_block)
            model, classes = os.path.join(tmp, "emodel.safetensors"), os.path.join(tmp, "eclasses.tif")
            t = time.perf_counter()
            trained = api.train(layers, train, model, seed=seed, device="cpu", recipe=args.recipes[0],
                                class_names=names, **args.train_options)
            seconds = round(time.perf_counter() - t, 1)
            api.classify(model, layers, classes, device="cpu")
            yield dict(split=split, seed=seed, method=f"rsvl --recipe {args.recipes[0]}",
                       acc=api.evaluate(classes, test).accuracy, epochs=trained.epochs_run, train_seconds=seconds,
                       ema=trained.header["training"].get("ema"), precision=trained.header["training"].get("precision"))
            for b in run_baselines(layers, train, test, seed=seed, methods=BASELINES):
                yield dict(split=split, seed=seed, method=b.name, acc=b.accuracy)


def enmap_only(args) -> int:
    """Run the EnMAP rows alone and put them into ``args.out`` in place of its EnMAP rows."""
    data = json.loads(Path(args.out).read_text()) if os.path.exists(args.out) else {"rows": []}
    rows = [r for r in data.get("rows", []) if not r["split"].startswith("EnMAP")]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rsvl-accuracy-") as tmp:
        for row in enmap_rows(args, tmp):
            acc = row.pop("acc")
            rows.append({**{k: row.pop(k) for k in ("split", "seed", "method")}, "oa": acc.oa, "aa": acc.aa,
                         "kappa": acc.kappa, **row})
            print(rows[-1], file=sys.stderr, flush=True)
    data["rows"] = rows
    data["mean"], data["goal"] = summarise(rows, args.recipes[0])
    data.setdefault("inputs", {})["enmap"] = args.enmap
    data.update({"enmap_fraction": args.enmap_fraction, "enmap_block": args.enmap_block,
                 "train_options": args.train_options, "precision_env": os.environ.get("RSVL_PRECISION") or None,
                 "enmap_seconds": round(time.perf_counter() - start, 1)})
    write_json(args.out, data)
    print_tables([r for r in data["mean"] if r["split"].startswith("EnMAP")],
                 [g for g in data["goal"] if g["row"].startswith("EnMAP")], args.recipes[0], len(args.seeds))
    return 0


def summarise(rows, recipe: str):
    """(table, goal) of a run's rows: each (split, method)'s mean and standard deviation
    over the seeds, and :func:`goal_rows` for ``recipe``."""
    summary = {}
    for row in rows:
        summary.setdefault((row["split"], row["method"]), []).append(row)
    table = []
    for (split, method), items in summary.items():
        mean = {k: float(np.mean([r[k] for r in items])) for k in ("oa", "aa", "kappa")}
        std = {f"{k}_std": float(np.std([r[k] for r in items])) for k in ("oa", "aa", "kappa")}
        table.append({"split": split, "method": method, **mean, **std, "seeds": len(items)})
    return table, goal_rows(table, recipe, rows)


def resummarise(path: str, recipe: str) -> int:
    data = json.loads(Path(path).read_text())
    data["mean"], data["goal"] = summarise(data["rows"], recipe)
    write_json(path, data)
    print_tables(data["mean"], data["goal"], recipe, len(data["seeds"]))
    return 0


def write_json(path: str, data) -> None:
    """``data`` as JSON at ``path``, moved into place only once written (rsvl's atomic outputs)."""
    from rsvl.backend.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2))


def print_tables(table, goal, recipe: str, n_seeds: int) -> None:
    print(mean_table(table, n_seeds))
    print("\n" + goal_table(goal, recipe))


def mean_table(table, n_seeds: int) -> str:
    """Every (split, method)'s mean ± standard deviation over the seeds, as Markdown (κ's
    standard deviation where the summary has it; bench/docs.py shows the same table)."""
    lines = [f"| split | method | OA (mean ± std of {n_seeds} seeds) | AA | κ |", "|---|---|---|---|---|"]
    for r in table:
        kappa = f"{r['kappa']:.3f}" + (f" ± {r['kappa_std']:.3f}" if "kappa_std" in r else "")
        lines.append(f"| {r['split']} | {r['method']} | {r['oa']:.3f} ± {r['oa_std']:.3f} | {r['aa']:.3f} ± "
                     f"{r['aa_std']:.3f} | {kappa} |")
    return "\n".join(lines)


def goal_table(goal, recipe: str) -> str:
    """:func:`goal_rows` as Markdown: ``recipe`` beside the better forest, with the paired margins."""
    lines = [f"| row | {recipe} OA / AA | best forest OA / AA | OA margin, per seed | AA margin, per seed "
             f"| ahead in both |", "|---|---|---|---|---|---|"]
    for g in goal:
        margins = [f"{g[k]:+.3f} ± {g[k + '_std']:.3f} ({g[k + '_seeds_ahead']}/{g['seeds']} seeds ahead)"
                   if k in g else "—" for k in ("oa_margin", "aa_margin")]
        lines.append(f"| {g['row']} | {g['oa']:.3f} / {g['aa']:.3f} | {g['forest_oa']:.3f} / {g['forest_aa']:.3f} | "
                     f"{margins[0]} | {margins[1]} | {'yes' if g['ahead'] else 'no'} |")
    return "\n".join(lines)


def goal_rows(table, recipe: str, rows=None):
    """Issue 11's goal, row by row: ``recipe`` against the better of the two forests in OA
    and, separately, in AA (on other dates: NORMALIZE=model against the forests with the
    training scene's standardisation, and =scene against their own). A row is ahead when
    both means over the seeds are.

    With the run's ``rows``, each goal row also carries the paired margins seed by seed
    (``oa_margin``: the mean over seeds of rsvl's OA minus the OA of the forest with the
    better mean OA on the same split and seed; ``oa_margin_std`` their standard deviation;
    ``oa_margin_seeds_ahead`` how many are positive; the same for AA). A mean margin
    smaller than its standard deviation is the seeds' noise, not a difference."""
    by = {(r["split"], r["method"]): r for r in table}
    per_seed = {}
    for r in rows or ():
        per_seed.setdefault((r["split"], r["method"]), {})[r["seed"]] = r
    out = []
    for split in dict.fromkeys(r["split"] for r in table):
        pairs = [("", "")]
        if (split, f"rsvl --recipe {recipe}, NORMALIZE=model") in by:
            pairs = [(", NORMALIZE=model", ", model standardisation"), (", NORMALIZE=scene", ", scene standardisation")]
        for ours, theirs in pairs:
            mine_key = (split, f"rsvl --recipe {recipe}{ours}")
            mine = by.get(mine_key)
            forest_keys = [k for k in ((split, f"random forest{theirs}"), (split, f"random forest 7x7{theirs}"))
                           if k in by]
            if mine is None or not forest_keys:
                continue
            best = {k: max(forest_keys, key=lambda f: by[f][k]) for k in ("oa", "aa")}
            f_oa, f_aa = by[best["oa"]]["oa"], by[best["aa"]]["aa"]
            goal = {"row": split + ours, "oa": mine["oa"], "aa": mine["aa"], "forest_oa": f_oa, "forest_aa": f_aa,
                    "ahead": bool(mine["oa"] > f_oa and mine["aa"] > f_aa)}
            seeds = sorted(set(per_seed.get(mine_key, {})).intersection(
                *(per_seed.get(best[k], {}) for k in ("oa", "aa"))))
            if seeds:
                goal["seeds"] = len(seeds)
                for k in ("oa", "aa"):
                    d = np.array([per_seed[mine_key][s][k] - per_seed[best[k]][s][k] for s in seeds])
                    goal.update({f"{k}_margin": float(d.mean()), f"{k}_margin_std": float(d.std()),
                                 f"{k}_margin_seeds_ahead": int((d > 0).sum())})
            out.append(goal)
    return out


if __name__ == "__main__":
    sys.exit(main())
