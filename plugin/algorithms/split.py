"""rsvl:split — split a class raster into training and test labels, at random or spatially apart."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..styling import backend_classes, style_output_on_load, write_class_style
from .base import RsvlAlgorithm, raster_path
from .parameters import LABEL_CONVENTIONS_HELP, short_help, static_enum

MODES = ["random", "checkerboard", "blocks"]


class SplitAlgorithm(RsvlAlgorithm):
    requires = ("numpy", "rasterio", "scipy")  # no PyTorch: raster reading, counting, the buffer filter

    def name(self):
        return "split"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Split labels into training and test"

    def parameter_help(self) -> str:
        return (
            "Splits a class raster into training and test class rasters on the same grid, with the same colours "
            "and class names, seeded and reproducible. A random pixel split puts test pixels next to training "
            "pixels, so a patch around a test pixel sees training pixels and patch models look better than they "
            "are; the spatial modes keep the two apart.<br><br>"
            "<b>INPUT</b>: class raster (its nodata value, else 0, = unlabelled; see LABEL_NODATA).<br>"
            "<b>FRACTION</b>: share of each class's pixels that goes to the training map.<br>"
            "<b>MODE</b>: <i>random</i> pixels, stratified by class; <i>checkerboard</i>: squares of BLOCK_SIZE "
            "pixels, training pixels drawn only from the dark squares, test pixels are every labelled pixel of the "
            "light squares; <i>blocks</i>: squares of BLOCK_SIZE pixels in a random order go to training until "
            "it holds FRACTION of the labelled pixels, the others to test.<br>"
            "<b>BLOCK_SIZE</b>: square side in pixels (checkerboard, blocks).<br>"
            "<b>BUFFER</b>: test pixels within this many pixels of a training pixel are dropped (half the patch "
            "size, e.g. 5 for 11 × 11 patches, keeps every test patch free of training pixels).<br>"
            "<b>SEED</b>: random seed.<br>"
            + LABEL_CONVENTIONS_HELP.replace("the label raster", "the input raster") +
            "<b>OUTPUT_FIRST</b>, <b>OUTPUT_SECOND</b>: the training and the test class rasters."
        )

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return short_help(
            'Splits a class raster into training and test class rasters on the same grid, with the same '
            'colours and class names, seeded.',
            inputs=('INPUT (a class raster), FRACTION of each class for training, MODE (random, checkerboard or '
                    'blocks).'),
            outputs=('OUTPUT_FIRST (training labels) and OUTPUT_SECOND (test labels), class rasters.'),
            tip=('MODE=checkerboard or blocks (with a BUFFER) keeps test pixels away from training ones, so the '
                 'figures are not flattered by neighbouring pixels.'),
            url=self.helpUrl())

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.addParameter(QgsProcessingParameterNumber("FRACTION", "Training fraction",
                                                       type=QgsProcessingParameterNumber.Double, defaultValue=0.1,
                                                       minValue=0.0001, maxValue=0.9999))
        self.addParameter(static_enum("MODE", "Split", MODES, "checkerboard"))
        self.addParameter(QgsProcessingParameterNumber("BLOCK_SIZE", "Block size (pixels)",
                                                       type=QgsProcessingParameterNumber.Integer, defaultValue=20,
                                                       minValue=1))
        self.addParameter(QgsProcessingParameterNumber("BUFFER", "Buffer between training and test (pixels)",
                                                       type=QgsProcessingParameterNumber.Integer, defaultValue=0,
                                                       minValue=0))
        seed = QgsProcessingParameterNumber("SEED", "Random seed", type=QgsProcessingParameterNumber.Integer,
                                            defaultValue=0, minValue=0)
        seed.setFlags(seed.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(seed)
        self.add_label_conventions("Input")
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_FIRST", "Training labels"))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_SECOND", "Test labels"))

    def backend_request(self, parameters, context, feedback):
        from ...backend.io.labels import split_label_raster

        self._paths = (self.parameterAsOutputLayer(parameters, "OUTPUT_FIRST", context),
                       self.parameterAsOutputLayer(parameters, "OUTPUT_SECOND", context))
        kwargs = dict(
            path=raster_path(self.parameterAsRasterLayer(parameters, "INPUT", context), "INPUT"),
            fraction=self.parameterAsDouble(parameters, "FRACTION", context),
            seed=self.parameterAsInt(parameters, "SEED", context),
            first_path=self._paths[0], second_path=self._paths[1],
            mode=self.enum(parameters, "MODE", context),
            block_size=self.parameterAsInt(parameters, "BLOCK_SIZE", context),
            buffer=self.parameterAsInt(parameters, "BUFFER", context),
            nodata_values=self.parameterAsString(parameters, "LABEL_NODATA", context).strip() or None,
            names_file=self.parameterAsFile(parameters, "CLASS_NAMES", context) or None,
        )

        return split_label_raster, kwargs

    def finish(self, result, parameters, context, feedback):
        classes = backend_classes(result.classes)
        for path in self._paths:
            write_class_style(path, classes)
            style_output_on_load(context, path, classes)
        for c in result.classes:
            feedback.pushInfo(f"{c.name}: {result.first.get(c.code, 0)} training, {result.second.get(c.code, 0)} test "
                              "pixels")
        return {"OUTPUT_FIRST": self._paths[0], "OUTPUT_SECOND": self._paths[1]}
