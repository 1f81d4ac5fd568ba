"""A small progress line for long loops (no dependency): redrawn in place on a terminal,
printed every `every` seconds otherwise (logs, notebooks). It shows the rate in units per second,
the time left (ETA) while running and the time taken at the end."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", stream=None, every: float = 10.0, unit: str = "it"):
        self.total, self.label, self.stream, self.unit = total, label, stream or sys.stderr, unit
        self.every = 0.1 if getattr(self.stream, "isatty", lambda: False)() else every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int = 1, **fields) -> None:
        """Counts n more items; `fields` (e.g. loss=0.31) are shown after the counter."""
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self._draw(now, fields)

    def _draw(self, now: float, fields: dict) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        timing = f"{rate:.2f} {self.unit}/s, " + (f"ETA {clock(left)}" if self.done < self.total else clock(elapsed))
        line = f"{self.label} {self.done}/{self.total} [{timing}] {text}".rstrip()
        end = "\n" if self.done >= self.total or self.every >= 1 else ""
        prefix = "\r" if self.every < 1 else ""
        self.stream.write(f"{prefix}{line}{end}")
        self.stream.flush()


def clock(seconds: float) -> str:
    """A duration as h:mm:ss (as tqdm shows times)."""
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"
