"""Progress of a run: a tqdm bar on a terminal; in a log file (stderr not a terminal: batch jobs,
sweeps, CI) one line every ``interval`` seconds and at the end, with the iteration, the rate
and the ETA, instead of a bar that a log shows stuck at 0."""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.1 h``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LogLines:
    """The non-interactive progress display (tqdm's interface: ``update``, ``total``, ``close``)."""

    def __init__(self, total: int, initial: int, desc: str, interval: float = 30.0, stream=None):
        self.total, self.n, self.desc, self.interval = total, initial, desc, interval
        self.stream = stream or sys.stderr
        self._start_n, self._t0 = initial, time.perf_counter()
        self._last = self._t0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._say(now)

    def _say(self, now: float) -> None:
        rate = (self.n - self._start_n) / max(now - self._t0, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.n / max(self.total, 1)
        print(f"{self.desc}: it {self.n}/{self.total} ({pct:.1f} %), {rate:.3g} it/s, ETA {duration(left)}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.n > self._start_n:
            self._say(time.perf_counter())


class Silent:
    total = 0

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, initial: int, desc: str, enabled: bool, interval: float = 30.0):
    """A tqdm bar with rate and ETA on a terminal, periodic lines otherwise, nothing if disabled."""
    if not enabled:
        return Silent()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="it", mininterval=0.5, dynamic_ncols=True)
    return LogLines(total, initial, desc, interval)
