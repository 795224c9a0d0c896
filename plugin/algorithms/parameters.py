"""Parameters shared by rsvl's algorithms, apart from the algorithm base class: enums whose
values are their names (:func:`static_enum`) and the values older saved files hold
(:func:`legacy_parameters`), the help panel and tooltips (:func:`short_help`,
:func:`parameter_texts`), the pretrained-checkpoint parameters and model-file checks."""

from __future__ import annotations

import re
from typing import Dict

from qgis.core import (
    NULL,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ...backend.foundation.presets import PRESETS  # plain data, no torch


def short_help(what: str, inputs: str, outputs: str, tip: str, url: str) -> str:
    """The Processing dialog's help panel: what the algorithm does, its inputs, its outputs,
    one tip and the link to every parameter's description (each parameter's own text is its
    tooltip: :meth:`RsvlAlgorithm.addParameter`)."""
    return (f"<p>{what}</p><p><b>Inputs</b>: {inputs}</p><p><b>Outputs</b>: {outputs}</p>"
            f"<p><b>Tip</b>: {tip}</p><p>Every parameter, with examples: <a href=\"{url}\">{url}</a> "
            "(hover a parameter for its description).</p>")


_PARAMETER_TEXT = re.compile(r"<b>([A-Z0-9_, ]+)</b>(.*?)(?=<b>[A-Z0-9_, ]+</b>|$)", re.S)


def parameter_texts(html: str) -> Dict[str, str]:
    """``{NAME: text}`` from help written as ``<b>NAME, OTHER</b>: text<br>…``."""
    out = {}
    for names, text in _PARAMETER_TEXT.findall(html):
        text = re.sub(r"^\s*(\([^)]*\))?\s*:?\s*", r"\1 ", text).replace("<br>", " ").strip()
        for name in (n.strip() for n in names.split(",")):
            if name and name not in out:
                out[name] = re.sub(r"\s+", " ", text).strip()
    return out


def static_enum(name: str, description: str, options, default: str, optional: bool = False):
    """An enum parameter whose values are its option names (``DEVICE=cpu`` in qgis_process and
    Model Designer files, not an index)."""
    return QgsProcessingParameterEnum(name, description, options=list(options), defaultValue=default,
                                      usesStaticStrings=True, optional=optional)


def legacy_parameters(alg, parameters: dict, feedback=None) -> dict:
    """``parameters`` with what files saved before rsvl 0.4 hold made current: an option index
    of a static-string enum becomes the option's name, ``PRESET=open_clip:ARCH`` becomes
    ``PRESET=open_clip`` + ``OPEN_CLIP_ARCH=ARCH``, and a renamed parameter takes its new name
    (with a deprecation warning when ``feedback`` is given and the new name is not set)."""
    out = dict(parameters)
    for old, new in alg.renamed.items():
        if out.get(old) is not None and out.get(new) is None:
            out[new] = out.pop(old)
            if feedback is not None:
                feedback.pushWarning(f"{old} is deprecated: it is called {new} since rsvl 0.4 (the value was used as "
                                     f"{new}); save the model or script again to update it")
    for d in alg.parameterDefinitions():
        value = out.get(d.name())
        if isinstance(d, QgsProcessingParameterEnum) and d.usesStaticStrings() and value is not None:
            options = d.options()
            if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()
                                                   and value.strip() not in options):
                index = int(value)
                if 0 <= index < len(options):
                    out[d.name()] = options[index]
    preset = out.get("PRESET")
    if isinstance(preset, str) and preset.startswith("open_clip:") and alg.parameterDefinition("OPEN_CLIP_ARCH"):
        out["PRESET"], out["OPEN_CLIP_ARCH"] = "open_clip", preset.split(":", 1)[1]
    return out


FOUNDATION_FILTER = ("rsvl model or pretrained checkpoint (*.safetensors *.rsvl *.pt *.pth *.bin *.ckpt);;"
                     "All files (*.*)")
