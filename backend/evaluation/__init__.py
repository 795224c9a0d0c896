"""Accuracy: metrics (metrics), the evaluation report (report) and per-pixel baselines such as the random forest
(baselines)."""
