"""``python -m rsvl.backend`` — the headless command line."""

import sys

from .runtime.dependencies import activate_from_environment

activate_from_environment()  # RSVL_PACKAGES: the folder the QGIS installer filled

from .cli import main  # noqa: E402 (after the packages folder is on sys.path)

sys.exit(main())