# Plain data (no torch): the names a PRESET can take; open_clip + OPEN_CLIP_ARCH for any other checkpoint.
PRESET_CHOICES = ["auto", *PRESETS, "open_clip"]
LABEL_CONVENTIONS_HELP = (
    "<b>LABEL_NODATA</b> (advanced): the label raster values that mean 'no label', e.g. -1 or 255 or '-1, 255' "
    "(default: the raster's nodata value, else 0). When 0 is not among them, 0 is a class: value v is written "
    "as class code v + 1 in rsvl's class maps (0 = no data there), named 'class v' or by the legend.<br>"
    "<b>CLASS_NAMES</b> (advanced): class names (and colours) for the raster's values: a QGIS style (.qml, "
    "paletted), a .clr colour map with names, or a text/CSV file of 'code,name' lines. Default: the raster's "
    "category names, or such a file beside it with the same name (labels.qml, labels.csv, …).<br>"
)
BAD_BANDS_HELP = (
    "<b>BAD_BANDS</b> (advanced): bands to leave out, numbered from 1: '130-135, 165' (of the HSI input, or the "
    "only input) or 'hsi:130-135; sar:2'. Bands the data's metadata declares bad (ENVI bbl, as EnMAP-Box and "
    "GDAL's ENVI driver expose it) and bands without any valid pixel in the training layers are left out "
    "anyway, with a warning naming them. The model records the bands it kept (and their wavelengths where the "
    "data gives them); classify and query select the same bands from the layers they get, and refuse "
    "layers with another band count, other wavelengths, or other empty bands.<br>"
)
PRESET_HELP = (
    "<b>PRESET</b> (pretrained checkpoints): auto (recognised from the file), llama3-ms-clip, remoteclip-rn50, "
    "remoteclip-vit-b-32, remoteclip-vit-l-14, georsclip-vit-b-32, georsclip-vit-l-14, georsclip-vit-h-14, "
    "skyclip-vit-b-32, skyclip-vit-l-14, or open_clip for any other open_clip checkpoint.<br>"
    "<b>OPEN_CLIP_ARCH</b> (PRESET open_clip): the checkpoint's open_clip architecture, e.g. ViT-B-32, or "
    "local-dir:DIR for a folder holding open_clip_config.json.<br>"
    "<b>TEMPLATES</b>: prompt templates, one per line, each with {} or {c} where the prompt goes (default: the "
    "preset's ensemble; each prompt's templates are encoded, normalised, averaged and re-normalised).<br>"
    "<b>TILE_SIZE</b>, <b>STRIDE</b>: windows of TILE_SIZE pixels (0 = the model's input, 224) every STRIDE "
    "pixels (0 = half the tile); each is resized to the model input.<br>"
    "<b>BANDS</b>: the input bands in the model's order, as band codes or 1-based numbers (default: from band "
    "descriptions, else a 13-band L1C or 12-band L2A stack by count, else an RGB raster for RGB models).<br>"
    "<b>VALUE_SCALE</b>: raster value × this = digital number (reflectance × 10000); auto: integers as they are, "
    "floats in reflectance range × 10000. <b>OFFSET</b>: subtracted from digital numbers (1000 for L2A of "
    "processing baseline 04.00 and later).<br>"
    "<b>INPUT_RGB</b>: for RGB checkpoints, a 3-band RGB raster (8-bit values taken as 0-255) instead of "
    "INPUT_MS.<br>"
)


