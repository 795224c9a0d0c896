"""What every rsvl Processing algorithm shares: the group, the modality inputs, the
QGIS → backend translation of layers into file paths, feedback/cancel/log bridging, and
the one place where backend errors become ``QgsProcessingException``."""

from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, List, Optional, Tuple

from qgis.core import (
    QgsCoordinateTransformContext,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from ..icons import ICON_PATH
from .parameters import legacy_parameters, parameter_texts, refusal, static_enum

MODALITY_PARAMS: Dict[str, str] = {
    "hsi": "INPUT_HSI",
    "lidar": "INPUT_LIDAR",
    "sar": "INPUT_SAR",
    "ms": "INPUT_MS",
}
MODALITY_TITLES = {
    "hsi": "Hyperspectral (HSI) raster(s)",
    "lidar": "LiDAR / DSM / DTM / elevation raster(s)",
    "sar": "SAR raster(s)",
    "ms": "Multispectral (MS) raster(s)",
}
DEVICES = ["auto", "cpu", "cuda"]
DOCS_URL = "https://github.com/rsvl/rsvl/blob/main/docs/qgis.md"
# REFERENCE_GRID choices: the grid every layer is warped onto (backend: index of a layer).
REFERENCE_CHOICES = ["auto (first HSI layer, else MS, SAR, LiDAR)", "first HSI layer", "first LiDAR layer",
                     "first SAR layer", "first MS layer"]
REFERENCE_MODALITIES = [None, "hsi", "lidar", "sar", "ms"]
# Models are written as .safetensors or .rsvl (io.atomic.check_extension); reading, the content is checked.
MODEL_FILTER = "rsvl model (*.safetensors *.rsvl);;All files (*.*)"

INPUTS_HELP = (
    "<b>INPUT_HSI, INPUT_LIDAR, INPUT_SAR, INPUT_MS</b>: co-registered raster layers of each modality (any "
    "GDAL format, int or float; several layers of one modality are stacked band-wise, e.g. DSM + DTM). At "
    "least one is required. Layers on another grid (CRS, resolution, extent) are warped onto the reference "
    "grid — the first HSI layer, else MS, SAR, LiDAR — with bilinear resampling. Nodata in any input band "
    "makes the output pixel nodata.<br>"
    "<b>NODATA_HSI, NODATA_LIDAR, NODATA_SAR, NODATA_MS</b> (advanced): a fill value that the file does not declare "
    "as nodata (e.g. 0 or -9999 borders); it replaces the layers' own nodata value.<br>"
    "<b>REFERENCE_GRID</b> (advanced): which layer's grid (CRS, pixel size, extent) the outputs take; the other "
    "layers are warped onto it.<br>"
)
DEVICE_HELP = "<b>DEVICE</b>: auto (CUDA GPU when available, else CPU), cpu or cuda.<br>"
NORMALIZE_CHOICES = ["model", "scene"]
NORMALIZE_HELP = (
    "<b>NORMALIZE</b> (advanced): standardise the inputs with the training scene's band statistics (model, "
    "default) or with this scene's own (scene: for another date or sensor, whose bands differ by a gain and an "
    "offset; assumes a similar mix of land cover; one more pass over the inputs).<br>"
)
PRECISION_CHOICES = ["auto", "float32", "bfloat16", "float16"]
PRECISION_HELP = (
    "<b>PRECISION</b> (advanced): the precision of the network's arithmetic. auto (default): bfloat16 where the "
    "device multiplies it natively (a CPU with AMX or AVX-512-BF16, a CUDA GPU of compute capability 8.0 or newer) "
    "and the model's map agrees with float32 on a probe window of the scene (99.9 % of the class map, confidence "
    "within 0.01), else float32; the log says which and why. float32: the exact map. bfloat16, float16 (GPUs): "
    "as asked, with a warning where the map would differ. Pretrained checkpoints: the image tower, checked on 8 "
    "probe windows (embeddings' cosine with float32 at least 0.995, the same best prompt). RSVL_PRECISION in the "
    "environment stands for auto.<br>"
)
FORCE_HELP = (
    "<b>FORCE</b>: inputs are checked against the model: band counts always; band order when both the model and "
    "the inputs name their bands; pixel size against the training grid (a warning beyond 1.5x, refused beyond "
    "4x). FORCE accepts a different band order or pixel size with a warning.<br>"
)


class BackendLogHandler(logging.Handler):
    """Routes the backend's ``rsvl`` log records to the Processing feedback — only those
    of the thread running this algorithm, so parallel runs keep their own logs."""

    def __init__(self, feedback):
        super().__init__(logging.INFO)
        self.feedback = feedback
        self.thread = threading.get_ident()

    def emit(self, record):
        if self.feedback is None or record.thread != self.thread:
            return
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self.feedback.reportError(message, fatalError=False)
        elif record.levelno >= logging.WARNING:
            self.feedback.pushWarning(message)  # QGIS >= 3.16: shown as a warning, not an error
        else:
            self.feedback.pushInfo(message)


def raster_path(layer: QgsMapLayer, parameter: str) -> str:
    """The GDAL path of a raster layer, or a clear error naming the parameter."""
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise QgsProcessingException(f"{parameter}: {layer.name() if layer else 'layer'} is not a valid raster layer")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{parameter}: layer '{layer.name()}' comes from the '{layer.providerType()}' provider; rsvl reads "
            "GDAL rasters (files): save it as a GeoTIFF first (Export ▸ Save As…)"
        )
    return layer.source()


