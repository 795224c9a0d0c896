"""Command line of the headless backend: ``python -m rsvl.backend <command> …``.

Errors in the user's input print one line (``rsvl: error: …``) and exit with status 2;
a cancelled job exits with 130.

Long module: the options of eleven commands and a short handler for each (the dispatch is the
COMMANDS table); training options come from :mod:`rsvl.backend.training.config`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import List, Optional

from . import __version__
from .errors import CancelledError, InputError, RsvlError, count
from .io.raster import MODALITIES, LayerSpec
from .training.config import TrainConfig
from .training.config import add_arguments as add_train_arguments

MODALITY_HELP = {"hsi": "hyperspectral", "lidar": "LiDAR/DSM/elevation", "sar": "SAR", "ms": "multispectral"}


def _add_layer_args(p: argparse.ArgumentParser, required_hint: str, modalities=MODALITIES,
                    help_of: Optional[dict] = None) -> None:
    """The input-layer options: one per modality of ``modalities`` (a command that takes
    fewer offers fewer: argparse then refuses the others by name)."""
    g = p.add_argument_group("input layers (at least one; a modality may be given several times)")
    for m in modalities:
        text = (help_of or {}).get(m) or f"{MODALITY_HELP[m]} raster ({required_hint})"
        g.add_argument(f"--{m}", action="append", default=[], metavar="PATH", help=text)
    for m in set(MODALITIES) - set(modalities):  # taken, to be refused by name (_check_modalities)
        g.add_argument(f"--{m}", action="append", default=[], help=argparse.SUPPRESS)
    g.add_argument(
        "--nodata", action="append", default=[], metavar="MODALITY=VALUE",
        help="override the nodata value of that modality's layers, e.g. --nodata hsi=0",
    )
    g.add_argument("--reference", type=int, default=None, metavar="INDEX",
                   help="index of the layer whose grid is used (default: first hsi, else ms, sar, lidar)")
    g.add_argument("--no-align", action="store_true",
                   help="refuse layers not on the reference grid instead of warping them onto it")


def _add_foundation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pretrained vision-language checkpoints (Llama3-MS-CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP)")
    g.add_argument("--preset", default="auto", help="auto, a preset name (docs/foundation-models.md) or open_clip:ARCH")
    g.add_argument("--template", action="append", default=None,
                   help="prompt template with {} or {c} (repeat; default: the preset's ensemble)")
    g.add_argument("--bands", default=None, help="input bands in model order, codes or 1-based numbers, comma-separated")
    g.add_argument("--value-scale", default="auto", help="raster value x this = digital number (default auto)")
    g.add_argument("--offset", type=float, default=0.0, help="subtracted from digital numbers (L2A baseline >= 04.00: "
                                                             "1000)")


def _layers(args) -> List[LayerSpec]:
    overrides = {}
    for item in args.nodata:
        if "=" not in item:
            raise RsvlError(f"--nodata expects MODALITY=VALUE (got {item!r})")
        m, v = item.split("=", 1)
        m = m.strip().lower()
        try:
            overrides[m] = float(v)
        except ValueError:
            raise RsvlError(f"--nodata {item!r}: the value must be a number (e.g. ms=0 or lidar=-9999)") from None
    layers = []
    for m in MODALITIES:
        for path in getattr(args, m, None) or []:
            layers.append(LayerSpec(path=path, modality=m, nodata=overrides.get(m)))
    unknown = sorted(set(overrides) - {layer.modality for layer in layers})
    if unknown:
        given = ", ".join(sorted({layer.modality for layer in layers})) or "none"
        raise RsvlError(f"--nodata names {', '.join(unknown)}, which is not an input of this run (inputs: {given}; "
                        f"modalities are {', '.join(MODALITIES)})")
    return layers


def _add_scheduler_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", default=None, metavar="local[:N]|tcp://HOST:PORT",
                   help="compute the windows on a Dask cluster: local[:N] starts N one-thread worker processes here "
                        "(default one per core), tcp://HOST:PORT uses a running `dask scheduler` whose workers see the "
                        "same input and model paths; the output file is the same as without it")


def _progress(quiet: bool):
    if quiet:
        return None
    last = {"pct": -1}

    def report(fraction: float, message: str) -> None:
        pct = int(fraction * 100)
        if pct != last["pct"]:
            last["pct"] = pct
            print(f"\r{pct:3d}% {message[:60]:<60}", end="", file=sys.stderr, flush=True)
            if pct >= 100:
                print(file=sys.stderr)

    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rsvl.backend",
        description="rsvl headless backend: train, classify, query and evaluate multi-sensor rasters "
        "(hsi, lidar, sar, ms) with text-aligned encoders.",
    )
    parser.add_argument("--version", action="version", version=f"rsvl {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or info messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train an MMLGNet model from labelled pixels or polygons")
    _add_layer_args(p, "training inputs")
    p.add_argument("--labels", required=True, help="class raster (0/nodata = unlabelled) or vector file")
    p.add_argument("--output", "-o", required=True, help="model file to write (.safetensors)")
    p.add_argument("--report", help="write an HTML training report (curves, validation confusion matrix)")
    add_train_arguments(p)
    p.add_argument("--foundation-model", default=None,
                   help="few-shot: adapt this pretrained checkpoint to the labels (a head on its frozen embeddings) "
                        "instead of training MMLGNet")
    p.add_argument("--fewshot-resolution", default="tile", choices=["tile", "token"],
                   help="few-shot: window or 16-pixel token embeddings")
    p.add_argument("--fewshot-tile-size", type=int, default=0, help="few-shot: window size (default: the model's)")
    p.add_argument("--fewshot-stride", type=int, default=None, help="few-shot: window step (default: half a tile)")
    p.add_argument("--fewshot-learning-rate", type=float, default=1e-2, help="few-shot: Adam step of the head")
    _add_foundation_args(p)

    p = sub.add_parser("classify", help="classify a scene with a trained model")
    p.add_argument("--model", "-m", required=True)
    _add_layer_args(p, "the modalities the model was trained on")
    p.add_argument("--output", "-o", required=True, help="class raster to write (GeoTIFF)")
    p.add_argument("--confidence", help="optional float32 confidence raster")
    p.add_argument("--similarity", help="optional per-class cosine similarity stack")
    p.add_argument("--method", default="dense", choices=["dense", "patch"])
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4096, help="pixels per batch of the patch method")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="accept inputs whose band order or pixel size differs from "
                                                         "training (with a warning)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="arithmetic precision: auto (bfloat16 where the device has it natively and the model's map "
                        "agrees with float32 on a probe window, else float32), float32, bfloat16, float16 (GPU)")
    p.add_argument("--normalize", default="model", choices=["model", "scene"],
                   help="standardise inputs with the training scene's band statistics (model) or their own (scene: "
                        "another date or sensor)")
    _add_scheduler_arg(p)

    p = sub.add_parser("query", help="open-vocabulary query: similarity of every pixel to text prompts")
    p.add_argument("--model", "-m", required=True)
    _add_layer_args(p, "the modalities the model was trained on")
    p.add_argument("--prompt", action="append", required=True, help="a text prompt (repeat for several)")
    p.add_argument("--output-similarity", required=True, help="float raster, one band per prompt")
    p.add_argument("--output", "-o", help="optional argmax class raster over the prompts")
    p.add_argument("--threshold", type=float, default=None, help="best cosine similarity below this = nodata")
    p.add_argument("--raw-prompts", action="store_true", help="do not wrap prompts in the model's template")
    p.add_argument("--method", default="dense", choices=["dense", "patch"])
    p.add_argument("--tile-size", type=int, default=0,
                   help="window size: rsvl models 256; foundation checkpoints the model's input size (224)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="accept inputs whose band order or pixel size differs from "
                                                         "training (with a warning)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="arithmetic precision: auto (bfloat16 where the device has it natively and the model's map "
                        "agrees with float32 on a probe window, else float32), float32, bfloat16, float16 (GPU)")
    p.add_argument("--normalize", default="model", choices=["model", "scene"],
                   help="standardise inputs with the training scene's band statistics (model) or their own (scene: "
                        "another date or sensor)")
    _add_foundation_args(p)
    p.add_argument("--stride", type=int, default=None, help="foundation checkpoints: window step (default tile/2)")
    p.add_argument("--resolution", default="tile", choices=["tile", "token"],
                   help="foundation checkpoints: a score per window, or per 16-pixel patch token")
    p.add_argument("--multi-label", action="store_true",
                   help="foundation checkpoints: --output gets one 0/1 band per prompt (score above the mean of "
                        "the others)")
    _add_scheduler_arg(p)

    p = sub.add_parser("explore", help="embed a view of the scene once, then map prompts and clicked points against "
                                       "it (what the rsvl Explore panel does)")
    p.add_argument("--model", "-m", required=True, help="an rsvl model file (rsvl:train)")
    _add_layer_args(p, "the modalities the model was trained on")
    p.add_argument("--extent", help="xmin,ymin,xmax,ymax of the view in the reference layer's CRS (default: the scene)")
    p.add_argument("--max-pixels", type=int, default=4_000_000,
                   help="embed at native resolution up to this many pixels, coarser beyond")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeat for several)")
    p.add_argument("--similar-to", action="append", default=[], metavar="X,Y",
                   help="a point (map coordinates): similarity of every pixel to its embedding (repeat)")
    p.add_argument("--raw-prompts", action="store_true", help="do not wrap prompts in the model's template")
    p.add_argument("--output-similarity", required=True, help="float raster on the view's grid: one band per prompt, "
                                                              "then one per point")
    p.add_argument("--cache-dir", help="keep the view's embeddings here (a later run with the same view reads them)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="arithmetic precision (see classify --precision)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="accept inputs whose band order or pixel size differs from "
                                                         "training (with a warning)")

    p = sub.add_parser("pretrain", help="self-supervised Siamese pretraining of the encoders on unlabelled layers")
    _add_layer_args(p, "at least two modalities")
    p.add_argument("--output", "-o", required=True, help="encoder file (.safetensors) for train --pretrained")
    p.add_argument("--patch-size", type=int, default=11)
    p.add_argument("--samples", type=int, default=20000, help="pixels drawn over the scene")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("distill", help="spectral distillation: a student with fewer bands learns a teacher's "
                                          "embeddings (no labels needed)")
    p.add_argument("--teacher", required=True, help="rsvl model trained on the full bands")
    p.add_argument("--teacher-layer", action="append", required=True, metavar="MODALITY=PATH",
                   help="the teacher's input layers, e.g. ms=s2.tif lidar=dem.tif (repeat)")
    p.add_argument("--student-layer", action="append", required=True, metavar="MODALITY=PATH",
                   help="the student's input layers on the same grid, e.g. ms=rgb.tif (repeat)")
    p.add_argument("--output", "-o", required=True, help="student model file")
    p.add_argument("--samples", type=int, default=20000, help="pixels drawn over the scene")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("retrieve", help="the tiles of a scene most similar to a text (pretrained checkpoint)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the image tower's arithmetic (see classify --precision)")
    p.add_argument("--model", "-m", required=True, help="a pretrained vision-language checkpoint")
    _add_layer_args(p, "", modalities=("ms",), help_of={
        "ms": "multispectral raster (Sentinel-2 bands for MS checkpoints), or an RGB raster for RGB checkpoints"})
    p.add_argument("--query", "-q", required=True, help="the text to search for")
    p.add_argument("--output", "-o", required=True, help="GeoPackage of the top tiles (rank, score)")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--tile-size", type=int, default=0, help="tile size (default: the model's input size)")
    p.add_argument("--stride", type=int, default=None, help="tile step (default: the tile size)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_foundation_args(p)

    p = sub.add_parser("evaluate", help="accuracy of a class raster against reference labels")
    p.add_argument("--classification", "-c", required=True)
    p.add_argument("--reference", "-r", required=True, help="reference class raster or vector file")
    p.add_argument("--class-field", help="class field of vector reference labels")
    p.add_argument("--class-name-field", help="for an integer class field: the field with the class names")
    p.add_argument("--label-nodata", help="reference raster values that mean 'no label', e.g. '-1' or '-1, 255' "
                                          "(default: its nodata value, else 0; with another value, 0 is a class)")
    p.add_argument("--class-names", help="class names for the reference raster's codes: .qml, .clr or 'code,name' "
                                         "text file (default: its category names, or such a file beside it)")
    p.add_argument("--json", help="write the figures as JSON")
    p.add_argument("--csv", help="write the confusion matrix as CSV")
    p.add_argument("--report", help="write an HTML report with the confusion matrix as a picture")

    p = sub.add_parser("split", help="seeded class-stratified split of a class raster (e.g. train/test)")
    p.add_argument("--labels", required=True, help="class raster to split")
    p.add_argument("--fraction", type=float, default=0.1, help="share of each class in the first output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first", required=True, help="class raster with FRACTION of each class (e.g. training)")
    p.add_argument("--second", required=True, help="class raster with the rest (e.g. test)")
    p.add_argument("--mode", default="random", choices=["random", "checkerboard", "blocks"],
                   help="random pixels; checkerboard squares (first map from one colour, second from the other); "
                        "random blocks (see --block-size, --buffer)")
    p.add_argument("--block-size", type=int, default=20, help="square side in pixels (checkerboard, blocks)")
    p.add_argument("--label-nodata", help="values of --labels that mean 'no label', e.g. '-1' or '-1, 255' (default: "
                                          "its nodata value, else 0; with another value, 0 is a class)")
    p.add_argument("--class-names", help="class names for --labels' codes: .qml, .clr or 'code,name' text file")
    p.add_argument("--buffer", type=int, default=0,
                   help="drop second-map pixels within this many pixels of a first-map pixel (patch_size // 2 keeps "
                        "test patches free of training pixels)")

    p = sub.add_parser("baselines", help="per-pixel baselines (majority, nearest centroid, 1-NN, random forest) "
                                         "trained and tested on the same split as an rsvl model")
    _add_layer_args(p, "the same inputs as the rsvl model")
    p.add_argument("--train", required=True, help="training labels (class raster or vector with --class-field)")
    p.add_argument("--test", required=True, help="test labels")
    p.add_argument("--seed", type=int, default=0, help="random forest seed")
    p.add_argument("--compare", metavar="ACCURACY_JSON", help="an `evaluate --json` file of the rsvl map to print "
                                                              "side by side")

    p = sub.add_parser("info", help="print a model file's header as JSON")
    p.add_argument("model")

    p = sub.add_parser("demo", help="train → classify → query → evaluate on the bundled sample scene")
    p.add_argument("--sample", required=True, help="folder with the sample scene (resources/sample)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=100)
    return parser


def _train(args, progress):
    """MMLGNet training, or with --foundation-model a few-shot head on a pretrained checkpoint."""
    return (_train_fewshot if args.foundation_model else _train_mmlgnet)(args, progress)


def _train_fewshot(args, progress):
    from . import api

    res = api.train_fewshot(
        args.foundation_model, _layers(args), args.labels, args.output, class_field=args.class_field,
        class_name_field=args.class_name_field, preset=args.preset, templates=args.template,
        tile_size=args.fewshot_tile_size or None, stride=args.fewshot_stride, resolution=args.fewshot_resolution,
        bands=args.bands, value_scale=args.value_scale, offset=args.offset, epochs=args.epochs or 100,
        learning_rate=args.fewshot_learning_rate, validation_fraction=args.validation_fraction, seed=args.seed,
        device=args.device, reference=args.reference, progress=progress, precision=args.precision,
    )

    def oa(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"model: {res.model_path}\nclasses: {', '.join(c.name for c in res.classes)}\n"
          f"few-shot head: {res.n_train} training / {res.n_val} validation pixels, best epoch {res.best_epoch} "
          f"of {res.epochs_run}, {res.seconds:.1f} s\nvalidation OA: zero-shot {oa(res.validation_oa_zero_shot)}, "
          f"adapted {oa(res.validation_oa)}" + (f"\nvalidation: {res.validation.summary()}" if res.validation else ""))
    if args.report:
        from .evaluation.report import write_fewshot_report

        if write_fewshot_report(args.report, res):
            print(f"report: {args.report}")
        else:
            print("report: none (--validation-fraction 0: no validation figures to report)", file=sys.stderr)


def _train_mmlgnet(args, progress):
    from . import api

    other_rank = args.distributed and os.environ.get("RANK", "0") != "0"
    if other_rank:  # rank 0 reports for all
        progress = None
        logging.getLogger("rsvl").setLevel(logging.WARNING)
    res = api.train(_layers(args), args.labels, args.output, TrainConfig.from_namespace(args), progress=progress)
    if other_rank:
        return 0
    if args.report:
        from .evaluation.report import write_training_report

        write_training_report(args.report, res.header, res.validation)
    val = res.validation.summary() if res.validation else "no validation split"
    print(f"model: {res.model_path}\nclasses: {', '.join(c.name for c in res.classes)}\n"
          f"epochs: {res.epochs_run} (best {res.best_epoch}), {res.seconds:.1f} s, "
          f"{res.samples_per_s:.0f} samples/s on {res.device}\nvalidation: {val}")


def _classify(args, progress):
    from . import api

    res = api.classify(
        args.model, _layers(args), args.output, confidence=args.confidence, similarity=args.similarity,
        method=args.method, tile_size=args.tile_size, batch_size=args.batch_size, device=args.device,
        reference=args.reference, align=not args.no_align, force=args.force, progress=progress,
        normalize=args.normalize, scheduler=args.scheduler, precision=args.precision,
    )
    print(f"classes: {res.output}" + (f"\nconfidence: {res.confidence}" if res.confidence else "")
          + (f"\nsimilarity: {res.similarity}" if res.similarity else "")
          + f"\n{res.pixels} pixels in {res.seconds:.2f} s ({res.method})")


def _query(args, progress):
    from . import api

    res = api.query(
        args.model, _layers(args), args.prompt, args.output_similarity, output=args.output,
        threshold=args.threshold, use_template=not args.raw_prompts, method=args.method,
        tile_size=args.tile_size, device=args.device, reference=args.reference, align=not args.no_align,
        force=args.force, progress=progress, preset=args.preset, templates=args.template, stride=args.stride,
        resolution=args.resolution, multi_label=args.multi_label, bands=args.bands,
        value_scale=args.value_scale, offset=args.offset, normalize=args.normalize, scheduler=args.scheduler,
        precision=args.precision,
    )
    print(f"similarity: {res.similarity}" + (f"\nclasses: {res.output}" if res.output else ""))


def _numbers(text: str, n: int, option: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise InputError(f"{option} takes {n} comma-separated numbers (got {text!r})")
    return values


def _explore(args, progress):
    import time

    from . import api
    from .io.atomic import check_geotiff, check_outputs
    from .mapping.explore import EmbeddingCache, write_similarity

    if not args.prompt and not args.similar_to:
        raise InputError("give --prompt or --similar-to (or both)")
    extent = _numbers(args.extent, 4, "--extent") if args.extent else None
    points = [_numbers(p, 2, "--similar-to") for p in args.similar_to]
    check_geotiff([("OUTPUT_SIMILARITY", args.output_similarity)])
    check_outputs([("OUTPUT_SIMILARITY", args.output_similarity, 0)])
    with api.open_explorer(args.model, _layers(args), reference=args.reference, align=not args.no_align,
                           device=args.device, force=args.force, cache=EmbeddingCache(folder=args.cache_dir),
                           precision=args.precision) as ex:
        view = ex.embed(extent, max_pixels=args.max_pixels, progress=progress)
        h, w = view.shape
        print(f"view: {w} x {h} px (step {view.step}), {view.emb.shape[0]} valid, embedded in {view.seconds:.2f} s"
              f"{' (from the cache)' if not view.seconds else ''}; {view.nbytes / 2**20:.1f} MiB")
        if view.note:
            print(view.note)
        bands, names = [], []
        if args.prompt:
            start = time.perf_counter()
            bands.append(ex.prompts(view, args.prompt, use_template=not args.raw_prompts))
            names += args.prompt
            print(f"prompts: {len(args.prompt)} in {1000 * (time.perf_counter() - start):.0f} ms")
        for x, y in points:
            start = time.perf_counter()
            bands.append(ex.similar_to(view, [view.pixel_of(x, y)])[None])
            names.append(f"similar to ({x:g}, {y:g})")
            print(f"similar to ({x:g}, {y:g}): {1000 * (time.perf_counter() - start):.0f} ms")
        import numpy as np

        write_similarity(view, np.concatenate(bands), names, args.output_similarity)
    print(f"similarity: {args.output_similarity}")


def _pretrain(args, progress):
    from .training.pretrain import pretrain

    res = pretrain(_layers(args), args.output, patch_size=args.patch_size, samples=args.samples,
                   epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                   seed=args.seed, device=args.device, reference=args.reference, progress=progress)
    inputs = ", ".join(f"{m} {count(b, 'band')}" for m, b in res.modalities.items())
    print(f"encoders: {res.path} ({inputs})\n"
          f"SimSiam loss: {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f}, {res.n_samples} pixels, "
          f"{res.seconds:.1f} s")


def _distill(args, progress):
    from .training.distill import distill

    def pairs(items):
        out = []
        for item in items:
            if "=" not in item:
                raise RsvlError(f"layers are given as MODALITY=PATH (got {item!r})")
            m, path = item.split("=", 1)
            out.append(LayerSpec(path=path, modality=m.strip().lower()))
        return out

    res = distill(args.teacher, pairs(args.teacher_layer), pairs(args.student_layer), args.output,
                  samples=args.samples, epochs=args.epochs, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, seed=args.seed, device=args.device, progress=progress)
    print(f"student: {res.model_path}\nheld-out cosine to the teacher: {res.cosine_before:.3f} -> "
          f"{res.cosine_after:.3f} (epoch {res.best_epoch}), {res.n_samples} pixels, {res.seconds:.1f} s")


def _retrieve(args, progress):
    from .foundation.retrieval import retrieve

    given = [f"--{m}" for m in MODALITIES if m != "ms" and getattr(args, m)]
    if given:
        raise RsvlError(f"retrieve takes --ms only (a multispectral raster, or an RGB raster for RGB checkpoints), "
                        f"not {', '.join(given)}: pretrained vision-language checkpoints read multispectral or RGB images")

    res = retrieve(args.model, _layers(args), args.query, args.output, top_k=args.top_k, preset=args.preset,
                   templates=args.template, tile_size=args.tile_size or None, stride=args.stride,
                   bands=args.bands, scale=args.value_scale, offset=args.offset, device=args.device,
                   reference=args.reference, progress=progress, precision=args.precision)
    for rank, score, (r, c, h, w) in res.ranked[:10]:
        print(f"{rank:3d}  {score:.4f}  rows {r}..{r + h}  cols {c}..{c + w}")
    print(f"tiles: {res.output}")


def _evaluate(args, progress):
    from . import api

    res = api.evaluate(args.classification, args.reference, class_field=args.class_field,
                       class_name_field=args.class_name_field, label_nodata=args.label_nodata,
                       class_names=args.class_names, output_json=args.json, output_csv=args.csv)
    if args.report:
        from .evaluation.report import write_accuracy_report

        write_accuracy_report(args.report, res.accuracy, colours=res.colours)
    print(res.accuracy.summary())
    for name, acc, n in zip(res.accuracy.class_names, res.accuracy.per_class_accuracy, res.accuracy.support):
        print(f"  {name:<24} {acc:7.4f}  (n={n})")


def _split(args, progress):
    from .io.labels import split_label_raster

    res = split_label_raster(args.labels, args.fraction, args.seed, args.first, args.second,
                             mode=args.mode, block_size=args.block_size, buffer=args.buffer,
                             nodata_values=args.label_nodata, names_file=args.class_names)
    print(f"{args.first}: {sum(res.first.values())} pixels\n{args.second}: {sum(res.second.values())} pixels")


def _baselines(args, progress):
    from .evaluation.baselines import format_table, run_baselines

    rows = []
    if args.compare:
        with open(args.compare, encoding="utf-8") as f:
            figures = json.load(f)
        rows.append(("rsvl (this model)", figures["oa"], figures["aa"], figures["kappa"]))
    rows += [(b.name, b.accuracy.oa, b.accuracy.aa, b.accuracy.kappa)
             for b in run_baselines(_layers(args), args.train, args.test, seed=args.seed)]
    print(format_table(rows))


def _info(args, progress):
    from . import api

    print(json.dumps(api.describe_model(args.model), indent=2))


def _demo(args, progress):
    from .demo import run_demo

    run_demo(args.sample, args.out, epochs=args.epochs, progress=progress)


COMMANDS = {  # subcommand -> function(args, progress); build_parser() defines each one's options
    "train": _train, "classify": _classify, "query": _query, "pretrain": _pretrain, "distill": _distill,
    "retrieve": _retrieve, "evaluate": _evaluate, "split": _split, "baselines": _baselines, "info": _info,
    "demo": _demo, "explore": _explore,
}


def run(args) -> int:
    progress = _progress(args.quiet)
    if getattr(args, "report", None):  # before the work, not after it
        from .io.atomic import check_extension, check_outputs

        check_extension("--report", args.report, "report")

        check_outputs([("--output", getattr(args, "output", None), 0), ("--report", args.report, 0)])
    command = COMMANDS[args.command]
    return command(args, progress) or 0


# Processing parameter names the backend's messages use -> the option a CLI user typed, where
# the option's name is not the parameter's (the rest map by name: TILE_SIZE -> --tile-size).
FLAG_ALIASES = {
    "OUTPUT_FIRST": "--first", "OUTPUT_SECOND": "--second", "PROMPTS": "--prompt", "OUTPUT_MODEL": "--output",
    "TRAINING": "--labels", "INPUT": "--classification", "OUTPUT_JSON": "--json", "OUTPUT_CSV": "--csv",
    "OUTPUT_REPORT": "--report", "BAND_GROUPS": "--band-groups", "VALUE_SCALE": "--value-scale",
    "TEMPLATES": "--template", "QUERY": "--query", "OUTPUT_SIMILARITY": "--output-similarity",
    "INPUT_HSI": "--hsi", "INPUT_LIDAR": "--lidar", "INPUT_SAR": "--sar", "INPUT_MS": "--ms",
    "REFERENCE_GRID": "--reference",
}


def as_flags(message: str, parser: argparse.ArgumentParser, command: Optional[str]) -> str:
    """``message`` with the Processing parameter names it uses written as the options of
    ``command`` (``FOUNDATION_MODEL`` -> ``--foundation-model``); names the command has no
    option for stay as they are."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    p = sub.choices.get(command) if sub and command else None
    if p is None:
        return message
    options = {o for a in p._actions for o in a.option_strings if o.startswith("--")}
    flags = {a.dest.upper(): next(o for o in a.option_strings if o.startswith("--"))
             for a in p._actions if any(o.startswith("--") for o in a.option_strings)}
    flags.update({name: flag for name, flag in FLAG_ALIASES.items() if flag.split()[0] in options})

    def flag(m):
        return flags.get(m.group(0), m.group(0))

    return re.sub(r"(?<![\w-])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?![\w-])", flag, message)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    # rsvl's messages on stderr, once: its own handler, not the root logger's (libraries such as
    # open_clip log through the root logger and configure it, which printed them twice)
    logger = logging.getLogger("rsvl")
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        return run(args)
    except CancelledError as exc:
        print(f"rsvl: cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C: outputs are written to temporary files, moved into place only when done
        print("\nrsvl: interrupted; no half-written output was left behind", file=sys.stderr)
        return 130
    except RsvlError as exc:
        print(f"\nrsvl: error: {as_flags(' '.join(str(exc).split()), parser, args.command)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        message = _missing_packages_message(exc, args.command)
        if not message:
            raise
        print(f"\nrsvl: error: {message}", file=sys.stderr)
        return 2


def _missing_packages_message(exc: ModuleNotFoundError, command: str) -> str:
    """The dependency check's message when ``exc`` is about a package rsvl lists, else ''."""
    from .runtime import dependencies

    top = (exc.name or "").split(".")[0]
    groups = [g for g in dependencies.GROUPS
              if g == "runtime" or any(r.module == top for r in dependencies.read_requirements(g))]
    states = dependencies.check(None, groups)
    if not any(s.requirement.module == top and not s.ok for s in states):
        return ""
    return dependencies.missing_message(states, f"rsvl {command}")
