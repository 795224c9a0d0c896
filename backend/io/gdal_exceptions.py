"""GDAL/OGR Python bindings raise exceptions only when asked to, and the switch is
process-wide: inside QGIS other plugins rely on its old value. Turn it on for a block and
restore it after."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def gdal_exceptions() -> Iterator[None]:
    from osgeo import gdal, ogr

    saved = (gdal.GetUseExceptions(), ogr.GetUseExceptions())
    gdal.UseExceptions()
    ogr.UseExceptions()
    try:
        yield
    finally:  # GDAL keeps a stack of error handlers: undo in reverse order
        if not saved[1]:
            ogr.DontUseExceptions()
        if not saved[0]:
            gdal.DontUseExceptions()
