"""``python -m crossmodal.serve BUNDLE ...``: the same as ``crossmodal serve``."""

import sys

from .cli import main

sys.exit(main())
