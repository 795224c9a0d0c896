"""Raster and label I/O: reading co-registered layers (raster), labels from rasters and vector layers (labels),
atomic output writes (atomic), GDAL error handling (gdal_exceptions) and class colour tables (palette)."""
