"""The named steps of ``add`` and ``save`` at which a killed writer must leave a consistent index.

The store and the metadata store call :func:`reached` at each step; in production it
does nothing. The durability tests replace it (``crash_points.reached = ...`` in a
writer subprocess) to stop the writer at one step and kill it there with SIGKILL,
so the crash-safety claims of :mod:`crossmodal.index.store` are checked at exactly
these points rather than at random moments only.
"""

from __future__ import annotations

# In the order a save reaches them; "add:journaled" is inside add's SQLite transaction.
STEPS = ("add:journaled", "save:tmp-written", "save:committed", "save:replaced")


def reached(step: str) -> None:
    """Called by the index at ``step`` (one of :data:`STEPS`); a no-op unless a test replaced it."""


__all__ = ["STEPS", "reached"]
