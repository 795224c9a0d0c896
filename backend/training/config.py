"""The options of a training run, in one place: :class:`TrainConfig`.

The CLI (``train`` flags: :func:`add_arguments`, :meth:`TrainConfig.from_namespace`), the
Processing algorithm ``rsvl:train`` (parameters named by each field's ``param``:
``plugin/algorithms/train.py`` reads them through the field list) and the torchrun path
(the CLI with ``--distributed``) all build a :class:`TrainConfig`, and
:func:`rsvl.backend.api.train` takes one. A new training option is one field here, with
its flag, help and Processing name; a test checks that the CLI and the Processing
algorithm expose every field that names them.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..errors import InputError
from ..runtime.precision import PRECISIONS
from .recipes import DEFAULT_RECIPE, RECIPE_NAMES

LOSSES = ("supervised", "clip")  # rsvl.backend.models.mmlgnet.LOSSES (here without importing torch)
DEVICES = ("auto", "cpu", "cuda")


def option(default, flag: Optional[str] = None, help: str = "", param: Optional[str] = None,  # noqa: A002
           choices: Optional[Tuple[str, ...]] = None, minimum: Optional[float] = None):
    """A field with its CLI flag (None: no flag of its own), help, Processing parameter
    name (None: not a Processing parameter), choices and minimum."""
    return field(default=default, metadata={"flag": flag, "help": help, "param": param, "choices": choices,
                                            "minimum": minimum})


@dataclass
class TrainConfig:
    """Every option of ``train`` but the inputs (layers, labels, output model)."""

    class_field: Optional[str] = option(None, "--class-field", "class field of vector labels (string or integer)")
    class_name_field: Optional[str] = option(
        None, "--class-name-field", "for an integer class field: the field with the class names")
    prompt_template: Optional[str] = option(
        None, "--prompt-template", "class prompt, {} is the class name (default: follows the inputs, e.g. 'a "
        "multispectral satellite image of {}' for MS, 'the hyperspectral patch of {}' with HSI)", "PROMPT_TEMPLATE")
    text_encoder: str = option(
        "minilm", "--text-encoder", "minilm (built-in), a local HF dir, open_clip:DIR, open_clip:ARCH:CHECKPOINT or "
        "llm:DIR", "TEXT_ENCODER")
    patch_size: int = option(11, "--patch-size", "patch side in pixels (odd)", "PATCH_SIZE", minimum=1)
    epochs: Optional[int] = option(
        None, "--epochs", "default: the recipe's (spectral-spatial: 60, the schedule's length; mmlgnet and "
        "band-groups: at most 100, early stopping); few-shot heads: 100", "EPOCHS", minimum=1)
    batch_size: int = option(128, "--batch-size", "samples per step (with --distributed: the global batch)",
                             "BATCH_SIZE", minimum=2)
    learning_rate: Optional[float] = option(
        None, "--learning-rate", "default: the recipe's (spectral-spatial: 1e-3, the one-cycle peak; mmlgnet, "
        "band-groups: 1e-4)", "LEARNING_RATE")
    validation_fraction: float = option(
        0.2, "--validation-fraction", "share of each class held out for the validation figures (mmlgnet, "
        "band-groups: and early stopping; spectral-spatial refits on every label afterwards)", "VALIDATION_FRACTION")
    patience: int = option(15, "--patience", "early stopping (mmlgnet, band-groups)", "PATIENCE", minimum=1)
    device: str = option("auto", "--device", "auto (CUDA when torch sees a GPU), cpu or cuda", "DEVICE", DEVICES)
    seed: int = option(0, "--seed", "random seed (the validation split and the weights)", "SEED", minimum=0)
    loss: str = option(
        "supervised", "--loss", "supervised: same-class pairs in a batch are positives (default); clip: the "
        "paper's, each sample's own prompt its only positive (the same loss with one prompt per class and "
        "no mixup: identical prompts give identical scores; they differ with mixup and band groups)", "LOSS",
        LOSSES)
    reference: Optional[int] = option(None)  # the CLI's --reference and the dialog's inputs give it
    align: bool = option(True)  # the CLI's --no-align
    augment: bool = option(
        False, "--augment", "spectral gain/offset jitter, flips and 90-degree rotations of the training patches "
        "(for other dates and sensors)", "AUGMENT")
    balanced: bool = option(False, "--balanced", "class-balanced epochs (rare classes seen as often)", "BALANCED")
    pretrained: Optional[str] = option(None, "--pretrained", "start the encoders from an rsvl pretrain file",
                                       "PRETRAINED")
    recipe: str = option(
        DEFAULT_RECIPE, "--recipe", "spectral-spatial (default: CNN branches + a per-pixel branch, one-cycle "
        "schedule), mmlgnet (the paper's) or band-groups (BP-LCZ band-group prompting)", "RECIPE",
        tuple(RECIPE_NAMES))
    band_groups_file: Optional[str] = option(None, "--band-groups", "band-groups: a JSON file of groups per modality",
                                             "BAND_GROUPS")
    bad_bands: Optional[str] = option(
        None, "--bad-bands", "bands to leave out, numbered from 1 in each input: '130-135, 165' (the HSI input's) "
        "or 'hsi:130-135; sar:2'; bands the data's metadata declares bad (ENVI bbl) and bands without any valid "
        "pixel are left out anyway", "BAD_BANDS")
    label_nodata: Optional[str] = option(
        None, "--label-nodata", "label raster values that mean 'no label', e.g. '-1' or '255' or '-1, 255' "
        "(default: the raster's nodata value, else 0); with another value, 0 is a class", "LABEL_NODATA")
    class_names: Optional[str] = option(
        None, "--class-names", "class names (and colours) for the label raster's codes: a QGIS .qml style, a .clr "
        "colour map with names, or a text/CSV file of 'code,name' lines (default: the raster's category names, or "
        "such a file beside it)", "CLASS_NAMES")
    distributed: bool = option(
        False, "--distributed", "data-parallel training, one process per rank: torchrun --nproc_per_node N -m "
        "rsvl.backend train … --distributed (gloo on CPUs, nccl on GPUs; --batch-size is the global batch; rank 0 "
        "writes the model and report)")
    semi_supervised: bool = option(
        False, "--semi-supervised", "unlabelled pixels of the scene train the model too, with pseudo-labels where "
        "its weight average is confident (spectral-spatial; for few labels: higher OA, rare classes may shrink)",
        "SEMI_SUPERVISED")
    members: int = option(
        1, "--members", "a deep ensemble: this many models from seeds SEED, SEED+1000, ... in one model file, their "
        "similarities averaged (steadier, most of all with few labels; N times the time)", "MEMBERS", minimum=1)

    precision: str = option(
        "auto", "--precision", "the forward pass's arithmetic: auto (bfloat16 autocast where the device has it natively: a CPU "
        "with AMX or AVX-512-BF16, a CUDA GPU of compute capability 8.0+; else float32), float32, bfloat16 or float16 "
        "(CUDA GPUs, with loss scaling); weights, losses and the saved model stay float32", "PRECISION",
        PRECISIONS)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the parameter for a value no run could use."""
        for f in fields():
            value, meta = getattr(self, f.name), f.metadata
            name = meta["param"] or f.name.upper()
            if meta["choices"] and value not in meta["choices"]:
                raise InputError(f"{name} must be one of {', '.join(meta['choices'])} (got {value!r})")
            if meta["minimum"] is not None and value is not None and value < meta["minimum"]:
                raise InputError(f"{name} must be at least {meta['minimum']} (got {value})")
        if self.patch_size % 2 == 0:
            raise InputError(f"PATCH_SIZE must be odd (got {self.patch_size}): the patch is centred on its pixel")
        if not 0 <= self.validation_fraction < 1:
            raise InputError(f"VALIDATION_FRACTION must be in [0, 1) (got {self.validation_fraction})")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise InputError(f"LEARNING_RATE must be positive (got {self.learning_rate})")

    def replace(self, **changes) -> TrainConfig:
        unknown = sorted(set(changes) - {f.name for f in fields()})
        if unknown:
            raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        """From the CLI's parsed ``train`` arguments (the layer options give reference and align)."""
        values = {f.name: getattr(args, f.name) for f in fields() if f.metadata["flag"]}
        return cls(**values, reference=args.reference, align=not args.no_align)


def fields():
    return dataclasses.fields(TrainConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` flags of every field that has one."""
    for f in fields():
        meta = f.metadata
        if not meta["flag"]:
            continue
        kwargs = {"dest": f.name, "default": f.default, "help": meta["help"] or None}
        if f.type in ("bool", bool):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = {"int": int, "Optional[int]": int, "float": float, "Optional[float]": float}.get(
                f.type, str)
            if meta["choices"]:
                kwargs["choices"] = list(meta["choices"])
        parser.add_argument(meta["flag"], **kwargs)
