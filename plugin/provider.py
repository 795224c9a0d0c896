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

    def loadAlgorithms(self):  # noqa: N802 (QGIS API name)
        from .algorithms import all_algorithms

        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)
