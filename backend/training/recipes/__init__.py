"""Training recipes of rsvl:train (``RECIPE``, ``--recipe``): one small module per method,
chosen by name from :data:`RECIPES`.

A recipe says what it needs and how it trains (:class:`Recipe`): the model's architecture
beyond the inputs (:meth:`Recipe.prepare`: band groups, a pixel branch, extra text
targets), its training settings (schedule, learning rate, epochs, augmentation) and
whether the exact dense engine serves it. Every recipe writes the same model-file format
(MMLGNet's network with optional parts, :class:`rsvl.backend.models.mmlgnet.ModelConfig`), so
rsvl:classify and rsvl:query use any of them alike.

- ``spectral-spatial`` (default): MMLGNet plus a per-pixel spectral branch, one-cycle
  AdamW with a weight average, band dropout and spectral mixup, trained on every label
  (:mod:`.spectral_spatial`);
- ``mmlgnet``: the paper's recipe as published (:mod:`.mmlgnet`);
- ``band-groups``: BP-LCZ's band-group prompting (:mod:`.band_groups`).

The other papers' methods differ in their inputs and have their own entry points:
spectral distillation (``distill``), self-supervised pretraining (``pretrain`` /
``PRETRAINED``, which any recipe can start from) and few-shot heads on pretrained
checkpoints (``FOUNDATION_MODEL``).

This package imports no torch: the QGIS plugin lists the recipes when it loads.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from ...errors import InputError
from .base import Recipe, RecipeInputs, RecipeSetup

__all__ = ["DEFAULT_RECIPE", "RECIPES", "RECIPE_NAMES", "Recipe", "RecipeInputs", "RecipeSetup", "get_recipe"]


def _registry() -> Dict[str, Recipe]:
    from . import band_groups, mmlgnet, spectral_spatial

    return {r.name: r for r in (spectral_spatial.RECIPE, mmlgnet.RECIPE, band_groups.RECIPE)}


RECIPES: Dict[str, Recipe] = _registry()
RECIPE_NAMES: List[str] = list(RECIPES)
DEFAULT_RECIPE = "spectral-spatial"


def get_recipe(name: Optional[str]) -> Recipe:
    name = (name or DEFAULT_RECIPE).strip()
    if name not in RECIPES:
        raise InputError(f"RECIPE must be one of {', '.join(RECIPES)} (got {name!r})")
    return RECIPES[name]
