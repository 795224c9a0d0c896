"""Default class colours for classes that bring none (distinct, colour-blind friendly first)."""

from __future__ import annotations

from typing import Tuple

# Okabe-Ito, then Tableau 20 without near-duplicates.
_PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148),
]


def default_colour(index: int) -> Tuple[int, int, int]:
    """Colour of the index-th class; beyond the palette, evenly spaced hues."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    import colorsys

    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)