def vector_path(layer: QgsVectorLayer, parameter: str, feedback=None) -> str:
    """A path OGR can read for a vector layer. Anything OGR would read differently from
    QGIS — memory or database layers, filters, sub-layers by id, a CRS assigned in QGIS
    that the file does not carry — is written to a temporary GeoPackage first."""
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise QgsProcessingException(f"{parameter}: {layer.name() if layer else 'layer'} is not a valid vector layer")
    source = layer.source()
    extra = source.split("|")[1:]
    plain = (layer.providerType() == "ogr" and not layer.subsetString()
             and all(part.startswith("layername=") for part in extra) and len(extra) <= 1
             and layer.crs() == layer.dataProvider().crs())
    if plain:
        return source
    # Processing's temporary folder is removed when QGIS exits.
    out = QgsProcessingUtils.generateTempFilename(f"rsvl_{parameter.lower()}.gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    err, msg, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, out, QgsCoordinateTransformContext(), options)
    if err != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"{parameter}: could not copy layer '{layer.name()}' for reading: {msg}")
    if feedback is not None:
        feedback.pushInfo(f"{parameter}: copied '{layer.name()}' to {out}")
    return out


class RsvlAlgorithm(QgsProcessingAlgorithm):
    """Base class: group, icon, helpers. Subclasses implement ``initAlgorithm``,
    ``backend_request`` (main thread: QGIS values → plain Python) and ``finish``."""

    # No group: the Toolbox shows rsvl ▸ algorithm (a group named after the provider would
    # show rsvl ▸ rsvl ▸ algorithm).
    def group(self):
        return ""

    def groupId(self):  # noqa: N802 (QGIS API name)
        return ""

    def icon(self):
        return QIcon(ICON_PATH)

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return type(self)()

    # -- parameters ------------------------------------------------------------------------
    def parameter_help(self) -> str:
        """Each parameter's description, as ``<b>NAME</b>: text<br>`` (tooltips in the dialog;
        docs/qgis.md has them all)."""
        return ""

    def addParameter(self, definition, createOutput=True):  # noqa: N802,N803 (QGIS API names)
        if not definition.help():
            if not hasattr(self, "_parameter_texts"):
                self._parameter_texts = parameter_texts(self.parameter_help())
            text = self._parameter_texts.get(definition.name())
            if text:
                definition.setHelp(text)
        return super().addParameter(definition, createOutput)

    def add_modality_inputs(self):
        for modality, key in MODALITY_PARAMS.items():
            self.addParameter(QgsProcessingParameterMultipleLayers(
                key, MODALITY_TITLES[modality], layerType=QgsProcessing.TypeRaster, optional=True))
        for modality in MODALITY_PARAMS:
            p = QgsProcessingParameterNumber(
                f"NODATA_{modality.upper()}", f"Nodata value of the {MODALITY_TITLES[modality].lower()} "
                "(overrides the file's)", type=QgsProcessingParameterNumber.Double, optional=True)
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        p = QgsProcessingParameterEnum("REFERENCE_GRID", "Reference grid (outputs take this layer's grid)",
                                       options=REFERENCE_CHOICES, defaultValue=0)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)

    def add_device(self):
        self.addParameter(static_enum("DEVICE", "Device", DEVICES, "auto"))

    def layer_specs(self, parameters, context) -> List:
        """Backend LayerSpecs from the modality parameters (main thread)."""
        from ...backend.io.raster import LayerSpec

        specs = []
        for modality, key in MODALITY_PARAMS.items():
            nodata_key = f"NODATA_{modality.upper()}"
            given = parameters.get(nodata_key)
            nodata = (self.parameterAsDouble(parameters, nodata_key, context)
                      if given is not None and str(given).strip() not in ("", "NULL", "None") else None)
            for layer in self.parameterAsLayerList(parameters, key, context) or []:
                specs.append(LayerSpec(path=raster_path(layer, key), modality=modality, name=layer.name(),
                                       nodata=nodata))
        if not specs:
            raise QgsProcessingException(
                "No input layer: set at least one of INPUT_HSI, INPUT_LIDAR, INPUT_SAR or INPUT_MS")
        return specs

    def check_layers(self, parameters, context, missing: str) -> Tuple[bool, str]:
        """(ok, message): some INPUT_* layer is given (else ``missing``), and REFERENCE_GRID
        names a modality that has a layer."""
        given = {m for m, key in MODALITY_PARAMS.items() if self.parameterAsLayerList(parameters, key, context)}
        if not given:
            return False, missing
        choice = self.parameterAsEnum(parameters, "REFERENCE_GRID", context)
        modality = REFERENCE_MODALITIES[choice] if 0 <= choice < len(REFERENCE_MODALITIES) else None
        if modality is not None and modality not in given:
            return False, (f"REFERENCE_GRID is the {REFERENCE_CHOICES[choice]}, but {MODALITY_PARAMS[modality]} is "
                           "empty: give that layer or choose another reference grid")
        return True, ""

    def inputs(self, parameters, context) -> dict:
        """``layers`` and ``reference`` (index of the REFERENCE_GRID layer, None = auto) for the backend."""
        specs = self.layer_specs(parameters, context)
        choice = self.parameterAsEnum(parameters, "REFERENCE_GRID", context)
        modality = REFERENCE_MODALITIES[choice] if 0 <= choice < len(REFERENCE_MODALITIES) else None
        if modality is None:
            return {"layers": specs, "reference": None}
        for i, spec in enumerate(specs):
            if spec.modality == modality:
                return {"layers": specs, "reference": i}
        raise QgsProcessingException(
            f"REFERENCE_GRID is the {REFERENCE_CHOICES[choice]}, but {MODALITY_PARAMS[modality]} is empty: give "
            "that layer or choose another reference grid")

    def add_labels(self, key: str, description: str):
        """A labels layer (class raster, or points/polygons): marked optional only so that the
        dialog proposes no layer (a required layer parameter preselects the first layer of the
        project, e.g. a DEM as training labels); :meth:`check_labels` requires it."""
        self.addParameter(QgsProcessingParameterMapLayer(
            key, description, types=[QgsProcessing.TypeVectorAnyGeometry, QgsProcessing.TypeRaster], optional=True))

    def check_labels(self, parameters, key: str, context) -> Tuple[bool, str]:
        """(ok, message) for a labels parameter (raster, or vector + CLASS_FIELD)."""
        layer = self.parameterAsLayer(parameters, key, context)
        if layer is None:
            given = parameters.get(key)
            if given in (None, "") or (isinstance(given, str) and not given.strip()):
                what = self.parameterDefinition(key).description() if self.parameterDefinition(key) else key
                return False, (f"{key} is not set: choose the layer with the {what.split(' (')[0].lower()} (a class "
                               "raster, or points/polygons with a class field)")
        if isinstance(layer, QgsVectorLayer):
            field = self.parameterAsString(parameters, "CLASS_FIELD", context)
            if not field:
                return False, f"CLASS_FIELD is required when {key} is a vector layer"
            names = ", ".join(layer.fields().names())
            if layer.fields().indexOf(field) < 0:
                return False, f"CLASS_FIELD '{field}' is not a field of '{layer.name()}' (fields: {names})"
            name_field = self.parameterAsString(parameters, "CLASS_NAME_FIELD", context)
            if name_field and layer.fields().indexOf(name_field) < 0:
                return False, f"CLASS_NAME_FIELD '{name_field}' is not a field of '{layer.name()}' (fields: {names})"
            if layer.featureCount() == 0:
                return False, f"{key} layer '{layer.name()}' is empty: it has no feature"
        return True, ""

    def add_class_fields(self, what: str):
        # Plain strings: QGIS 3.22's field widget crashes when its parent map-layer parameter
        # holds a raster, and the labels parameters accept rasters too.
        self.addParameter(QgsProcessingParameterString("CLASS_FIELD", f"Class field ({what})", optional=True))
        self.addParameter(QgsProcessingParameterString(
            "CLASS_NAME_FIELD", f"Class name field ({what} with an integer class field)", optional=True))

    def add_label_conventions(self, what: str):
        """LABEL_NODATA and CLASS_NAMES (advanced): how a label raster codes "no label" and
        where its class names are."""
        nodata = QgsProcessingParameterString(
            "LABEL_NODATA", f"{what} raster values meaning 'no label' (e.g. -1 or 255 or '-1, 255'; empty: its nodata "
            "value, else 0)", optional=True)
        names = QgsProcessingParameterFile(
            "CLASS_NAMES", f"Class names for the {what.lower()} raster (.qml style, .clr, or 'code,name' text)",
            optional=True, fileFilter="Class names (*.qml *.clr *.csv *.txt);;All files (*)")
        for p in (nodata, names):
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)

    def labels_source(self, parameters, key: str, context, feedback) -> Tuple[str, Optional[str], Optional[str]]:
        """(path the backend reads, class field or None, class name field or None) for a labels parameter."""
        layer = self.parameterAsLayer(parameters, key, context)
        if isinstance(layer, QgsRasterLayer):
            return raster_path(layer, key), None, None
        if isinstance(layer, QgsVectorLayer):
            return (vector_path(layer, key, feedback), self.parameterAsString(parameters, "CLASS_FIELD", context),
                    self.parameterAsString(parameters, "CLASS_NAME_FIELD", context) or None)
        raise QgsProcessingException(f"{key}: give a class raster or a point/polygon vector layer")

    def add_force(self):
        p = QgsProcessingParameterBoolean(
            "FORCE", "Accept inputs whose band order or pixel size differs from training", defaultValue=False)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)

    def add_normalize(self):
        p = static_enum("NORMALIZE", "Input standardisation", NORMALIZE_CHOICES, "model")
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)

    def normalize(self, parameters, context) -> str:
        return self.enum(parameters, "NORMALIZE", context)

    def add_precision(self):
        p = static_enum("PRECISION", "Arithmetic precision", PRECISION_CHOICES, "auto")
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(p)

    def device(self, parameters, context) -> str:
        return self.enum(parameters, "DEVICE", context)

    def enum(self, parameters, key: str, context) -> str:
        """The chosen option of a static-string enum parameter (an option index, as files
        saved before rsvl 0.4 hold, is taken as that option)."""
        return self.parameterAsEnumString(legacy_parameters(self, parameters), key, context)

    def helpUrl(self):  # noqa: N802 (QGIS API name)
        return f"{DOCS_URL}#{self.name()}"

    # -- packages ---------------------------------------------------------------------------
    # Distributions (as in requirements/runtime.txt) the algorithm needs; None: all required ones.
    requires: Optional[Tuple[str, ...]] = None

    def check_packages(self) -> Tuple[bool, str]:
        from ..packages import missing

        return missing(self.requires, f"rsvl:{self.name()}")

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        """Missing packages first, in words a user can act on (dialogs, Model Designer and
        qgis_process all call this before running)."""
        ok, message = self.check_packages()
        if not ok:
            return False, message
        parameters = legacy_parameters(self, parameters)
        for definition in self.parameterDefinitions():  # what is allowed, before QGIS's "Incorrect parameter value"
            message = refusal(definition, parameters.get(definition.name()), context)
            if message:
                return False, message
        return super().checkParameterValues(parameters, context)

    # -- running ---------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        """Resolve layers into file paths on the main thread, before the background run."""
        ok, message = self.check_packages()
        if not ok:
            raise QgsProcessingException(message)
        from ...backend.errors import RsvlError

        try:
            self._request = self.backend_request(legacy_parameters(self, parameters, feedback), context, feedback)
        except RsvlError as exc:  # an output checked before the run (name, folder, room)
            raise QgsProcessingException(str(exc)) from exc
        # Resolving an output layer registers it for loading in *this* context. A dialog runs
        # processAlgorithm in a thread with a fresh context whose list replaces this one when
        # the run ends, so the registrations are carried over there (see processAlgorithm).
        self._layers_to_load = dict(context.layersToLoadOnCompletion())
        return True

    # Parameters renamed since 0.3 that saved models and scripts may still give: old -> new.
    renamed: Dict[str, str] = {}

    def backend_request(self, parameters, context, feedback) -> Tuple[Callable, dict]:
        raise NotImplementedError

    def finish(self, result, parameters, context, feedback) -> dict:
        raise NotImplementedError

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        for path, details in getattr(self, "_layers_to_load", {}).items():
            if not context.willLoadLayerOnCompletion(path):
                context.addLayerToLoadOnCompletion(path, details)
        function, kwargs = self._request
        result = run_backend(function, kwargs, feedback)
        return self.finish(result, parameters, context, feedback)


def run_backend(function: Callable, kwargs: dict, feedback, progress: Optional[Callable] = None,
                is_cancelled: Optional[Callable] = None):
    """Call one backend entry point with progress, cancel and logging wired to
    ``feedback``; the one place where ``RsvlError`` becomes ``QgsProcessingException``."""
    from ...backend.errors import CancelledError, RsvlError

    last = {"message": None}

    def default_progress(fraction, message):
        feedback.setProgress(100.0 * fraction)
        if message and message != last["message"]:
            last["message"] = message
            feedback.setProgressText(message)

    handler = BackendLogHandler(feedback)
    logger = logging.getLogger("rsvl")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)  # the backend's info messages belong in the Processing log
    logger.addHandler(handler)
    # rsvl's records go to the feedback only: not also to a root handler that a library set
    # up (open_clip logs through the root logger, which configures it: 'INFO:rsvl:…' on stderr)
    propagate, logger.propagate = logger.propagate, False
    try:
        return function(progress=progress or default_progress, is_cancelled=is_cancelled or feedback.isCanceled,
                        **kwargs)
    except CancelledError as exc:
        raise QgsProcessingException(f"Cancelled: {exc}") from exc
    except RsvlError as exc:
        raise QgsProcessingException(str(exc)) from exc
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
