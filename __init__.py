"""rsvl — remote-sensing vision-language QGIS plugin.

QGIS imports this package (the plugin folder is named ``rsvl``) and calls
:func:`classFactory`. Nothing heavy is imported here: torch, transformers and open_clip
are loaded only when an algorithm runs.
"""


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin.plugin import RsvlPlugin

    return RsvlPlugin(iface)
