"""Backend entry points: :func:`train`, :func:`classify`, :func:`query`, :func:`evaluate`.

Each takes plain values (file paths, numbers, strings), a ``progress(fraction, message)``
callback and an ``is_cancelled()`` callback, writes its outputs atomically and returns a
dataclass with what it did. Errors are :class:`rsvl.backend.errors.RsvlError`.

Long module: one entry point per user job, each checking its inputs before reading anything
(the size follows the number of jobs; the work itself lives in the subpackages).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import __version__
from .errors import InputError, LabelError
from .evaluation.metrics import Accuracy, accuracy_from_matrix, confusion_matrix, write_accuracy
from .io.labels import ClassInfo, open_labels, prompt_classes
from .io.raster import LayerSpec, RasterStack, as_layers, compute_band_stats, missing_file
from .io.selection import fit_bands
from .runtime.jobs import IsCancelled, Job, Progress
from .text.encoders import apply_template, default_template
from .training.config import TrainConfig

log = logging.getLogger("rsvl")
EVALUATE_TILE = 1024  # pixels per side of the windows evaluate() reads at a time


@dataclass
class TrainResult:
    model_path: str
    classes: List[ClassInfo]
    history: List[dict]
    epochs_run: int
    best_epoch: int
    seconds: float
    samples_per_s: float
    n_train: int
    n_val: int
    validation: Optional[Accuracy]
    device: str
    header: dict = field(default_factory=dict)


FEW_LABELS = 5  # a class with fewer labelled pixels gets a warning (warn_few_labels)


MEMBER_SEED_STEP = 1000  # ensemble member k trains from seed + 1000·k


def _check_raster_outputs(rasters, layers, model_path: str) -> None:
    """Before a map is computed: its raster outputs (``(parameter, path)``) are GeoTIFFs
    that can be written and overwrite neither the model, an input layer nor each other."""
    from .io.atomic import check_geotiff, check_outputs

    inputs = [("MODEL", model_path)] + [(f"INPUT_{layer.modality.upper()}", layer.path) for layer in as_layers(layers)]
    check_outputs([(p, path, 0) for p, path in rasters], inputs=inputs)
    check_geotiff(rasters)


def warn_few_labels(classes, y: np.ndarray) -> List[str]:
    """Warn about classes with fewer than :data:`FEW_LABELS` labelled pixels: a network maps
    them from one or two spectra, so on other dates it predicts them far from where they
    are (README, accuracy: one cultivated pixel was mapped on 116 test pixels of another
    date to find 6 of 10). Returns the names warned about."""
    few = [(c.name, int(n)) for c, n in zip(classes, np.bincount(y, minlength=len(classes))) if n < FEW_LABELS]
    if few:
        log.warning("TRAINING: %s labelled pixel(s) only; such classes are mapped from guesswork, on other dates "
                    "especially. Label at least %d pixels of each class, or merge the class into another.",
                    ", ".join(f"{name!r} ({n})" for name, n in few), FEW_LABELS)
    return [name for name, _n in few]


def train(
    layers: Sequence[LayerSpec],
    labels: str,
    output_model: str,
    config: Optional[TrainConfig] = None,
    *,
    progress: Optional[Progress] = None,
    is_cancelled: Optional[IsCancelled] = None,
    **options,
) -> TrainResult:
    """Train a model with ``recipe`` (:mod:`rsvl.backend.training.recipes`) on ``layers`` from
    ``labels`` (class raster, or vector file with ``config.class_field``) and save it to
    ``output_model`` (.safetensors). ``epochs`` and ``learning_rate`` default to the
    recipe's. Without a ``prompt_template``, the template follows the inputs
    (:func:`rsvl.backend.text.encoders.default_template`).
    ``distributed``: data-parallel training, one process per rank under torchrun
    (:mod:`rsvl.backend.training.ddp`); rank 0 alone writes the model. ``semi_supervised``:
    unlabelled pixels of the scene train the model too, with pseudo-labels from its
    weight average (:class:`rsvl.backend.training.loop.TrainSettings`; recipes with a weight
    average only). ``members`` > 1: a deep ensemble of that many models trained from seeds
    ``seed``, ``seed`` + 1000, … on the same labels (and validation split), saved as one model
    file whose similarities are the members' mean (:class:`rsvl.backend.models.mmlgnet.Ensemble`);
    training and classification take ``members`` times as long.

    ``config``: the options (:class:`~rsvl.backend.training.config.TrainConfig`); keyword
    ``options`` override its fields (``train(layers, labels, out, epochs=5)``)."""
    import torch

    from .data.samples import extract_patches, sample_patches
    from .models.mmlgnet import Ensemble, MMLGNet, ModelConfig
    from .models.modelfile import ModelHeader, save_model
    from .runtime.device import resolve_device
    from .text.encoders import get_text_encoder
    from .training.loop import TrainSettings, unlabelled_pool_size
    from .training.loop import train as train_loop
    from .training.recipes import DEFAULT_RECIPE, get_recipe

    cfg = (config or TrainConfig()).replace(**options)
    cfg.validate()
    spec = get_recipe(cfg.recipe)
    cfg.recipe = spec.name
    if cfg.band_groups_file and not spec.uses_band_groups_file:
        raise InputError("BAND_GROUPS applies to RECIPE band-groups")
    recipe_settings = {k: v for k, v in spec.settings.items() if k not in ("epochs", "learning_rate")}
    if cfg.epochs is not None:  # the user's length, exactly (a recipe's minimum of steps serves its default)
        recipe_settings.pop("min_steps", None)
    if cfg.semi_supervised:
        if not recipe_settings.get("ema"):
            raise InputError(f"SEMI_SUPERVISED needs a recipe with a weight average (its teacher): RECIPE "
                             f"{DEFAULT_RECIPE}, not {cfg.recipe}")
        recipe_settings["unlabelled_weight"] = 1.0
    cfg.epochs = int(spec.settings["epochs"]) if cfg.epochs is None else cfg.epochs
    cfg.learning_rate = float(spec.settings["learning_rate"]) if cfg.learning_rate is None else cfg.learning_rate
    from .io.atomic import check_extension, check_outputs

    check_extension("OUTPUT_MODEL", output_model, "model")
    check_outputs([("OUTPUT_MODEL", output_model, 0)])  # writable, before reading anything
    layers = as_layers(layers)
    if not (cfg.prompt_template or "").strip():
        cfg.prompt_template = default_template({layer.modality for layer in layers})
    apply_template(cfg.prompt_template, ["x"])  # validates the template early
    job = Job(progress, is_cancelled)
    ranks = None
    if cfg.distributed:
        from .training.ddp import check_batch_size, start

        ranks = start(cfg.device)
        check_batch_size(cfg.batch_size, ranks.world_size)
    dev = ranks.device if ranks else resolve_device(cfg.device)
    from .runtime.precision import choose_training

    precision = choose_training(cfg.precision, dev).name  # before any reading: float16 on a CPU fails now
    with RasterStack(layers, reference=cfg.reference, align=cfg.align) as stack:
        job.step(0.0, "reading labels")
        label_source = open_labels(labels, stack.grid, cfg.class_field, class_name_field=cfg.class_name_field,
                                   nodata_values=cfg.label_nodata, names_file=cfg.class_names)
        try:
            if not label_source.classes:
                raise LabelError(f"TRAINING {os.path.basename(labels)!r} has no labelled pixel on the input grid")
            stats, selection = fit_bands(stack, cfg.bad_bands or "", job=job.span(0.0, 0.1))
            patches, codes, _pos = extract_patches(stack, label_source, stats, cfg.patch_size, job=job.span(0.1, 0.15))
            label_classes = label_source.classes
            unlabelled = None
            if recipe_settings.get("unlabelled_weight", 0) > 0:
                unlabelled = sample_patches(stack, stats, cfg.patch_size, unlabelled_pool_size(patches), cfg.seed,
                                            job.span(0.15, 0.18))
                log.info("semi-supervised: %d unlabelled pixels of the scene", len(next(iter(unlabelled.values()))))
        finally:
            label_source.close()
        band_counts, band_names, grid = stack.band_counts(), stack.band_names(), stack.grid
    classes = [c for c in label_classes if c.code in set(codes.tolist())]
    if len(classes) < 2:
        raise LabelError(
            f"TRAINING holds {len(classes)} class(es) on valid pixels; a classifier needs at least two"
        )
    index_of = {c.code: i for i, c in enumerate(classes)}
    y = np.asarray([index_of[c] for c in codes], dtype=np.int64)
    warn_few_labels(classes, y)

    job.step(0.15, "encoding class prompts")
    encoder = get_text_encoder(cfg.text_encoder)
    prompts = apply_template(cfg.prompt_template, [c.name for c in classes])
    text = encoder.encode(prompts)

    from .training.recipes import RecipeInputs

    setup = spec.prepare(RecipeInputs(band_names=band_names, class_names=[c.name for c in classes],
                                      encode=encoder.encode, band_groups_file=cfg.band_groups_file))
    if setup.description:
        log.info("%s", setup.description)
    group_text = setup.group_text
    config = ModelConfig(bands=band_counts, embed_dim=encoder.dim, patch_size=cfg.patch_size, **setup.config)
    cfg.members = int(cfg.members)
    models, outcomes, seeds = [], [], [cfg.seed + MEMBER_SEED_STEP * k for k in range(cfg.members)]
    for k, member_seed in enumerate(seeds):
        torch.manual_seed(member_seed)
        model = MMLGNet(config, n_classes=len(classes))
        model.class_embeddings.copy_(text)
        if cfg.pretrained:
            from .training.pretrain import load_pretrained

            load_pretrained(cfg.pretrained, model)
            if not k:
                log.info("encoders start from %s (rsvl:pretrain)", os.path.basename(cfg.pretrained))
        if not k:
            size = sum(p.numel() * 4 for p in model.state_dict().values())
            check_outputs([("OUTPUT_MODEL", output_model, 2 * cfg.members * size)])
        if cfg.members > 1:
            log.info("ensemble member %d of %d (cfg.seed %d)", k + 1, cfg.members, member_seed)
        settings = TrainSettings(cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.validation_fraction, cfg.patience,
                                 member_seed, cfg.device,
                                 cfg.loss, augment=cfg.augment, balanced=cfg.balanced, split_seed=cfg.seed, precision=precision,
                                 **recipe_settings)
        span = job.span(0.2 + 0.77 * k / cfg.members, 0.2 + 0.77 * (k + 1) / cfg.members)
        outcomes.append(train_loop(model, patches, y, settings, dev, span, stats=stats, group_text=group_text,
                                   ranks=ranks, unlabelled=unlabelled))
        models.append(model)
    outcome = outcomes[0]
    if cfg.members > 1:
        model = Ensemble(models)
    seconds = sum(o.seconds for o in outcomes)
    samples_per_s = sum(o.samples_per_s * o.seconds for o in outcomes) / max(seconds, 1e-9)

    validation = None
    if outcome.val_index is not None and outcome.val_index.size:
        # an ensemble's: the members' mean similarity (they share the validation split)
        val_pred = (outcome.val_pred if cfg.members == 1 else
                    np.mean([o.val_similarity for o in outcomes], axis=0).argmax(1))
        matrix = confusion_matrix(y[outcome.val_index], val_pred, range(len(classes)))
        validation = accuracy_from_matrix(matrix, [c.code for c in classes], [c.name for c in classes])
    training = {
        "labels": os.path.basename(labels), "class_field": cfg.class_field, "class_name_field": cfg.class_name_field,
        "n_samples": int(y.size),
        "n_train": int(y.size if outcome.refit else y.size - (outcome.val_index.size if outcome.val_index is not None else 0)),
        "n_val": int(outcome.val_index.size if outcome.val_index is not None else 0),
        "refit": outcome.refit, "schedule": settings.schedule,
        "class_counts": {c.name: int((y == i).sum()) for i, c in enumerate(classes)},
        "epochs_run": outcome.epochs_run, "best_epoch": outcome.best_epoch, "stopped_early": outcome.stopped_early,
        "seconds": round(seconds, 3), "samples_per_s": round(samples_per_s, 1),
        "device": str(dev), "precision": precision, "seed": cfg.seed, "loss": cfg.loss, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate, "validation_fraction": cfg.validation_fraction, "patience": cfg.patience,
        "recipe": cfg.recipe, "augment": cfg.augment, "balanced": cfg.balanced, "semi_supervised": bool(cfg.semi_supervised),
        "mixup": settings.mixup,
        "unlabelled_pixels": int(len(next(iter(unlabelled.values())))) if unlabelled else 0,
        "pseudo_labelled": None if outcome.pseudo_labelled is None else round(outcome.pseudo_labelled, 4),
        "ema": outcome.ema, "ema_scores": outcome.ema_scores,
        "members": cfg.members, "member_seeds": seeds, "member_ema": [o.ema for o in outcomes],
        "pretrained": os.path.abspath(cfg.pretrained) if cfg.pretrained else None,
        "history": outcome.history, "validation": validation.to_json() if validation else None,
        "processes": ranks.world_size if ranks else 1,
        "reference_grid": grid.to_json(), "torch": torch.__version__,
    }
    header = ModelHeader(
        config=config, band_names=band_names, stats=stats, classes=classes, prompt_template=cfg.prompt_template,
        text_encoder=encoder.id, training=training, members=cfg.members, bands=selection,
    )
    job.check()
    if ranks is None or ranks.is_main:
        save_model(output_model, model.cpu(), header)
    if ranks is not None:
        from .training.ddp import finish

        finish()
    job.report(1.0, f"model saved to {output_model}")
    log.info("trained %d classes on %d samples in %.1f s%s; model: %s", len(classes), y.size, seconds,
             f" ({cfg.members} ensemble cfg.members)" if cfg.members > 1 else "", output_model)
    return TrainResult(
        model_path=output_model, classes=classes, history=outcome.history, epochs_run=outcome.epochs_run,
        best_epoch=outcome.best_epoch, seconds=seconds, samples_per_s=samples_per_s,
        n_train=training["n_train"], n_val=training["n_val"], validation=validation, device=str(dev),
        header=header.to_json(),
    )


def train_fewshot(checkpoint: str, layers: Sequence[LayerSpec], labels: str, output_model: str, **kwargs):
    """Few-shot adaptation of a pretrained checkpoint (FOUNDATION_MODEL): see
    :mod:`rsvl.backend.foundation.fewshot`."""
    from .foundation.checkpoint import checkpoint_kind
    from .foundation.fewshot import train_fewshot as run

    checkpoint_kind(checkpoint, "FOUNDATION_MODEL")  # a text or junk file is named as the parameter it came in
    return run(checkpoint, as_layers(layers), labels, output_model, **kwargs)


@dataclass
class ClassifyResult:
    output: Optional[str]
    confidence: Optional[str]
    similarity: Optional[str]
    classes: List[ClassInfo]
    pixels: int
    seconds: float
    method: str


def _open_for_model(model_path: str, layers, reference, align, device, force: bool = False):
    from .models.modelfile import load_model
    from .runtime.device import resolve_device

    dev = resolve_device(device)
    model, header = load_model(model_path, dev)
    stack = RasterStack(as_layers(layers), reference=reference, align=align)
    try:
        header.check_stack(stack, force=force)
    except Exception:
        stack.close()
        raise
    return model, header, stack, dev


def _inference(scheduler: Optional[str], model_path: str, device: str):
    """The whole-scene engine: :func:`~rsvl.backend.mapping.inference.run_inference` in this process,
    or with ``scheduler`` (``local[:N]`` or a Dask scheduler address) its twin that computes
    the windows on a Dask cluster (:func:`rsvl.backend.mapping.cluster.run_on_cluster`; workers load
    ``model_path`` on ``device``). Both write the same files."""
    from .mapping.inference import run_inference

    if not (scheduler or "").strip():
        return run_inference
    from functools import partial

    from .mapping.cluster import run_on_cluster

    return partial(run_on_cluster, scheduler=scheduler.strip(), model_path=model_path, worker_device=device)


def _no_scheduler_for(kind: str, scheduler: Optional[str]) -> None:
    if (scheduler or "").strip():
        raise InputError(f"DASK_SCHEDULER applies to rsvl models; a {kind} runs in this process (leave it empty)")


def _precision(precision: Optional[str], model, stack, stats, text, dev, method: str):
    """The precision of an rsvl model's map (:func:`rsvl.backend.runtime.precision.choose`):
    for ``auto``, bfloat16 only where the device has it natively and the model's map agrees
    with float32 on a probe window of this scene."""
    from .mapping.inference import dense_agreement
    from .runtime.precision import choose

    if method != "dense":
        if (precision or "auto").strip().lower() not in ("auto", "float32"):
            raise InputError(f"PRECISION {precision} needs the dense engine (METHOD dense)")
        return choose("float32", dev)
    return choose(precision, dev, check=lambda dtype: dense_agreement(model, stack, stats, text, dev, dtype))


NORMALIZE = ("model", "scene")


def normalisation(stack: RasterStack, header, normalize: str, job: Job):
    """The band statistics inputs are standardised with: the training scene's (``model``,
    the default), or this scene's own (``scene``: for another date or sensor, whose bands
    differ from the training scene's by a gain and an offset; it assumes a similar mix of
    land cover, and costs one more pass over the inputs)."""
    if normalize not in NORMALIZE:
        raise InputError(f"NORMALIZE must be one of {', '.join(NORMALIZE)} (got {normalize!r})")
    if normalize == "model":
        return header.stats
    log.info("NORMALIZE=scene: inputs standardised by their own band statistics, not the training scene's")
    return compute_band_stats(stack, job=job)


def classify(
    model_path: str,
    layers: Sequence[LayerSpec],
    output: str,
    *,
    confidence: Optional[str] = None,
    similarity: Optional[str] = None,
    method: str = "dense",
    tile_size: int = 256,
    batch_size: int = 4096,
    device: str = "auto",
    reference: Optional[int] = None,
    align: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
    is_cancelled: Optional[IsCancelled] = None,
    normalize: str = "model",
    scheduler: Optional[str] = None,
    precision: str = "auto",
) -> ClassifyResult:
    """Classify a whole scene with a trained model into a class raster (codes, colour
    table and class names), optionally a confidence raster and a per-class similarity stack.
    Inputs are checked against the model (band counts; band order and pixel size, which
    ``force`` accepts with a warning: see :meth:`ModelHeader.check_inputs`). ``scheduler``:
    compute the windows on a Dask cluster (``local[:N]`` or ``tcp://HOST:PORT``; same files).
    ``precision``: auto, float32, bfloat16 or float16 (:mod:`rsvl.backend.runtime.precision`)."""
    from .foundation.fewshot import classify_fewshot
    from .foundation.fewshot_file import model_kind

    if not output:
        raise InputError("OUTPUT is required")
    _check_raster_outputs([("OUTPUT", output), ("OUTPUT_CONFIDENCE", confidence), ("OUTPUT_SIMILARITY", similarity)],
                          layers, model_path)
    if os.path.isfile(model_path) and model_kind(model_path) == "fewshot":
        _no_scheduler_for("few-shot model", scheduler)
        classes, pixels, seconds = classify_fewshot(
            model_path, layers, output, confidence=confidence, similarity=similarity, device=device,
            reference=reference, progress=progress, is_cancelled=is_cancelled, precision=precision)
        return ClassifyResult(output, confidence, similarity, classes, pixels, seconds, "fewshot")
    model, header, stack, dev = _open_for_model(model_path, layers, reference, align, device, force)
    with stack:
        job = Job(progress, is_cancelled)
        stats = normalisation(stack, header, normalize, job.span(0.0, 0.1))
        choice = _precision(precision, model, stack, stats, model.class_embeddings, dev, method)
        res = _inference(scheduler, model_path, device)(
            model, stack, stats, model.class_embeddings, classes=header.classes, class_path=output,
            confidence_path=confidence, similarity_path=similarity, method=method, tile=tile_size,
            batch_size=batch_size, device=dev, job=job.span(0.1 if normalize == "scene" else 0.0, 1.0),
            dtype=choice.dtype,
        )
    return ClassifyResult(output, confidence, similarity, header.classes, res.pixels, res.seconds, method)


@dataclass
class QueryResult:
    similarity: str
    output: Optional[str]
    prompts: List[str]
    texts: List[str]
    classes: List[ClassInfo]
    seconds: float
    multi_label: bool = False  # output holds one 0/1 band per prompt (foundation checkpoints)
    model: str = "rsvl"  # "rsvl", or the preset of a foundation checkpoint


def query(
    model_path: str,
    layers: Sequence[LayerSpec],
    prompts: Sequence[str],
    output_similarity: str,
    *,
    output: Optional[str] = None,
    threshold: Optional[float] = None,
    use_template: bool = True,
    method: str = "dense",
    tile_size: int = 0,
    device: str = "auto",
    reference: Optional[int] = None,
    align: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
    is_cancelled: Optional[IsCancelled] = None,
    preset: str = "auto",
    templates: Optional[Sequence[str]] = None,
    stride: Optional[int] = None,
    resolution: str = "tile",
    multi_label: bool = False,
    bands: Optional[str] = None,
    value_scale: str = "auto",
    offset: float = 0.0,
    normalize: str = "model",
    scheduler: Optional[str] = None,
    precision: str = "auto",
) -> QueryResult:
    """Open-vocabulary query: cosine similarity of every pixel's embedding to each free-text
    prompt (one float band per prompt, named after it) and optionally the argmax map, with
    pixels whose best similarity is below ``threshold`` left as nodata.

    ``model_path`` is an rsvl model, or a pretrained vision-language checkpoint
    (Llama3-MS-CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP, open_clip): then the scene is mapped
    from text alone (:func:`rsvl.backend.foundation.zeroshot.zeroshot_map`; ``preset``,
    ``templates``, ``stride``, ``resolution``, ``multi_label``, ``bands``, ``value_scale``,
    ``offset`` apply, and ``tile_size`` 0 means the model's input size; for an rsvl model, 256). ``scheduler``:
    compute an rsvl model's windows on a Dask cluster (``local[:N]`` or ``tcp://HOST:PORT``)."""
    from .foundation.fewshot_file import model_kind, read_fewshot
    from .foundation.zeroshot import zeroshot_map
    from .text.encoders import get_text_encoder

    _check_raster_outputs([("OUTPUT_SIMILARITY", output_similarity), ("OUTPUT", output)], layers, model_path)
    kind = model_kind(model_path) if os.path.isfile(model_path) else "rsvl"
    if kind == "fewshot":  # prompts in the space of the checkpoint the model adapts
        fs, _head = read_fewshot(model_path)
        model_path, preset, tile_size, stride = fs.checkpoint, fs.preset, tile_size or fs.tile, stride or fs.stride
        templates, bands, value_scale, offset = templates or fs.templates, bands or fs.bands, fs.value_scale, fs.offset
        if resolution == "tile":
            resolution = fs.resolution
    if kind in ("fewshot", "checkpoint"):
        _no_scheduler_for("pretrained checkpoint" if kind == "checkpoint" else "few-shot model", scheduler)
        res = zeroshot_map(
            model_path, layers, prompts, output_similarity=output_similarity, output=output, preset=preset,
            templates=templates, tile_size=tile_size or None, stride=stride, resolution=resolution,
            multi_label_output=multi_label, threshold=threshold, bands=bands, scale=value_scale, offset=offset,
            device=device, reference=reference, progress=progress, is_cancelled=is_cancelled, precision=precision)
        return QueryResult(res.similarity, res.output, res.prompts, res.prompts, res.classes, res.seconds,
                           multi_label=res.multi_label, model=res.preset)
    tile_size = tile_size or 256
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise InputError("PROMPTS is empty: give at least one text prompt, one per line")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise InputError(f"THRESHOLD is a cosine similarity in [-1, 1] (got {threshold})")
    job = Job(progress, is_cancelled)
    model, header, stack, dev = _open_for_model(model_path, layers, reference, align, device, force)
    with stack:
        job.step(0.0, "encoding prompts")
        encoder = get_text_encoder(header.text_encoder)
        if encoder.dim != header.config.embed_dim:
            raise InputError(
                f"text encoder {encoder.id} gives {encoder.dim}-d embeddings, the model expects {header.config.embed_dim}"
            )
        texts = apply_template(header.prompt_template, prompts) if use_template else list(prompts)
        text = encoder.encode(texts)
        classes = prompt_classes(prompts, header.classes)
        stats = normalisation(stack, header, normalize, job.span(0.05, 0.15))
        choice = _precision(precision, model, stack, stats, text, dev, method)
        res = _inference(scheduler, model_path, device)(
            model, stack, stats, text, classes=classes, class_path=output, similarity_path=output_similarity,
            similarity_names=prompts, threshold=threshold, method=method, tile=tile_size, device=dev,
            job=job.span(0.15, 1.0), dtype=choice.dtype,
        )
    return QueryResult(output_similarity, output, prompts, texts, classes, res.seconds)


def open_explorer(model_path: str, layers: Sequence[LayerSpec], *, reference: Optional[int] = None, align: bool = True,
                  device: str = "auto", force: bool = False, normalize: str = "model", cache=None,
                  preset: str = "auto", templates: Optional[Sequence[str]] = None, tile_size: Optional[int] = None,
                  stride: Optional[int] = None, resolution: str = "tile", bands: Optional[str] = None,
                  value_scale: str = "auto", offset: float = 0.0, precision: str = "auto"):
    """An :class:`~rsvl.backend.mapping.explore.Explorer` of an rsvl model, or of a pretrained
    checkpoint (:class:`~rsvl.backend.foundation.explore.CheckpointExplorer`: ``preset`` …
    ``offset`` as in :func:`query`), on ``layers`` (checked as :func:`query` checks them;
    ``precision`` as in :func:`classify`; a checkpoint's image tower is checked on probe
    windows by the embeddings' cosine alone, since no prompt is known yet):
    embed a view once, then score prompts and clicked pixels against it. Close it (or use it
    in a ``with``) to release the layers."""
    from .mapping.explore import Explorer

    if not os.path.isfile(model_path):
        raise InputError(f"MODEL file {model_path!r} does not exist")
    from .foundation.fewshot_file import model_kind

    kind = model_kind(model_path)
    if kind == "fewshot":
        raise InputError(f"MODEL {os.path.basename(model_path)!r} is a few-shot model: explore its checkpoint "
                         "(the file it names) or an rsvl:train model")
    if kind == "checkpoint":
        from .foundation.checkpoint import checkpoint_kind
        from .foundation.explore import CheckpointExplorer

        checkpoint_kind(model_path, "MODEL")
        return CheckpointExplorer(model_path, as_layers(layers), preset=preset, templates=templates,
                                  tile_size=tile_size, stride=stride, resolution=resolution, bands=bands,
                                  scale=value_scale, offset=offset, device=device, reference=reference, cache=cache,
                                  precision=precision)
    model, header, stack, dev = _open_for_model(model_path, layers, reference, align, device, force)
    try:
        stats = normalisation(stack, header, normalize, Job())
        choice = _precision(precision, model, stack, stats, model.class_embeddings, dev, "dense")
        return Explorer(model, header, stack, dev, model_path, stats, cache=cache, dtype=choice.dtype)
    except Exception:
        stack.close()
        raise


@dataclass
class EvaluateResult:
    accuracy: Accuracy
    json_path: Optional[str]
    csv_path: Optional[str]
    n_unclassified: int
    colours: Dict[int, tuple] = field(default_factory=dict)


def evaluate(
    classification: str,
    reference: str,
    *,
    class_field: Optional[str] = None,
    class_name_field: Optional[str] = None,
    label_nodata=None,
    class_names: Optional[str] = None,
    output_json: Optional[str] = None,
    output_csv: Optional[str] = None,
    progress: Optional[Progress] = None,
    is_cancelled: Optional[IsCancelled] = None,
) -> EvaluateResult:
    """Compare a class raster with reference labels (raster, or vector + class field,
    matched to the classification's class names) on the classification's grid.
    ``label_nodata`` and ``class_names`` read a reference raster as training does
    (LABEL_NODATA, CLASS_NAMES: see :class:`~rsvl.backend.io.labels.RasterLabels`)."""
    from collections import Counter

    import rasterio

    from .io.atomic import check_outputs
    from .io.labels import RasterLabels
    from .io.raster import Grid
    from .io.windows import tile_windows

    job = Job(progress, is_cancelled)
    if missing_file(classification):
        raise InputError(f"INPUT classification {classification!r} does not exist")
    check_outputs([("OUTPUT_JSON", output_json, 0), ("OUTPUT_CSV", output_csv, 0)],
                  inputs=[("INPUT", classification), ("REFERENCE", reference)])
    try:
        with rasterio.open(classification) as ds:
            grid = Grid.of(ds)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"INPUT classification {classification!r} cannot be read as a raster ({exc}): give the "
                         "class raster rsvl:classify wrote (a vector map is a REFERENCE, not an INPUT)") from exc
    predicted = RasterLabels(classification, grid, legend=True)
    try:
        job.step(0.05, "reading reference labels")
        ref = open_labels(reference, grid, class_field, classes=predicted.classes, class_name_field=class_name_field,
                          nodata_values=label_nodata, names_file=class_names)
        try:
            # Window by window: confusion counts of (reference, predicted) code pairs.
            pairs: Counter = Counter()
            n_unclassified = n_labelled = 0
            windows = list(tile_windows(grid.width, grid.height, EVALUATE_TILE))
            for i, window in enumerate(windows):
                job.step(0.1 + 0.85 * i / len(windows), "comparing")
                r, p = ref.read(window).astype(np.int64), predicted.read(window).astype(np.int64)
                labelled = r > 0
                n_labelled += int(labelled.sum())
                n_unclassified += int((labelled & (p == 0)).sum())
                # Unclassified pixels (code 0: nodata, or below a query's threshold) are pairs too.
                keys, counts = np.unique(r[labelled] * 2**20 + p[labelled], return_counts=True)
                pairs.update(dict(zip(keys.tolist(), counts.tolist())))
            ref_classes, matching, legend_only = ref.classes, ref.matching, predicted.legend_only
        finally:
            ref.close()
    finally:
        predicted.close()
    if not n_labelled:
        raise LabelError(f"REFERENCE {os.path.basename(reference)!r} has no labelled pixel on the classification grid")
    by_code: Dict[int, ClassInfo] = {c.code: c for c in ref_classes}
    by_code.update({c.code: c for c in predicted.classes})
    if n_unclassified:  # an "unclassified" column: abstentions count against OA, AA and kappa
        by_code[0] = ClassInfo(0, "unclassified", (255, 255, 255))
    # a legend class that no pixel of the map holds has a row only where the reference has it
    seen = {key >> 20 for key in pairs}
    codes = sorted(c for c in by_code if c not in legend_only or c in seen)
    index = {c: i for i, c in enumerate(codes)}
    matrix = np.zeros((len(codes), len(codes)), dtype=np.int64)
    for key, count in pairs.items():
        matrix[index[key >> 20], index[key & (2**20 - 1)]] += count
    acc = accuracy_from_matrix(matrix, codes, [by_code[c].name for c in codes])
    acc.n_unclassified, acc.matching = n_unclassified, matching
    log.info("reference classes matched to the map's by %s%s", matching,
             " (both have class names)" if matching == "name" else " (one side has no class names)")
    if n_unclassified:
        log.warning("%d of %d reference pixels are unclassified in the map (coverage %.4f); they count as errors",
                    n_unclassified, n_labelled, acc.coverage)
    write_accuracy(acc, output_json, output_csv)
    job.report(1.0, "compared")  # the summary is printed once, by the caller
    return EvaluateResult(acc, output_json, output_csv, n_unclassified,
                          {code: tuple(c.colour) for code, c in by_code.items()})


def describe_model(model_path: str) -> dict:
    """The model file's JSON header (no weights loaded): an rsvl:train model's, or a few-shot
    model's (rsvl:train with FOUNDATION_MODEL)."""
    from .foundation.fewshot_file import describe_fewshot, model_kind
    from .models.modelfile import read_header

    if not missing_file(model_path) and model_kind(model_path) == "fewshot":
        return describe_fewshot(model_path)
    return read_header(model_path).to_json()


__all__ = ["train", "classify", "query", "evaluate", "open_explorer", "describe_model", "LayerSpec", "__version__"]
