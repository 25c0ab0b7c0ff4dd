"""Stage names and a rough ETA while a tower exports, on stderr.

A full-size export runs for minutes (trace, parity, fusions, one trial per int8
recipe, fp16, write) and used to print nothing in between. The ETA weighs each
stage by its typical share of an export (:data:`WEIGHTS`, from a full-size
ViT-B/32 image export: the fp32 parity and fusion stage is about half of it) and
scales the time spent so far: rough, settling as the export goes on. Each line
also shows the process's peak RSS so far, the figure an export must keep under
the machine's memory. On a terminal a tqdm bar shows it; elsewhere (logs, CI)
one line per stage.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Sequence

# Relative cost of a stage, by the first word of its name (default 1).
WEIGHTS = {"trace": 1.5, "fp32": 8.0, "int8": 1.0, "fp16": 3.0, "write": 0.5}


def weight(stage: str) -> float:
    """The relative cost of ``stage`` (by its first word)."""
    return WEIGHTS.get(stage.split(" ", 1)[0], 1.0)


def peak_rss_gb() -> float | None:
    """This process's peak resident memory so far, in GB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb * 1024 / 1e9 if sys.platform != "darwin" else kb / 1e9


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


class Stages:
    """Progress of one export through ``planned`` stages; call it with each stage's name as it starts.

    A stage not in ``planned`` (a recipe added on the way) extends the total.
    """

    def __init__(self, what: str, planned: Sequence[str], stream: IO[str] | None = None) -> None:
        self.what = what
        self.planned = list(planned)
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
        """Seconds left: time so far scaled by the weights of the stages left (None before the first stage ends)."""
        if self.done == 0:
            return None
        done = sum(weight(n) for n in self.names[:self.done])
        left = [n for n in self.planned if n not in self.names[:self.done]]
        left += [""] * max(self.total - self.done - len(left), 0)  # stages beyond the plan weigh 1
        return (time.monotonic() - self.start) / done * sum(weight(n) if n else 1.0 for n in left)

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
        rss = peak_rss_gb()
        peak = "" if rss is None else f", peak RSS {rss:.1f} GB"
        print(f"[{self.what}] {name} ({len(self.names)}/{self.total}, {_clock(time.monotonic() - self.start)} elapsed"
              f"{left}{peak})", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def quiet(name: str) -> None:
    """A stage callback that shows nothing."""


__all__ = ["WEIGHTS", "Stages", "peak_rss_gb", "quiet", "weight"]
