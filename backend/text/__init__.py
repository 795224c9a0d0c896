"""Text encoders aligned with the image side (encoders), and the subprocess that serves them away from QGIS's
process (worker, server)."""
