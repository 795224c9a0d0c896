"""QGIS side of rsvl: Processing provider, algorithms, tasks, styling.

Thin by design: every algorithm gathers parameters, calls one ``rsvl.backend.api``
function and styles/loads what it wrote. Heavy imports happen inside processAlgorithm.
"""
