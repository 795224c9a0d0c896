"""rsvl:retrieve — the tiles of a scene most similar to a text, with a pretrained checkpoint."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from .base import DEVICE_HELP, PRECISION_HELP, RsvlAlgorithm, raster_path
from .parameters import FOUNDATION_FILTER, PRESET_HELP, add_foundation_parameters, foundation_kwargs, short_help


class RetrieveAlgorithm(RsvlAlgorithm):
    def name(self):
        return "retrieve"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Retrieve tiles by text (pretrained checkpoint)"

    def parameter_help(self) -> str:
        return (
            "Finds the parts of a scene that best match a text, with a pretrained vision-language checkpoint "
            "(Llama3-MS-CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP, open_clip), no labels needed: the scene is cut into "
            "tiles, each tile's embedding is compared with the text's by cosine similarity, and the TOP_K tiles "
            "become polygons ranked by score.<br><br>"
            "<b>MODEL</b>: the checkpoint file.<br>"
            "<b>INPUT_MS</b>: a Sentinel-2 stack (multispectral models; RGB models take B04, B03, B02 from it), or "
            "<b>INPUT_RGB</b>: a 3-band RGB raster for RGB models.<br>"
            "<b>QUERY</b>: the text, e.g. 'greenhouses', 'a flooded field'.<br>"
            "<b>TOP_K</b>: how many tiles to keep. Tiles with less than half of their pixels valid are not ranked."
            "<br><b>OUTPUT</b>: polygons of the tiles with fields rank (1 = best), score (cosine similarity), query, "
            "row, col and size (pixels), styled by score.<br>" + PRESET_HELP.replace(
                "(0 = half the tile)", "(0 = the tile size: tiles do not overlap)") + DEVICE_HELP + PRECISION_HELP
        )

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return short_help(
            'Finds the tiles of a scene that best match a text with a pretrained vision-language checkpoint, '
            'no labels needed.',
            inputs=('MODEL (a checkpoint file), INPUT_MS (or an RGB raster), QUERY.'),
            outputs=('OUTPUT: the TOP_K tiles as polygons styled by score.'),
            tip=("try a few phrasings of the query; the preset's prompt templates are applied to it."),
            url=self.helpUrl())

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterFile("MODEL", "Pretrained checkpoint", fileFilter=FOUNDATION_FILTER))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "INPUT_MS", "Multispectral (Sentinel-2) raster(s)", layerType=QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "INPUT_RGB", "RGB raster (RGB checkpoints)", layerType=QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterString("QUERY", "Text to search for"))
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Number of tiles to keep",
                                                       type=QgsProcessingParameterNumber.Integer, minValue=1,
                                                       defaultValue=20))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT", "Retrieved tiles",
                                                                  type=QgsProcessing.TypeVectorPolygon))
        self.add_device()
        self.add_precision()
        add_foundation_parameters(self, tiling_default_stride="the tile size")

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        if not (self.parameterAsString(parameters, "QUERY", context) or "").strip():
            return False, "QUERY is empty: give the text to search for"
        if not (self.parameterAsLayerList(parameters, "INPUT_MS", context)
                or self.parameterAsLayerList(parameters, "INPUT_RGB", context)):
            return False, "No input layer: set INPUT_MS or INPUT_RGB"
        return True, ""

    def backend_request(self, parameters, context, feedback):
        from ...backend.foundation.retrieval import retrieve
        from ...backend.io.raster import LayerSpec

        layers = []
        for key in ("INPUT_MS", "INPUT_RGB"):
            for layer in self.parameterAsLayerList(parameters, key, context) or []:
                layers.append(LayerSpec(path=raster_path(layer, key), modality="ms", name=layer.name()))
        if not layers:
            raise QgsProcessingException("No input layer: set INPUT_MS or INPUT_RGB")
        f = foundation_kwargs(self, parameters, context)
        self._output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        kwargs = dict(
            checkpoint=self.parameterAsFile(parameters, "MODEL", context), layers=layers,
            query=self.parameterAsString(parameters, "QUERY", context), output=self._output,
            top_k=self.parameterAsInt(parameters, "TOP_K", context), preset=f["preset"], templates=f["templates"],
            tile_size=f["tile_size"] or None, stride=f["stride"], bands=f["bands"], scale=f["value_scale"],
            offset=f["offset"], device=self.device(parameters, context),
            precision=self.enum(parameters, "PRECISION", context),
        )
        return retrieve, kwargs

    def finish(self, result, parameters, context, feedback):
        from ..styling import style_scores_on_load

        style_scores_on_load(context, result.output)
        for rank, score, (r, c, h, w) in result.ranked[:5]:
            feedback.pushInfo(f"#{rank}: score {score:.4f}, rows {r}..{r + h}, cols {c}..{c + w}")
        feedback.pushInfo(f"{len(result.ranked)} of {result.windows} tiles kept ({result.preset})")
        return {"OUTPUT": result.output}
