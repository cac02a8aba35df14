"""Progress of a run: a tqdm bar on a terminal; in a log file (stderr not a terminal: batch jobs,
sweeps, CI) one line every ``interval`` seconds and at the end, with the iteration, the rate
and the ETA, instead of a bar that a log shows stuck at 0. Both show the latest values the loop
notes (``note(label, value, unit)``: the training misfit, the test error), read (a device sync for
a tensor) only when shown."""

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


def _number(value) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


def noted(values: dict) -> str:
    """``misfit 0.0123, test error 12.3 %`` from the noted (label -> (value, unit))."""
    items = sorted(values.items(), key=lambda kv: kv[0].startswith("test"))    # the training misfit first
    return ", ".join(f"{label} {_number(v):.4g}{' ' + unit if unit else ''}" for label, (v, unit) in items)


class LogLines:
    """The non-interactive progress display (tqdm's interface: ``update``, ``total``, ``close``)."""

    def __init__(self, total: int, initial: int, desc: str, interval: float = 30.0, stream=None):
        self.total, self.n, self.desc, self.interval = total, initial, desc, interval
        self.stream = stream or sys.stderr
        self._start_n, self._t0 = initial, time.perf_counter()
        self._last = self._t0
        self.values: dict = {}

    def note(self, label: str, value, unit: str = "") -> None:
        """Show ``label value unit`` on the following lines (the latest value)."""
        self.values[label] = (value, unit)

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
        extra = f", {noted(self.values)}" if self.values else ""
        print(f"{self.desc}: it {self.n}/{self.total} ({pct:.1f} %), {rate:.3g} it/s, ETA {duration(left)}{extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.n > self._start_n:
            self._say(time.perf_counter())


class Silent:
    total = 0

    def note(self, label: str, value, unit: str = "") -> None:
        pass

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

        return Bar(tqdm(total=total, initial=initial, desc=desc, unit="it", mininterval=0.5, dynamic_ncols=True))
    return LogLines(total, initial, desc, interval)


class Bar:
    """A tqdm bar with the noted values as its postfix, refreshed at most twice a second."""

    def __init__(self, bar, every: float = 0.5):
        self.bar, self.every = bar, every
        self.values: dict = {}
        self._last = 0.0

    @property
    def total(self):
        return self.bar.total

    @total.setter
    def total(self, value) -> None:
        self.bar.total = value

    def note(self, label: str, value, unit: str = "") -> None:
        self.values[label] = (value, unit)

    def update(self, n: int = 1) -> None:
        now = time.perf_counter()
        if self.values and now - self._last >= self.every:
            self._last = now
            self.bar.set_postfix_str(noted(self.values), refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.values:
            self.bar.set_postfix_str(noted(self.values), refresh=False)
        self.bar.close()
