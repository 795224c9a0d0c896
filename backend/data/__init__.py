"""Training samples drawn from rasters: patches and normalisation (samples), train/test splits (splits) and
augmentation (augment)."""
