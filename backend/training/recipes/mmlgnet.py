"""``mmlgnet``: the MMLGNet paper's recipe as published (Chaudhary et al.): one CNN branch
per modality, fused, aligned to the frozen class prompts; Adam at 1e-4, batch 128, up to
100 epochs, early stopping on a class-stratified validation split (patience 15), best
weights kept. Served by the dense engine."""

from __future__ import annotations

from .base import Recipe, RecipeInputs, RecipeSetup


def prepare(inputs: RecipeInputs) -> RecipeSetup:
    return RecipeSetup(description="MMLGNet: one CNN branch per modality")


RECIPE = Recipe(
    name="mmlgnet",
    summary="MMLGNet as published: one CNN branch per modality, fused, aligned to the class prompts; Adam 1e-4, "
            "early stopping on the validation split",
    settings={"schedule": "early-stopping", "epochs": 100, "learning_rate": 1e-4},
    prepare=prepare,
)
