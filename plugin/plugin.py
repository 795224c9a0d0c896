"""The QGIS plugin object: registers the Processing provider and the menu actions."""

from __future__ import annotations

from qgis.core import QgsApplication


class RsvlPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.actions = []

    # Called by QGIS (and by qgis_process) to register Processing providers.
    def initProcessing(self):  # noqa: N802 (QGIS API name)
        from .provider import RsvlProvider

        if self.provider is None:
            self.provider = RsvlProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS API name)
        self.initProcessing()

    def unload(self):
        for action in self.actions:
            self.iface.removePluginMenu("&rsvl", action)
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
