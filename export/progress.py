"""A one-line progress counter on stderr for long reads: rows, rows/s and the ETA.

    progress = Progress("score", total=1_000_000)   # total None: no percentage or ETA
    progress.add(4096)
    progress.message("skipped: big.npy[17]: ...")   # a line above the counter
    progress.close()

It draws only when stderr is a terminal (logs and CI stay clean), at most ten times a second.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts rows and redraws ``label: count/total rows (pct)  rate rows/s  ETA`` on stderr."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label, self.total, self.count = label, total, 0
        self.live = sys.stderr.isatty()
        self.started = self._drawn = time.perf_counter()

    def add(self, n: int) -> None:
        self.count += n
        now = time.perf_counter()
        if self.live and (now - self._drawn >= 0.1 or self.count == self.total):
            self._drawn = now
            self.draw(now)

    def draw(self, now: float) -> None:
        rate = self.count / max(now - self.started, 1e-9)
        line = f"{self.label}: {self.count:,}"
        if self.total:
            left = max(self.total - self.count, 0) / rate if rate > 0 else 0.0
            eta = time.strftime("%H:%M:%S", time.gmtime(left))
            line += f"/{self.total:,} rows ({100 * self.count / self.total:.0f}%)"
            line += f"  {rate:,.0f} rows/s  ETA {eta}"
        else:
            line += f" rows  {rate:,.0f} rows/s"
        print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """Print a line on stderr without breaking the counter."""
        if self.live:
            print("\r\x1b[K", end="", file=sys.stderr)
        print(text, file=sys.stderr, flush=True)
        if self.live:
            self.draw(time.perf_counter())

    def close(self) -> None:
        if self.live:
            self.draw(time.perf_counter())
            print(file=sys.stderr)
