"""rsvl:train — train an MMLGNet model from labelled pixels (class raster) or
points/polygons (vector layer with a class field) on co-registered layers."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ...backend.training.config import LOSSES, TrainConfig  # no torch: plain data
from ...backend.training.config import fields as train_fields
from ...backend.training.recipes import DEFAULT_RECIPE, RECIPE_NAMES
from .base import DEVICE_HELP, INPUTS_HELP, MODEL_FILTER, RsvlAlgorithm
from .parameters import (
    BAD_BANDS_HELP,
    FOUNDATION_FILTER,
    LABEL_CONVENTIONS_HELP,
    PRESET_HELP,
    add_foundation_parameters,
    foundation_kwargs,
    legacy_parameters,
    short_help,
    static_enum,
)

RECIPES = RECIPE_NAMES


def default_model_path() -> str:
    """A new, persistent file for each dialog: ~/rsvl/models/rsvl-model-YYYYmmdd-HHMMSS.safetensors.
    (Processing's temporary folder is deleted when QGIS closes, and a model is worth keeping.)"""
    import os
    import time

    return os.path.join(os.path.expanduser("~"), "rsvl", "models",
                        time.strftime("rsvl-model-%Y%m%d-%H%M%S.safetensors"))


def _optional(alg, parameters, key, context, kind, default=None):
    """An optional number parameter: ``default`` when it is not set (empty)."""
    value = parameters.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return alg.parameterAsInt(parameters, key, context) if kind is int else alg.parameterAsDouble(parameters, key,
                                                                                                    context)


class TrainAlgorithm(RsvlAlgorithm):
    def name(self):
        return "train"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Train classifier"

    def parameter_help(self) -> str:
        return (
            "Trains a text-aligned multi-sensor classifier (MMLGNet: one CNN per modality on a patch around each "
            "pixel, fused and aligned with a frozen text encoder by a symmetric contrastive loss; a pixel's class "
            "is the class prompt most similar to its embedding).<br><br>" + INPUTS_HELP +
            "<b>TRAINING</b>: labels — a class raster (0 or nodata = unlabelled; its category names and colour "
            "table name and colour the classes) or a point/polygon vector layer in any CRS.<br>"
            "<b>CLASS_FIELD</b>: for vector labels, the field holding the class (text = class names; integer = "
            "class codes, 0/NULL skipped).<br>"
            "<b>CLASS_NAME_FIELD</b>: for an integer CLASS_FIELD, the field holding each code's class name "
            "(optional).<br>"
            "<b>PROMPT_TEMPLATE</b>: text prompt per class, {} is replaced by the class name. Empty (the "
            "default) follows the inputs: 'the hyperspectral patch of {}' with HSI (the MMLGNet paper's), else "
            "'a multispectral satellite image of {}', 'a SAR image of {}' or 'an elevation model of {}'.<br>"
            "<b>TEXT_ENCODER</b>: 'minilm' (built-in all-MiniLM-L6-v2, offline) or a local model: a Hugging Face "
            "encoder folder, an open_clip folder, or open_clip:ARCH:CHECKPOINT (e.g. the paper's ViT-B-32).<br>"
            "<b>PATCH_SIZE</b>: odd patch side in pixels (paper: 11).<br>"
            "<b>EPOCHS, LEARNING_RATE</b>: empty (the default) takes the recipe's: spectral-spatial 60 epochs (the "
            "schedule's length; at least 400 steps) with a one-cycle peak of 0.001; mmlgnet and band-groups at most "
            "100 epochs with Adam at 0.0001 (the paper's). <b>BATCH_SIZE</b>: 128 (paper).<br>"
            "<b>VALIDATION_FRACTION</b>: share of each class held out for the validation figures (mmlgnet, "
            "band-groups: and for early stopping). Spectral-spatial then trains again on every label, so the model "
            "uses them all.<br><b>PATIENCE</b>: mmlgnet and band-groups: epochs without validation improvement "
            "before stopping; the best weights are kept.<br>" + DEVICE_HELP +
            "<b>LOSS</b>: <i>supervised</i> (default): the symmetric image-text contrastive loss with every "
            "same-class pair of a batch a positive (BP-LCZ's supervised matrix); <i>clip</i>: the MMLGNet paper's "
            "loss, where each sample's own prompt is its only positive. With one prompt per class and no mixup the two "
            "are the same loss (identical prompts score identically); they differ with the default recipe's mixup "
            "and with band-group prompts.<br>"
            "<b>SEED</b>: fixed seed, same model on the CPU for the same inputs.<br>"
            "<b>AUGMENT</b> (advanced): each training patch's bands get a random gain (±5 %, plus ±5 % for the "
            "whole patch) and offset (±3 % of the band mean), as another date or sensor would change them, and a "
            "random flip and 90° rotation. <b>BALANCED</b>: each epoch draws every class equally often (rare classes "
            "gain, overall accuracy may drop). Both are off by default.<br>"
            "<b>SEMI_SUPERVISED</b> (advanced, recipe spectral-spatial): unlabelled pixels of the input scene train "
            "the model too. Its weight average labels them where it is at least 95 % sure, and the model learns "
            "those labels on spectrally jittered, flipped and rotated copies (FixMatch with a mean teacher). "
            "With few labels it maps the common classes far better; the pseudo-labels follow the scene's own class "
            "proportions, so rare classes may shrink. Training takes about twice as long.<br>"
            "<b>MEMBERS</b> (advanced): train that many models from different seeds and save them as one model "
            "file (a deep ensemble): a pixel's similarity to each class is their mean. Steadier maps, most of all "
            "with few labels; training and "
            "classification take that many times as long.<br>"
            "<b>PRECISION</b> (advanced): the arithmetic of the network's forward pass while training. auto "
            "(default): bfloat16 autocast where the device multiplies it natively (a CPU with AMX or AVX-512-BF16, a "
            "CUDA GPU of compute capability 8.0 or newer), else float32; models trained so score within the seeds' "
            "noise of float32's on rsvl's accuracy bench (docs/experiments/022). float32: as before; bfloat16: about "
            "1.3x the samples per second on a CPU with AVX-512-BF16, more with AMX or on a GPU (emulated and slower "
            "elsewhere); float16: CUDA GPUs, with loss scaling. "
            "Weights, losses and the saved model stay float32. For a FOUNDATION_MODEL: the image tower's arithmetic, "
            "as in rsvl:classify.<br>"
            "<b>OUTPUT_MODEL</b>: the model file (.safetensors weights + JSON header with classes, colours, "
            "band names, normalisation, text encoder). By default a new file in ~/rsvl/models/ named after the "
            "date and time, so closing QGIS never loses a model.<br>"
            "<b>OUTPUT_REPORT</b>: optional HTML report with loss/accuracy curves, validation confusion matrix "
            "and class table (skipped unless a file is given).<br>"
            "Outputs VALIDATION_OA, VALIDATION_AA, VALIDATION_KAPPA and EPOCHS_RUN for chaining.<br><br>"
            "<b>RECIPE</b> (advanced): <i>spectral-spatial</i> (default): MMLGNet's CNN branches plus a per-pixel "
            "spectral branch, a one-cycle schedule with a weight average, band dropout on every batch (for other "
            "dates), spectral mixup (each training pixel mixed with another, the targets shared alike), the final "
            "model trained on every label; <i>mmlgnet</i>: the paper's recipe as published; "
            "<i>band-groups</i>: BP-LCZ's band-group "
            "prompting, one CNN branch per physical band group (Sentinel-2 visible, red edge, NIR, SWIR, "
            "coastal/atmospheric; SAR VV, VH; elevation; four hyperspectral ranges), each aligned with "
            "'&lt;the group's physics&gt; of &lt;class&gt;' prompts, every same-class pair a positive, plus the fused "
            "embedding as in MMLGNet. <b>BAND_GROUPS</b>: a JSON file of other groups, "
            "{\"ms\": {\"visible\": [\"B02\", \"B03\", \"B04\"], …}}.<br>"
            + BAD_BANDS_HELP + LABEL_CONVENTIONS_HELP +
            "<b>PRETRAINED</b> (advanced): an encoder file from rsvl:pretrain (same layers and PATCH_SIZE): the "
            "encoders start from it, the fusion layer fresh.<br>"
            "<b>FOUNDATION_MODEL</b> (advanced): instead of MMLGNet, adapt a pretrained vision-language checkpoint "
            "(see rsvl:query) to the labels, few-shot: a light head on its frozen window (or token, "
            "RESOLUTION) embeddings, initialised from the class names' text embeddings (with EPOCHS 0 it is the "
            "zero-shot map), trained with Adam (step 0.01) on the labels; the weights of the best validation epoch "
            "are kept. INPUT_MS (or an RGB raster as INPUT_MS) is the input. The model file names the checkpoint, "
            "which must stay where it is; rsvl:classify and rsvl:query use it like any model.<br>"
            + PRESET_HELP + "<b>RESOLUTION</b> (few-shot): tile (a window's embedding) or token (per 16-pixel "
            "patch token of a ViT, finer).<br>"
        )

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return short_help(
            'Trains a classifier from labelled pixels (a class raster) or points/polygons on co-registered '
            'HSI, LiDAR, SAR and MS layers: one encoder per modality, fused and aligned with a text encoder, '
            "so each class is the prompt most similar to a pixel's embedding.",
            inputs=('the INPUT_* layers, TRAINING labels (CLASS_FIELD for vector labels); RECIPE chooses the method '
                    "(spectral-spatial by default; mmlgnet is the paper's; band-groups is BP-LCZ's band-group "
                    'prompting).'),
            outputs=('OUTPUT_MODEL (a .safetensors model file for rsvl:classify and rsvl:query), an optional HTML '
                     'report, and VALIDATION_OA/AA/KAPPA.'),
            tip=('split your labels with rsvl:split first and score the map with rsvl:evaluate on the other half.'),
            url=self.helpUrl())

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.add_modality_inputs()
        self.add_labels("TRAINING", "Training labels (class raster, or points/polygons)")
        self.add_class_fields("vector labels")
        self.addParameter(QgsProcessingParameterString(
            "PROMPT_TEMPLATE", "Class prompt template ({} = class name; empty: follows the inputs)", optional=True))
        self.addParameter(QgsProcessingParameterString("TEXT_ENCODER", "Text encoder (minilm or a local model path)",
                                                       defaultValue="minilm"))
        numbers = [
            ("PATCH_SIZE", "Patch size (odd, pixels)", QgsProcessingParameterNumber.Integer, 11, 1, 99, False),
            ("EPOCHS", "Epochs (empty: the recipe's)", QgsProcessingParameterNumber.Integer, None, 0, 100000, False),
            ("BATCH_SIZE", "Batch size", QgsProcessingParameterNumber.Integer, 128, 2, 65536, True),
            ("LEARNING_RATE", "Learning rate (empty: the recipe's)", QgsProcessingParameterNumber.Double, None, 1e-8,
             10.0, True),
            ("VALIDATION_FRACTION", "Validation fraction", QgsProcessingParameterNumber.Double, 0.2, 0.0, 0.9, True),
            ("PATIENCE", "Early-stopping patience (epochs)", QgsProcessingParameterNumber.Integer, 15, 1, 100000, True),
            ("MEMBERS", "Ensemble members (models from different seeds, averaged; each adds training and "
                        "classification time)", QgsProcessingParameterNumber.Integer, 1, 1, 32, True),
        ]
        for key, title, kind, default, lo, hi, advanced in numbers:
            p = QgsProcessingParameterNumber(key, title, type=kind, defaultValue=default, minValue=lo, maxValue=hi,
                                             optional=default is None)
            if advanced:
                p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        loss = static_enum("LOSS", "Contrastive loss", LOSSES, LOSSES[0])
        loss.setFlags(loss.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(loss)
        self.add_device()
        self.add_precision()
        seed = QgsProcessingParameterNumber("SEED", "Random seed", type=QgsProcessingParameterNumber.Integer,
                                            defaultValue=0, minValue=0)
        seed.setFlags(seed.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(seed)
        for key, title in (("AUGMENT", "Augment: spectral gain/offset jitter, flips and rotations"),
                           ("BALANCED", "Class-balanced epochs"),
                           ("SEMI_SUPERVISED", "Semi-supervised: unlabelled pixels train the model too "
                                               "(pseudo-labels; recipe spectral-spatial)")):
            p = QgsProcessingParameterBoolean(key, title, defaultValue=False)
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_MODEL", "Model file", fileFilter=MODEL_FILTER, defaultValue=default_model_path()))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_REPORT", "Training report", fileFilter="HTML files (*.html)", optional=True,
            createByDefault=False))
        recipe = static_enum("RECIPE", "Recipe", RECIPES, DEFAULT_RECIPE)
        recipe.setFlags(recipe.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(recipe)
        bad = QgsProcessingParameterString(
            "BAD_BANDS", "Bands to leave out (e.g. 130-135, 165 or hsi:130-135; sar:2; bands declared bad in the "
            "data's metadata and empty bands are left out anyway)", optional=True)
        bad.setFlags(bad.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(bad)
        self.add_label_conventions("Training")
        groups = QgsProcessingParameterFile("BAND_GROUPS", "Band groups (JSON, recipe band-groups)",
                                            fileFilter="JSON files (*.json)", optional=True)
        groups.setFlags(groups.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(groups)
        pretrained = QgsProcessingParameterFile("PRETRAINED", "Start the encoders from an rsvl:pretrain file",
                                                fileFilter=MODEL_FILTER, optional=True)
        pretrained.setFlags(pretrained.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(pretrained)
        foundation = QgsProcessingParameterFile("FOUNDATION_MODEL", "Few-shot: adapt this pretrained checkpoint",
                                                fileFilter=FOUNDATION_FILTER, optional=True)
        foundation.setFlags(foundation.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(foundation)
        add_foundation_parameters(self)
        resolution = static_enum("RESOLUTION", "Few-shot: window or token embeddings", ["tile", "token"], "tile")
        resolution.setFlags(resolution.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(resolution)
        self.addOutput(QgsProcessingOutputNumber("VALIDATION_OA", "Validation overall accuracy"))
        self.addOutput(QgsProcessingOutputNumber("VALIDATION_AA", "Validation average accuracy"))
        self.addOutput(QgsProcessingOutputNumber("VALIDATION_KAPPA", "Validation kappa"))
        self.addOutput(QgsProcessingOutputNumber("EPOCHS_RUN", "Epochs run"))

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        ok, message = self.check_layers(
            parameters, context, "No input layer: set at least one of INPUT_HSI, INPUT_LIDAR, INPUT_SAR or INPUT_MS")
        if not ok:
            return ok, message
        ok, message = self.check_labels(parameters, "TRAINING", context)
        if not ok:
            return ok, message
        if not self.parameterAsFile(parameters, "FOUNDATION_MODEL", context):
            from ...backend.errors import InputError

            try:
                TrainConfig(**self.train_options(legacy_parameters(self, parameters), context)).validate()
            except InputError as exc:
                return False, str(exc)
        template = self.parameterAsString(parameters, "PROMPT_TEMPLATE", context)
        if template.strip() and "{}" not in template:
            return False, "PROMPT_TEMPLATE must contain {} where the class name goes"
        return True, ""

    def backend_request(self, parameters, context, feedback):
        from ...backend import api

        labels, class_field, class_name_field = self.labels_source(parameters, "TRAINING", context, feedback)
        self._report = self.parameterAsFileOutput(parameters, "OUTPUT_REPORT", context)
        from ...backend.io.atomic import check_extension, check_outputs

        check_extension("OUTPUT_REPORT", self._report, "report")
        check_outputs([("OUTPUT_REPORT", self._report, 0)])  # before the work, not after it
        foundation = self.parameterAsFile(parameters, "FOUNDATION_MODEL", context)
        if foundation:
            f = foundation_kwargs(self, parameters, context)
            f["tile_size"] = f["tile_size"] or None
            kwargs = dict(
                checkpoint=foundation, **self.inputs(parameters, context), labels=labels, class_field=class_field,
                class_name_field=class_name_field,
                output_model=self.parameterAsFileOutput(parameters, "OUTPUT_MODEL", context), **f,
                resolution=self.enum(parameters, "RESOLUTION", context),
                epochs=_optional(self, parameters, "EPOCHS", context, int, 100),
                validation_fraction=self.parameterAsDouble(parameters, "VALIDATION_FRACTION", context),
                seed=self.parameterAsInt(parameters, "SEED", context), device=self.device(parameters, context),
                precision=self.enum(parameters, "PRECISION", context),
            )
            return api.train_fewshot, kwargs
        inputs = self.inputs(parameters, context)
        config = TrainConfig(class_field=class_field, class_name_field=class_name_field, reference=inputs["reference"],
                             **self.train_options(parameters, context))
        kwargs = dict(layers=inputs["layers"], labels=labels, config=config,
                      output_model=self.parameterAsFileOutput(parameters, "OUTPUT_MODEL", context))
        return api.train, kwargs

    def train_options(self, parameters, context) -> dict:
        """Every TrainConfig field that names a Processing parameter, read by the field's type
        (a new training option is a TrainConfig field plus its parameter definition above)."""
        values = {}
        for f in train_fields():
            key = f.metadata["param"]
            if not key:
                continue
            default = f.default
            if key == "DEVICE":
                values[f.name] = self.device(parameters, context)
            elif f.metadata["choices"]:
                values[f.name] = self.enum(parameters, key, context)
            elif f.type == "bool":
                values[f.name] = self.parameterAsBool(parameters, key, context)
            elif f.type in ("int", "Optional[int]"):
                values[f.name] = _optional(self, parameters, key, context, int, default)
            elif f.type in ("float", "Optional[float]"):
                values[f.name] = _optional(self, parameters, key, context, float, default)
            elif isinstance(self.parameterDefinition(key), QgsProcessingParameterFile):
                values[f.name] = self.parameterAsFile(parameters, key, context) or None
            else:
                values[f.name] = (self.parameterAsString(parameters, key, context) or "").strip() or default
        return values

    def finish(self, result, parameters, context, feedback):
        from ...backend.evaluation.report import write_fewshot_report, write_training_report
        from ...backend.foundation.fewshot import FewShotResult

        nan = float("nan")
        if isinstance(result, FewShotResult):
            val = result.validation
            outputs = {"OUTPUT_MODEL": result.model_path, "EPOCHS_RUN": result.epochs_run,
                       "VALIDATION_OA": val.oa if val else nan, "VALIDATION_AA": val.aa if val else nan,
                       "VALIDATION_KAPPA": val.kappa if val else nan}
            if self._report:
                if write_fewshot_report(self._report, result):
                    outputs["OUTPUT_REPORT"] = self._report
                else:
                    feedback.pushWarning("OUTPUT_REPORT: VALIDATION_FRACTION is 0, so there are no validation figures "
                                         "to report; none was written")
            oa = result.validation_oa
            zero = result.validation_oa_zero_shot
            feedback.pushInfo(
                f"classes: {', '.join(c.name for c in result.classes)}; few-shot head, best epoch "
                f"{result.best_epoch} of {result.epochs_run}; validation OA zero-shot "
                f"{'n/a' if zero is None else f'{zero:.4f}'}, adapted {'n/a' if oa is None else f'{oa:.4f}'}")
            return outputs
        outputs = {"OUTPUT_MODEL": result.model_path, "EPOCHS_RUN": result.epochs_run}
        val = result.validation
        outputs.update(VALIDATION_OA=val.oa if val else nan, VALIDATION_AA=val.aa if val else nan,
                       VALIDATION_KAPPA=val.kappa if val else nan)
        if self._report:
            write_training_report(self._report, result.header, val)
            outputs["OUTPUT_REPORT"] = self._report
        feedback.pushInfo(
            f"classes: {', '.join(c.name for c in result.classes)}; {result.epochs_run} epochs (best "
            f"{result.best_epoch}), {result.seconds:.1f} s on {result.device}"
            + (f"; validation {val.summary()}" if val else ""))
        return outputs
