"""rsvl:classify — classify a whole scene with a trained model into a styled class map."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..styling import backend_classes, style_output_on_load, write_class_style
from .base import DEVICE_HELP, FORCE_HELP, INPUTS_HELP, MODEL_FILTER, NORMALIZE_HELP, PRECISION_HELP, RsvlAlgorithm
from .parameters import check_model, short_help

DASK_SCHEDULER_HELP = (
    "<b>DASK_SCHEDULER</b> (advanced): address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786, whose "
    "workers run rsvl and see the model and input files at the same paths (shared storage); the windows are "
    "computed there and written here, into the same file. Empty: in this process.<br>"
)


def add_dask_scheduler(alg) -> None:
    p = QgsProcessingParameterString("DASK_SCHEDULER", "Dask scheduler address (empty: this process)",
                                     defaultValue="", optional=True)
    p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    alg.addParameter(p)


def check_dask_scheduler(alg, parameters, context):
    """(ok, message) for DASK_SCHEDULER. QGIS cannot start local worker processes (its
    Python is the QGIS binary), so ``local`` is refused here: start a scheduler instead."""
    address = (alg.parameterAsString(parameters, "DASK_SCHEDULER", context) or "").strip()
    if address.split(":")[0] == "local":
        return False, ("DASK_SCHEDULER takes the address of a running Dask scheduler (e.g. tcp://127.0.0.1:8786, "
                       "from `dask scheduler` and `dask worker`); local clusters are for the command line "
                       "(--scheduler local:N)")
    return True, ""


def dask_scheduler(alg, parameters, context):
    """The DASK_SCHEDULER address, or None (in this process)."""
    return (alg.parameterAsString(parameters, "DASK_SCHEDULER", context) or "").strip() or None


class ClassifyAlgorithm(RsvlAlgorithm):
    def name(self):
        return "classify"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Classify scene"

    renamed = {"BATCH_SIZE": "TILE_SIZE"}

    def parameter_help(self) -> str:
        return (
            "Classifies every pixel of the inputs with a model made by rsvl:train. The class map is a tiled, "
            "compressed GeoTIFF on the reference grid with the model's class codes, its colour table and class "
            "names embedded, a .qml style beside it, and is loaded with a paletted renderer. Pixels where any "
            "input is nodata, or outside the inputs, are nodata (never a class).<br><br>"
            "<b>MODEL</b>: a model file written by rsvl:train (.safetensors or .rsvl).<br>" + INPUTS_HELP +
            "The model says which modalities and band counts it needs; other inputs are refused with the "
            "difference named.<br>"
            "<b>OUTPUT</b>: the class raster.<br>"
            "<b>OUTPUT_CONFIDENCE</b>: optional float32 raster, softmax probability of the chosen class.<br>"
            "<b>TILE_SIZE</b>: windows are processed whole (dense shared-convolution inference); this is the "
            "window side in pixels — larger is faster, uses more memory.<br>" + FORCE_HELP + DEVICE_HELP
            + NORMALIZE_HELP + PRECISION_HELP + DASK_SCHEDULER_HELP
        )

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return short_help(
            'Classifies every pixel of the inputs with a model from rsvl:train into a styled class map '
            '(colour table and class names embedded).',
            inputs=('MODEL and the same INPUT_* modalities it was trained on (other grids are warped onto the '
                    'reference grid).'),
            outputs=('OUTPUT (class raster, nodata where any input is nodata), optional OUTPUT_CONFIDENCE.'),
            tip=("for another date or sensor, NORMALIZE=scene standardises with this scene's own statistics."),
            url=self.helpUrl())

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file", fileFilter=MODEL_FILTER))
        self.add_modality_inputs()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Classes"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_CONFIDENCE", "Confidence", optional=True, createByDefault=False))
        p = QgsProcessingParameterNumber("TILE_SIZE", "Window size (pixels per side)",
                                         type=QgsProcessingParameterNumber.Integer, defaultValue=256, minValue=16,
                                         maxValue=8192)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)
        # BATCH_SIZE was this window side's name before rsvl 0.4: kept, hidden, for saved models and scripts.
        old = QgsProcessingParameterNumber("BATCH_SIZE", "Window size (deprecated: TILE_SIZE)",
                                           type=QgsProcessingParameterNumber.Integer, optional=True, minValue=16,
                                           maxValue=8192)
        old.setFlags(old.flags() | QgsProcessingParameterDefinition.FlagHidden)
        self.addParameter(old)
        self.add_force()
        self.add_device()
        self.add_normalize()
        self.add_precision()
        add_dask_scheduler(self)

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        ok, message = self.check_layers(parameters, context, "No input layer: set the INPUT_* layers the model was trained on")
        if not ok:
            return ok, message
        ok, message = check_dask_scheduler(self, parameters, context)
        if not ok:
            return ok, message
        return check_model(self.parameterAsFile(parameters, "MODEL", context))

    def backend_request(self, parameters, context, feedback):
        from ...backend import api

        self._output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        kwargs = dict(
            model_path=self.parameterAsFile(parameters, "MODEL", context),
            **self.inputs(parameters, context), output=self._output,
            confidence=self.parameterAsOutputLayer(parameters, "OUTPUT_CONFIDENCE", context) or None,
            tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
            device=self.device(parameters, context),
            force=self.parameterAsBool(parameters, "FORCE", context),
            normalize=self.normalize(parameters, context),
            precision=self.enum(parameters, "PRECISION", context),
            scheduler=dask_scheduler(self, parameters, context),
        )
        return api.classify, kwargs

    def finish(self, result, parameters, context, feedback):
        classes = backend_classes(result.classes)
        write_class_style(result.output, classes)
        style_output_on_load(context, result.output, classes)
        feedback.pushInfo(f"{result.pixels} pixels classified in {result.seconds:.2f} s")
        outputs = {"OUTPUT": result.output}
        if result.confidence:
            outputs["OUTPUT_CONFIDENCE"] = result.confidence
        return outputs
