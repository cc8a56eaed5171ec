"""Progress of a long stage as log lines: done/total, records per second, ETA.

Stages log through the standard `logging` module under the "pipeline" logger; the CLI asks Prefect
to forward it (PREFECT_LOGGING_EXTRA_LOGGERS), so the lines reach the terminal, the run's log in the
Prefect UI and a worker's output alike. A line comes at most every `every_s` seconds (5 s on a
terminal, 30 s otherwise), so a quick stage prints only its last line.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("pipeline.progress")


def _interval() -> float:
    return 5.0 if sys.stderr.isatty() else 30.0


class Progress:
    """`with Progress("dedup", total=n, unit="conversations") as p: ... p.update(k)`."""

    def __init__(self, what: str, total: int | None = None, unit: str = "records", every_s: float | None = None):
        self.what, self.total, self.unit = what, total, unit
        self.every_s = _interval() if every_s is None else every_s
        self.done = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.t0, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({self.done / self.total:.0%})"
            if 0 < self.done < self.total and rate > 0:
                text += f", ETA {(self.total - self.done) / rate:,.0f} s"
        else:
            text += f" {self.unit}"
        return text + f", {rate:,.0f}/s"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None and time.perf_counter() - self.t0 >= 1.0:
            log.info(self.line() + f", done in {time.perf_counter() - self.t0:,.1f} s")
