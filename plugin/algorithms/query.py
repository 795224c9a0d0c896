"""rsvl:query — open-vocabulary query: similarity of every pixel to free-text prompts."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..styling import backend_classes, style_output_on_load, write_class_style
from .base import DEVICE_HELP, FORCE_HELP, INPUTS_HELP, NORMALIZE_HELP, PRECISION_HELP, RsvlAlgorithm, raster_path
from .classify import DASK_SCHEDULER_HELP, add_dask_scheduler, check_dask_scheduler, dask_scheduler
from .parameters import (
    FOUNDATION_FILTER,
    PRESET_HELP,
    add_foundation_parameters,
    check_model_or_checkpoint,
    foundation_kwargs,
    short_help,
    static_enum,
)

RESOLUTIONS = ["tile", "token"]


def split_prompts(text: str):
    return [line.strip() for line in (text or "").replace("\r", "\n").split("\n") if line.strip()]


class QueryAlgorithm(RsvlAlgorithm):
    def name(self):
        return "query"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Query with text prompts (open vocabulary)"

    def parameter_help(self) -> str:
        return (
            "Scores every pixel against free-text prompts with a model whose embedding is aligned to text (any "
            "rsvl:train model): the prompts are encoded by the model's own text encoder, wrapped in its prompt "
            "template, and compared with each pixel's embedding by cosine similarity.<br><br>"
            "<b>MODEL</b>: a model file written by rsvl:train (any file name; its text encoder must be available "
            "locally, the built-in MiniLM always is), or a pretrained vision-language checkpoint downloaded once "
            "(Llama3-MS-CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP, any open_clip checkpoint): the scene is then mapped "
            "from text alone, with no labels, in windows whose scores are averaged per pixel.<br>" + INPUTS_HELP +
            "<b>PROMPTS</b>: one prompt per line, e.g. 'flooded fields', 'greenhouses'.<br>"
            "<b>USE_TEMPLATE</b>: wrap each prompt in the model's prompt template (as its classes were).<br>"
            "<b>OUTPUT_SIMILARITY</b>: float32 raster, one band per prompt (band description = the prompt), "
            "cosine similarity in [-1, 1], nodata where inputs are nodata.<br>"
            "<b>OUTPUT</b> (best prompt): optional map of the most similar prompt (codes 1..N in prompt order), "
            "styled: a prompt that names one of the model's classes takes that class's colour, others the colour "
            "people expect of the words (water blue, forest dark green, built-up red …), else a colour-blind-"
            "friendly qualitative palette.<br>"
            "<b>THRESHOLD</b> (similarity threshold for the best-prompt map): pixels whose best similarity is "
            "below it are left empty in the best-prompt map (leave empty for none).<br>" + FORCE_HELP + DEVICE_HELP
            + NORMALIZE_HELP + PRECISION_HELP
            + PRESET_HELP +
            "<b>RESOLUTION</b>: tile (a score per window) or token (per 16-pixel patch token of a ViT, finer).<br>"
            "<b>MULTI_LABEL</b>: OUTPUT gets one 0/1 band per prompt instead: a prompt is present where its score "
            "exceeds the mean of the other prompts' scores (Llama3-MS-CLIP's multi-label rule).<br>"
            + DASK_SCHEDULER_HELP + "(rsvl models only; pretrained checkpoints run in this process.)<br>"
        )

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return short_help(
            'Scores every pixel against free-text prompts ("flooded fields", "greenhouses") with an rsvl '
            'model or a pretrained vision-language checkpoint (Llama3-MS-CLIP, RemoteCLIP, GeoRSCLIP, '
            'SkyCLIP, open_clip).',
            inputs=('MODEL, the INPUT_* layers, PROMPTS (one per line).'),
            outputs=('OUTPUT_SIMILARITY (one band per prompt) and optional OUTPUT (the best prompt per pixel, '
                     'THRESHOLD leaves weak pixels empty).'),
            tip=('prompts that name what the model was trained on score best; a pretrained checkpoint needs no '
                 'training at all.'),
            url=self.helpUrl())

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file or pretrained checkpoint",
                                                     fileFilter=FOUNDATION_FILTER))
        self.add_modality_inputs()
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "INPUT_RGB", "RGB raster (pretrained RGB checkpoints)", layerType=QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterString("PROMPTS", "Prompts (one per line)", multiLine=True))
        self.addParameter(QgsProcessingParameterBoolean("USE_TEMPLATE", "Wrap prompts in the model's template",
                                                        defaultValue=True))
        self.addParameter(QgsProcessingParameterNumber(
            "THRESHOLD", "Similarity threshold for the best-prompt map (empty: none)",
            type=QgsProcessingParameterNumber.Double,
            minValue=-1.0, maxValue=1.0, optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_SIMILARITY", "Similarity"))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Best prompt", optional=True,
                                                                  createByDefault=True))
        self.add_force()
        self.add_device()
        self.add_normalize()
        self.add_precision()
        add_foundation_parameters(self)
        for p in (static_enum("RESOLUTION", "Score resolution (pretrained checkpoints)", RESOLUTIONS, "tile"),
                  QgsProcessingParameterBoolean("MULTI_LABEL", "Multi-label output: one 0/1 band per prompt",
                                                defaultValue=False)):
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        add_dask_scheduler(self)

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        if not split_prompts(self.parameterAsString(parameters, "PROMPTS", context)):
            return False, "PROMPTS is empty: give at least one text prompt, one per line"
        if not self.parameterAsLayerList(parameters, "INPUT_RGB", context):
            ok, message = self.check_layers(parameters, context,
                                            "No input layer: set the INPUT_* layers the model was trained on")
            if not ok:
                return ok, message
        ok, message = check_dask_scheduler(self, parameters, context)
        if not ok:
            return ok, message
        return check_model_or_checkpoint(self.parameterAsFile(parameters, "MODEL", context))

    def backend_request(self, parameters, context, feedback):
        from ...backend import api
        from ...backend.foundation.checkpoint import is_rsvl_model
        from ...backend.io.raster import LayerSpec

        threshold = parameters.get("THRESHOLD")
        model_path = self.parameterAsFile(parameters, "MODEL", context)
        rgb = self.parameterAsLayerList(parameters, "INPUT_RGB", context) or []
        if rgb and is_rsvl_model(model_path):
            raise QgsProcessingException("INPUT_RGB is for pretrained RGB checkpoints; an rsvl model takes the "
                                         "INPUT_* layers it was trained on")
        if rgb:
            inputs = {"layers": [LayerSpec(path=raster_path(layer, "INPUT_RGB"), modality="ms", name=layer.name())
                                 for layer in rgb], "reference": None}
        else:
            inputs = self.inputs(parameters, context)
        foundation = foundation_kwargs(self, parameters, context)
        kwargs = dict(
            model_path=model_path,
            **inputs,
            **foundation,
            resolution=self.enum(parameters, "RESOLUTION", context),
            multi_label=self.parameterAsBool(parameters, "MULTI_LABEL", context),
            prompts=split_prompts(self.parameterAsString(parameters, "PROMPTS", context)),
            output_similarity=self.parameterAsOutputLayer(parameters, "OUTPUT_SIMILARITY", context),
            output=self.parameterAsOutputLayer(parameters, "OUTPUT", context) or None,
            threshold=None if threshold in (None, "") else self.parameterAsDouble(parameters, "THRESHOLD", context),
            use_template=self.parameterAsBool(parameters, "USE_TEMPLATE", context),
            device=self.device(parameters, context),
            force=self.parameterAsBool(parameters, "FORCE", context),
            normalize=self.normalize(parameters, context),
            precision=self.enum(parameters, "PRECISION", context),
            scheduler=dask_scheduler(self, parameters, context),
        )
        return api.query, kwargs

    def finish(self, result, parameters, context, feedback):
        outputs = {"OUTPUT_SIMILARITY": result.similarity}
        if result.output and result.multi_label:
            outputs["OUTPUT"] = result.output
        elif result.output:
            classes = backend_classes(result.classes)
            write_class_style(result.output, classes)
            style_output_on_load(context, result.output, classes)
            outputs["OUTPUT"] = result.output
        feedback.pushInfo(f"model: {result.model}; prompts: " + " | ".join(result.texts))
        return outputs
