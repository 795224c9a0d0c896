"""Band groups for band-group prompting (BP-LCZ, recipe ``band-groups``; the paper gives
only its abstract, so the details below are rsvl's design, documented here).

- Grouping by physics: Sentinel-2 bands (recognised by their codes in the band
  descriptions, or a 13-band L1C / 12-band L2A stack by count) go to visible (B02 B03 B04),
  red edge (B05 B06 B07), near infrared (B08 B8A), short-wave infrared (B11 B12) and
  coastal/atmospheric (B01 B09 B10); SAR bands to VV and VH by name (else one group per
  band); elevation is one group; hyperspectral bands to four contiguous ranges of equal
  size. A JSON file gives other groups: ``{"ms": {"visible": ["B02", "B03", "B04"], ...}}``
  with band names or 1-based numbers; bands it does not name are left out.
- Each group is one encoder branch (MMLGNet's CNN) and its features are projected into
  the text space and aligned with a prompt that describes the group's physics with the
  class ("the near-infrared reflectance of forest"), with the supervised matrix (every
  same-class pair in a batch is a positive). The fused embedding is aligned with the
  class prompt as in MMLGNet; the loss is the fused loss plus the mean of the group
  losses. Maps use the fused embedding only, through the dense engine.
- Training: MMLGNet's schedule (Adam 1e-4, early stopping on the validation split).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from ...errors import InputError

S2_GROUPS = (
    ("visible", ("B02", "B03", "B04"), "the visible reflectance"),
    ("red-edge", ("B05", "B06", "B07"), "the red-edge reflectance"),
    ("nir", ("B08", "B8A"), "the near-infrared reflectance"),
    ("swir", ("B11", "B12"), "the short-wave infrared reflectance"),
    ("atmosphere", ("B01", "B09", "B10"), "the coastal and atmospheric bands"),
)
S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_L2A = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
DESCRIPTIONS = {g: d for g, _b, d in S2_GROUPS}
DESCRIPTIONS.update({"vv": "the VV radar backscatter", "vh": "the VH radar backscatter",
                     "elevation": "the elevation"})
HSI_RANGES = 4


def _s2_codes(names: Sequence[str]) -> List[Optional[str]]:
    from ...foundation.bands import sentinel2_band

    codes = [sentinel2_band(n) for n in names]
    if len([c for c in codes if c]) < 3:  # not named: a full stack by its count
        if len(names) == len(S2_L1C):
            return list(S2_L1C)
        if len(names) == len(S2_L2A):
            return list(S2_L2A)
    return codes


def default_groups(modality: str, names: Sequence[str]) -> List[list]:
    """[[group, [band indexes]], ...] for one modality's bands."""
    n = len(names)
    if modality == "lidar":
        return [["elevation", list(range(n))]]
    if modality == "sar":
        out = []
        for pol in ("vv", "vh"):
            idx = [i for i, name in enumerate(names) if pol in name.lower()]
            if idx:
                out.append([pol, idx])
        used = {i for _g, idx in out for i in idx}
        out += [[f"band{i + 1}", [i]] for i in range(n) if i not in used]
        return out
    if modality == "ms":
        codes = _s2_codes(names)
        out = [[g, [i for i, c in enumerate(codes) if c in bands]] for g, bands, _d in S2_GROUPS]
        out = [g for g in out if g[1]]
        used = {i for _g, idx in out for i in idx}
        rest = [i for i in range(n) if i not in used]
        if rest:  # bands that are not Sentinel-2's: one more group
            out.append(["other", rest])
        return out
    # hsi: contiguous ranges of equal size
    k = min(HSI_RANGES, n)
    bounds = [j * n // k for j in range(k + 1)]
    return [[f"bands {bounds[j] + 1}-{bounds[j + 1]}", list(range(bounds[j], bounds[j + 1]))] for j in range(k)]


def describe(group: str, modality: str) -> str:
    """The physics a group's prompt describes ("the near-infrared reflectance")."""
    if group in DESCRIPTIONS:
        return DESCRIPTIONS[group]
    if modality == "hsi":
        return f"the hyperspectral {group}"
    return f"the {group} of the {modality} image"


def groups_from_file(path: str, band_names: Dict[str, List[str]]) -> Dict[str, List[list]]:
    """User groups from a JSON file: {modality: {group: [band names or 1-based numbers]}}."""
    if not os.path.isfile(path):
        raise InputError(f"BAND_GROUPS file {path!r} does not exist")
    try:
        spec = json.loads(open(path, encoding="utf-8").read())
    except ValueError as exc:
        raise InputError(f"BAND_GROUPS {path!r} is not valid JSON: {exc}") from exc
    out = {}
    for modality, groups in spec.items():
        if modality not in band_names:
            raise InputError(f"BAND_GROUPS names modality {modality!r}, which has no input layer")
        names = band_names[modality]
        out[modality] = []
        for group, bands in groups.items():
            idx = []
            for b in bands:
                if isinstance(b, int) or str(b).isdigit():
                    i = int(b) - 1
                elif b in names:
                    i = names.index(b)
                else:
                    raise InputError(f"BAND_GROUPS: {modality} has no band {b!r} (bands: {', '.join(names)})")
                if not 0 <= i < len(names):
                    raise InputError(f"BAND_GROUPS: {modality} band {b} is out of range (1..{len(names)})")
                idx.append(i)
            out[modality].append([group, idx])
    for modality, names in band_names.items():  # modalities the file does not name: default groups
        out.setdefault(modality, default_groups(modality, names))
    return out


def band_groups(band_names: Dict[str, List[str]], path: Optional[str] = None) -> Dict[str, List[list]]:
    """Groups of every modality: from ``path`` when given, else by physics."""
    if path:
        return groups_from_file(path, band_names)
    return {m: default_groups(m, names) for m, names in band_names.items()}


def group_prompts(groups: Dict[str, List[list]], class_names: Sequence[str]) -> Dict[str, List[str]]:
    """{branch key: ["<physics> of <class>", ...]} for the group alignment."""
    return {f"{m}:{g}": [f"{describe(g, m)} of {c}" for c in class_names] for m, gs in groups.items() for g, _i in gs}


def prepare(inputs):
    import logging

    from .base import RecipeSetup

    groups = band_groups(inputs.band_names, inputs.band_groups_file)
    group_text = {k: inputs.encode(v) for k, v in group_prompts(groups, list(inputs.class_names)).items()}
    description = "band groups: " + "; ".join(f"{m}: " + ", ".join(f"{g} ({len(i)})" for g, i in gs)
                                              for m, gs in groups.items())
    logging.getLogger("rsvl").debug(description)
    return RecipeSetup(config={"groups": groups}, group_text=group_text, description=description)


def _recipe():
    from .base import Recipe

    return Recipe(
        name="band-groups",
        summary="BP-LCZ band-group prompting: one branch per physical band group, each aligned to "
                "'<group physics> of <class>' prompts, plus the fused embedding; MMLGNet's schedule",
        settings={"schedule": "early-stopping", "epochs": 100, "learning_rate": 1e-4},
        prepare=prepare,
        uses_band_groups_file=True,
    )


RECIPE = _recipe()
