"""``python -m crossmodal ...``: the ``crossmodal`` command without the console script."""

from .cli import main

raise SystemExit(main())
