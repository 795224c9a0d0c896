"""Class colours for classes and prompts that bring none.

A map is read by its colours before its legend, so a name that says what it is gets the
colour people expect of it: water blue, forest dark green, grassland light green, crops
yellow, built-up red, roads grey, bare soil tan … (:data:`LEXICON`, matched on the start
of each word of the name, so "Flooded fields", "built-up area", "Broadleaf forests" and
"greenhouses" all match). Names the lexicon does not know, and a second name that would
repeat a colour already taken, get the next colour of a qualitative, colour-blind-friendly
palette (Okabe-Ito, then Tableau 20).
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

RGB = Tuple[int, int, int]

# Okabe-Ito, then Tableau 20 without near-duplicates.
_PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148),
]

# (word starts, colour), most specific first: "flooded fields" is water, not a crop.
LEXICON: List[Tuple[Tuple[str, ...], RGB]] = [
    (("flood", "inundat"), (100, 170, 240)),
    (("wetland", "marsh", "swamp", "bog", "fen", "mangrove", "peat"), (90, 190, 190)),
    (("water", "river", "lake", "sea", "ocean", "pond", "reservoir", "stream", "canal", "lagoon"), (31, 120, 220)),
    (("snow", "ice", "glacier"), (235, 240, 250)),
    (("cloud",), (205, 205, 205)),
    (("shadow",), (45, 45, 70)),
    (("greenhouse", "polytunnel"), (190, 225, 235)),
    (("road", "street", "highway", "motorway", "parking", "asphalt", "rail", "runway", "pavement"), (110, 110, 110)),
    (("urban", "built", "building", "artificial", "settlement", "city", "town", "residential", "industrial",
      "commercial", "impervious", "house", "roof", "village"), (210, 40, 40)),
    (("forest", "tree", "wood", "broadleaf", "conifer", "evergreen", "deciduous", "jungle", "plantation"),
     (20, 110, 40)),
    (("shrub", "schrub", "scrub", "bush", "heath", "maquis"), (130, 150, 60)),
    (("grass", "meadow", "pasture", "lawn", "rangeland", "herbaceous", "prairie", "savanna"), (140, 210, 90)),
    (("crop", "cultivat", "agricultur", "farm", "field", "arable", "paddy", "rice", "wheat", "maize", "corn",
      "vineyard", "orchard", "olive", "fallow"), (240, 210, 70)),
    (("bare", "soil", "sand", "desert", "rock", "barren", "beach", "dune", "quarry", "mine", "gravel"),
     (200, 170, 120)),
]


def default_colour(index: int) -> RGB:
    """Colour of the index-th class of the qualitative palette; beyond it, evenly spaced hues."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    import colorsys

    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def lexicon_colour(name: str) -> Optional[RGB]:
    """The colour people expect for a land-cover name, or None when the lexicon does not know it."""
    words = re.findall(r"[a-z]+", name.lower())
    for starts, colour in LEXICON:
        if any(word.startswith(start) for word in words for start in starts):
            return colour
    return None


def assign_colours(names: Sequence[str], given: Optional[Sequence[Optional[RGB]]] = None) -> List[RGB]:
    """One colour per name: the ``given`` one where there is one, else the lexicon's, else the
    next palette colour not yet used — no two names share a colour."""
    given = list(given) if given is not None else [None] * len(names)
    used = {tuple(c) for c in given if c is not None}
    out: List[RGB] = []
    palette = _palette_iter(used)
    for name, colour in zip(names, given):
        if colour is None:
            colour = lexicon_colour(name)
            if colour is None or colour in used:
                colour = next(palette)
            used.add(colour)
        out.append(tuple(colour))
    return out


def _palette_iter(used: Iterable[RGB]):
    index = 0
    while True:
        colour = default_colour(index)
        index += 1
        if colour not in used:
            yield colour
