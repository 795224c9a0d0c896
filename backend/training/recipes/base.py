"""What a recipe is (:class:`Recipe`) and what it is given and gives back; the registry is
in :mod:`rsvl.backend.training.recipes`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence


@dataclass
class RecipeInputs:
    """What a recipe may look at to shape its model."""

    band_names: Dict[str, List[str]]  # modality -> band names, in input order
    class_names: Sequence[str]
    encode: Callable[[List[str]], object]  # texts -> (N, D) text embeddings of the model's encoder
    band_groups_file: Optional[str] = None


@dataclass
class RecipeSetup:
    """A recipe's additions to the model and the loss."""

    config: Dict[str, object] = field(default_factory=dict)  # extra ModelConfig fields (groups, pixel_channels)
    group_text: Optional[Dict[str, object]] = None  # branch key -> (C, D) texts each branch is aligned to
    description: str = ""  # logged


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    settings: Dict[str, object]  # TrainSettings fields: the recipe's defaults (user values win where given)
    prepare: Callable[[RecipeInputs], RecipeSetup]
    dense: bool = True  # whole-scene passes use the exact dense engine (else the windowed per-patch path)
    uses_band_groups_file: bool = False
