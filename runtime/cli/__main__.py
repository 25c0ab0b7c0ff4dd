"""``python -m crossmodal.cli ...``: the ``crossmodal`` command."""

from . import main

raise SystemExit(main())
