"""``python -m sidecar.sim``: the same as ``pushsidecar simulate``."""

import sys

from .cli import main

sys.exit(main())
