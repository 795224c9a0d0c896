"""Processing provider ``rsvl``."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .icons import ICON_PATH


class RsvlProvider(QgsProcessingProvider):
    def id(self):
        return "rsvl"

    def name(self):
        return "rsvl"

    def longName(self):  # noqa: N802 (QGIS API name)
        return "rsvl — remote-sensing vision-language"

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):  # noqa: N802 (QGIS API name)
        return ICON_PATH

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 (QGIS API name)
        # rsvl writes tiled, compressed GeoTIFFs with colour tables and category names; QGIS
        # offers only .tif in the dialogs and refuses other extensions with its own message.
        return ["tif"]

    def loadAlgorithms(self):  # noqa: N802 (QGIS API name)
        from .algorithms import all_algorithms

        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)
