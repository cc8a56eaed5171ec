"""The one stage interface: a stage is a function from typed inputs (paths + its config section) to
a typed result, a dataclass derived from `StageResult`.

Every result carries what the report and the gate need without guessing at keys: records in and
out, drops per reason code, the files written and the stage's wall time. A stage writes its result
to `work/<stage>/stats.json` (`write`), and the report reads it back as the same type (`read`).
Stage-specific results add typed fields (the tokenizer used, the packing efficiency, ...).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.rundir import atomic_write_json

R = TypeVar("R", bound="StageResult")


@dataclass
class StageResult:
    """What every stage returns."""

    stage: str = ""
    records_in: int = 0
    records_out: int = 0
    #: reason code -> records this stage dropped or quarantined for it
    dropped: dict[str, int] = field(default_factory=dict)
    #: files the next stage reads (Parquet parts), as strings
    parts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def records_per_s(self) -> float:
        return self.records_in / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "records_per_s": round(self.records_per_s, 1)}

    def write(self, path: Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        """The result from its JSON form; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def read(cls: type[R], path: Path) -> R | None:
        """The result a stage wrote at `path`, or None when it is absent or unreadable."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cls.from_json(data) if isinstance(data, dict) else None


@contextmanager
def timed(result: StageResult) -> Iterator[StageResult]:
    """Fill `result.seconds` with the wall time of the block."""
    t0 = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = round(time.perf_counter() - t0, 3)
