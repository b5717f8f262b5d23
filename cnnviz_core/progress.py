"""Progress on stderr for long runs, shown only once work has run for a few
seconds so quick runs stay silent.

In a terminal it is a live tqdm bar. Anywhere else (a CI log, a file, a pipe)
it is a few plain lines, never carriage returns: one when the bar would first
appear, one at each quarter, one at the end.

Whether it shows: on by default in the CLI (``--quiet`` turns it off), off by
default for Python callers (``Scheduler(progress=True)`` turns it on), and
``CNNVIZ_PROGRESS=1`` / ``=0`` decides wherever no explicit choice was made.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

PROGRESS_ENV = "CNNVIZ_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
MILESTONES = (0.25, 0.5, 0.75)


def progress_default(requested: bool | None = None, default: bool = False) -> bool:
    """An explicit choice wins; then ``$CNNVIZ_PROGRESS``; then ``default``
    (False for library calls, True for the CLI)."""
    if requested is not None:
        return bool(requested)
    setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if setting in _ON:
        return True
    if setting in _OFF:
        return False
    return default


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Counts ``done`` out of ``total`` (fractions allowed: nested batches
    report partial progress). ``set`` never goes backwards or past ``total``."""

    def __init__(self, total: int, desc: str = "", enabled: bool = True, delay: float = 2.0, stream=None):
        self.total = max(int(total), 1)
        self.desc = desc or "progress"
        self.enabled = enabled
        self.delay = delay
        self.stream = stream or sys.stderr
        self.done = 0.0
        self.start = time.perf_counter()
        self.shown = False
        self._bar: tqdm | None = None
        self._lines = enabled and not _is_terminal(self.stream)
        self._milestone = 0  # quarters reported so far, in line mode
        if enabled and not self._lines:
            self._bar = tqdm(total=self.total, desc=self.desc, file=self.stream, delay=delay, leave=True,
                             dynamic_ncols=True, bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]")

    def update(self, count: float) -> None:
        self.set(self.done + count)

    def set(self, done: float) -> None:
        self.done = min(float(self.total), max(self.done, float(done)))
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self.done - self._bar.n)
            self.shown = self.shown or time.perf_counter() - self.start >= self.delay
            return
        if time.perf_counter() - self.start < self.delay:
            return
        fraction = self.done / self.total
        crossed = sum(fraction >= milestone for milestone in MILESTONES)
        if not self.shown:
            self.shown = True
            self._milestone = crossed  # quarters passed before the first line are not reported
            self._write_line("started")
        elif crossed > self._milestone:  # one line, even when a big step crosses several quarters
            self._milestone = crossed
            if fraction < 1.0:  # the end has its own line, from close()
                self._write_line("")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.shown and self._lines:
            self._write_line("done" if self.done >= self.total else "stopped")
            self.shown = False  # one closing line, even if close is called twice

    def _write_line(self, note: str) -> None:
        elapsed = time.perf_counter() - self.start
        fraction = self.done / self.total
        text = f"{self.desc}: {fraction:4.0%} ({int(self.done)}/{self.total}) {tqdm.format_interval(elapsed)} elapsed"
        if 0 < fraction < 1:
            text += f", ~{tqdm.format_interval(elapsed / fraction - elapsed)} left"
        self.stream.write(f"{text}{'; ' + note if note else ''}\n")
        self.stream.flush()
