"""Paths of the plugin's icons (below the provider and the algorithms that show them)."""

import os

ICON_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.svg")
