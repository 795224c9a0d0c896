"""rsvl:query — open-vocabulary query: similarity of every pixel to free-text prompts."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..styling import backend_classes, style_output_on_load, write_class_style
from .base import DEVICE_HELP, FORCE_HELP, INPUTS_HELP, MODEL_FILTER, RsvlAlgorithm, check_model


def split_prompts(text: str):
    return [line.strip() for line in (text or "").replace("\r", "\n").split("\n") if line.strip()]


class QueryAlgorithm(RsvlAlgorithm):
    def name(self):
        return "query"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Query with text prompts (open vocabulary)"

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return (
            "Scores every pixel against free-text prompts with a model whose embedding is aligned to text (any "
            "rsvl:train model): the prompts are encoded by the model's own text encoder, wrapped in its prompt "
            "template, and compared with each pixel's embedding by cosine similarity.<br><br>"
            "<b>MODEL</b>: a model file written by rsvl:train (any file name); its text encoder must be available "
            "locally (the built-in MiniLM always is).<br>" + INPUTS_HELP +
            "<b>PROMPTS</b>: one prompt per line, e.g. 'flooded fields', 'greenhouses'.<br>"
            "<b>USE_TEMPLATE</b>: wrap each prompt in the model's prompt template (as its classes were).<br>"
            "<b>OUTPUT_SIMILARITY</b>: float32 raster, one band per prompt (band description = the prompt), "
            "cosine similarity in [-1, 1], nodata where inputs are nodata.<br>"
            "<b>Best prompt</b> (OUTPUT): optional map of the most similar prompt (codes 1..N in prompt order), "
            "styled: a prompt that names one of the model's classes takes that class's colour, others the colour "
            "people expect of the words (water blue, forest dark green, built-up red …), else a colour-blind-"
            "friendly qualitative palette.<br>"
            "<b>Similarity threshold for the best-prompt map</b> (THRESHOLD): pixels whose best similarity is "
            "below it are left empty in the best-prompt map (leave empty for none).<br>" + FORCE_HELP + DEVICE_HELP
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file", fileFilter=MODEL_FILTER))
        self.add_modality_inputs()
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

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        if not split_prompts(self.parameterAsString(parameters, "PROMPTS", context)):
            return False, "PROMPTS is empty: give at least one text prompt, one per line"
        ok, message = self.check_layers(parameters, context, "No input layer: set the INPUT_* layers the model was trained on")
        if not ok:
            return ok, message
        return check_model(self.parameterAsFile(parameters, "MODEL", context))

    def backend_request(self, parameters, context, feedback):
        from ...backend import api

        threshold = parameters.get("THRESHOLD")
        kwargs = dict(
            model_path=self.parameterAsFile(parameters, "MODEL", context),
            **self.inputs(parameters, context),
            prompts=split_prompts(self.parameterAsString(parameters, "PROMPTS", context)),
            output_similarity=self.parameterAsOutputLayer(parameters, "OUTPUT_SIMILARITY", context),
            output=self.parameterAsOutputLayer(parameters, "OUTPUT", context) or None,
            threshold=None if threshold in (None, "") else self.parameterAsDouble(parameters, "THRESHOLD", context),
            use_template=self.parameterAsBool(parameters, "USE_TEMPLATE", context),
            device=self.device(parameters, context),
            force=self.parameterAsBool(parameters, "FORCE", context),
        )
        return api.query, kwargs

    def finish(self, result, parameters, context, feedback):
        outputs = {"OUTPUT_SIMILARITY": result.similarity}
        if result.output:
            classes = backend_classes(result.classes)
            write_class_style(result.output, classes)
            style_output_on_load(context, result.output, classes)
            outputs["OUTPUT"] = result.output
        feedback.pushInfo("prompts: " + " | ".join(result.texts))
        return outputs
