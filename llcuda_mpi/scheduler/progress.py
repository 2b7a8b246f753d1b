"""A small progress bar for rank 0, on stderr.

Hand-written (30 lines) rather than a dependency: on a terminal it redraws one
line at most 10 times a second; in a log file (not a TTY) it writes a line
every 10 % so that batch logs stay short.
"""

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "requests", stream=None, enabled: bool = True):
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = self.n_failed = 0
        self.t0 = time.time()
        self._last_draw = 0.0
        self._last_decile = 0

    def update(self, ok: bool = True) -> None:
        self.n += 1
        self.n_failed += not ok
        self.tick()

    def tick(self) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self.tty:
            if now - self._last_draw >= 0.1 or self.n == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now, width=30))
                self.stream.flush()
        elif self.n * 10 // self.total > self._last_decile:
            self._last_decile = self.n * 10 // self.total
            self.stream.write(self._line(now, width=0) + "\n")
            self.stream.flush()

    def _line(self, now: float, width: int) -> str:
        frac = self.n / self.total
        bar = f"[{'#' * int(frac * width):<{width}}] " if width else ""
        rate = self.n / max(now - self.t0, 1e-9)
        failed = f", {self.n_failed} failed" if self.n_failed else ""
        return f"{bar}{self.n}/{self.total} {self.label} ({frac:4.0%}, {rate:.1f}/s{failed})"

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
