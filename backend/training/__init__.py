"""Training: the loop (loop), its options (config), recipes (recipes/), self-supervised pretraining (pretrain),
spectral distillation (distill) and torchrun helpers (ddp)."""
