"""Headless backend of rsvl: raster I/O, alignment, datasets, encoders, training,
dense inference, zero-shot queries, metrics, model files and the CLI.

Never imports qgis or PyQt (a test checks it). The public entry points live in
:mod:`rsvl.backend.api`; ``python -m rsvl.backend --help`` is the command line.
"""

__version__ = "0.4.0"
