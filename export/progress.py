"""Stage names and a rough ETA while a tower exports, on stderr.

A full-size export runs for minutes (trace, parity, fusions, one trial per int8
recipe, fp16, write) and used to print nothing in between. The ETA is the mean
time of the stages done so far times the stages left: stages differ in cost, so
it is rough, and it settles as the export goes on. On a terminal a tqdm bar
shows it; elsewhere (logs, CI) one line per stage.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Sequence


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


class Stages:
    """Progress of one export through ``planned`` stages; call it with each stage's name as it starts.

    A stage not in ``planned`` (a recipe added on the way) extends the total.
    """

    def __init__(self, what: str, planned: Sequence[str], stream: IO[str] | None = None) -> None:
        self.what = what
        self.total = max(len(planned), 1)
        self.done = 0
        self.names: list[str] = []
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self._bar: Any = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=what, file=self.stream, unit="stage", leave=False)

    def eta_seconds(self) -> float | None:
        """Seconds left by the mean stage time so far (None before the first stage ends)."""
        if self.done == 0:
            return None
        return (time.monotonic() - self.start) / self.done * max(self.total - self.done, 0)

    def __call__(self, name: str) -> None:
        if self.names:
            self.done += 1
        self.names.append(name)
        self.total = max(self.total, len(self.names))
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.set_description_str(f"{self.what}: {name}")
            self._bar.update(self.done - self._bar.n)
            return
        eta = self.eta_seconds()
        left = "" if eta is None else f", ~{_clock(eta)} left"
        print(f"[{self.what}] {name} ({len(self.names)}/{self.total}, {_clock(time.monotonic() - self.start)} elapsed"
              f"{left})", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def quiet(name: str) -> None:
    """A stage callback that shows nothing."""


__all__ = ["Stages", "quiet"]