def add_foundation_parameters(alg, tiling_default_stride: str = "half the tile") -> None:
    """The advanced parameters of pretrained checkpoints, shared by rsvl:query and rsvl:retrieve."""
    params = [
        static_enum("PRESET", "Pretrained checkpoint preset", PRESET_CHOICES, "auto"),
        QgsProcessingParameterString("OPEN_CLIP_ARCH", "open_clip architecture (PRESET open_clip), e.g. ViT-B-32 or "
                                     "local-dir:DIR", optional=True),
        QgsProcessingParameterString("TEMPLATES", "Prompt templates (one per line, {} or {c}; empty: the preset's)",
                                     multiLine=True, optional=True),
        QgsProcessingParameterNumber("TILE_SIZE", "Window size in pixels (0: the model's input size)",
                                     type=QgsProcessingParameterNumber.Integer, minValue=0, defaultValue=0),
        QgsProcessingParameterNumber("STRIDE", f"Window step in pixels (0: {tiling_default_stride})",
                                     type=QgsProcessingParameterNumber.Integer, minValue=0, defaultValue=0),
        QgsProcessingParameterString("BANDS", "Input bands in model order (codes or numbers, comma-separated)",
                                     optional=True),
        QgsProcessingParameterString("VALUE_SCALE", "Value scale to digital numbers (auto or a number)",
                                     defaultValue="auto"),
        QgsProcessingParameterNumber("OFFSET", "Offset subtracted from digital numbers",
                                     type=QgsProcessingParameterNumber.Double, defaultValue=0.0),
    ]
    for p in params:
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        alg.addParameter(p)


def foundation_kwargs(alg, parameters, context) -> dict:
    templates = [t.strip() for t in (alg.parameterAsString(parameters, "TEMPLATES", context) or "").splitlines()
                 if t.strip()]
    preset = alg.enum(parameters, "PRESET", context) or "auto"
    if preset == "open_clip":
        arch = (alg.parameterAsString(parameters, "OPEN_CLIP_ARCH", context) or "").strip()
        if not arch:
            raise QgsProcessingException("PRESET open_clip needs OPEN_CLIP_ARCH: the checkpoint's open_clip "
                                         "architecture, e.g. ViT-B-32 (or local-dir:DIR with open_clip_config.json)")
        preset = f"open_clip:{arch}"
    return dict(
        preset=preset,
        templates=templates or None,
        tile_size=alg.parameterAsInt(parameters, "TILE_SIZE", context),
        stride=alg.parameterAsInt(parameters, "STRIDE", context) or None,
        bands=alg.parameterAsString(parameters, "BANDS", context) or None,
        value_scale=alg.parameterAsString(parameters, "VALUE_SCALE", context) or "auto",
        offset=alg.parameterAsDouble(parameters, "OFFSET", context),
    )


def check_model(path: str):
    """(ok, message) for a MODEL parameter, reading only the model's JSON header."""
    import os

    from ...backend.errors import RsvlError
    from ...backend.foundation.fewshot_file import model_kind, read_fewshot
    from ...backend.models.modelfile import read_header

    try:
        if path and os.path.isfile(path) and model_kind(path) == "fewshot":
            read_fewshot(path)  # a head on a pretrained checkpoint (rsvl:train with FOUNDATION_MODEL)
        else:
            read_header(path)
    except RsvlError as exc:
        return False, str(exc)
    return True, ""


def check_model_or_checkpoint(path: str):
    """(ok, message) for a MODEL that may also be a pretrained checkpoint (read on running)."""
    import os

    from ...backend.foundation.checkpoint import is_rsvl_model

    if path and os.path.isfile(path) and not is_rsvl_model(path):
        return True, ""
    return check_model(path)


def refusal(definition, value, context) -> str:
    """Why ``value`` is not acceptable for ``definition``, in words that say what is ('' when
    it is): QGIS's own check only says "Incorrect parameter value for NAME"."""
    if definition.checkValueIsAcceptable(value, context):
        return ""
    name, what = definition.name(), definition.description().split(" (")[0].lower()
    if value is None or value == NULL or (isinstance(value, str) and not value.strip()):
        return f"{name} is empty: give the {what}"
    if isinstance(definition, QgsProcessingParameterNumber):
        low, high = definition.minimum(), definition.maximum()
        return f"{name} must be a number from {low:g} to {high:g} (got {value})"
    if isinstance(definition, QgsProcessingParameterEnum):
        return f"{name} must be one of {', '.join(definition.options())} (got {value!r})"
    return f"{name}: {value!r} is not a valid {what}"
