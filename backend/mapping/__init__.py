"""Whole-scene maps from a trained model: in-process inference (inference) and the Dask cluster
path (cluster). The windows both cut the scene into come from :mod:`rsvl.backend.io.windows`."""
