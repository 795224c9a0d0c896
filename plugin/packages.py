"""rsvl's packages folder in QGIS: where it is (a setting, ``RSVL_PACKAGES`` first), putting
it on ``sys.path`` when the plugin loads, and the dependency check every algorithm runs
before anything imports torch or rasterio."""

from __future__ import annotations

import os
from typing import Iterable, Optional, Tuple

from qgis.core import QgsApplication, QgsSettings

from ..backend.runtime import dependencies

SETTING_FOLDER = "rsvl/packages_folder"
SETTING_OFFERED = "rsvl/installer_offered"


def configured_folder() -> str:
    """``RSVL_PACKAGES``, else the folder chosen in the installer, else the profile's default."""
    env = os.environ.get(dependencies.PACKAGES_ENV)
    if env:
        return env
    value = QgsSettings().value(SETTING_FOLDER, "", type=str)
    return value or dependencies.default_folder(QgsApplication.qgisSettingsDirPath())


def set_configured_folder(folder: str) -> None:
    default = dependencies.default_folder(QgsApplication.qgisSettingsDirPath())
    if os.path.abspath(folder) == os.path.abspath(default):
        QgsSettings().remove(SETTING_FOLDER)
    else:
        QgsSettings().setValue(SETTING_FOLDER, folder)


def activate() -> Optional[str]:
    """Put the packages folder on sys.path (cheap: no import)."""
    return dependencies.activate(configured_folder())


def missing(names: Optional[Iterable[str]], what: str) -> Tuple[bool, str]:
    """(ok, message) for the packages an algorithm needs."""
    message = dependencies.missing_message(dependencies.check(names), what)
    return not message, message
