"""A small progress bar on stderr that appears only once work has run for a
few seconds, so quick runs stay silent."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", enabled: bool = True, delay: float = 2.0, stream=None):
        self.total = max(int(total), 1)
        self.desc = desc
        self.enabled = enabled
        self.delay = delay
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self.shown = False

    def update(self, count: float) -> None:
        self.set(self.done + count)

    def set(self, done: float) -> None:
        self.done = min(float(self.total), max(self.done, done))
        elapsed = time.perf_counter() - self.start
        if not self.enabled or elapsed < self.delay:
            return
        self.shown = True
        fraction = self.done / self.total
        width = 30
        bar = "#" * int(fraction * width)
        remaining = elapsed / fraction - elapsed if fraction > 0 else 0.0
        self.stream.write(
            f"\r{self.desc} [{bar:<{width}}] {fraction:4.0%} "
            f"{elapsed:5.1f}s elapsed, ~{remaining:5.1f}s left"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
