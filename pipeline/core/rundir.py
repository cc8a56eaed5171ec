"""Paths of the run directory (CONTRACTS.md) in one place, and atomic writes into it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of(cls, root: str | Path) -> RunDir:
        return cls(Path(root))

    ledger = property(lambda self: self.root / "ledger")
    quarantine = property(lambda self: self.root / "quarantine")
    curated = property(lambda self: self.root / "curated")
    tokenizer = property(lambda self: self.root / "tokenizer")
    shards = property(lambda self: self.root / "shards")
    report = property(lambda self: self.root / "report")
    model = property(lambda self: self.root / "model")
    manifest = property(lambda self: self.root / "manifest.json")
    #: intermediate outputs of stages (not part of the contract): work/<stage>/...
    work = property(lambda self: self.root / "work")

    def stage_dir(self, stage: str) -> Path:
        return self.work / stage


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _tmp_then_rename(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary name in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    tmp.replace(path)
    return path


def atomic_write_parquet(df: pl.DataFrame, path: str | Path) -> Path:
    return _tmp_then_rename(path, lambda tmp: df.write_parquet(tmp, statistics=False))


def atomic_write_table(table: pa.Table, path: str | Path, **write_options: Any) -> Path:
    """A pyarrow table to Parquet atomically; `write_options` go to `pyarrow.parquet.write_table`."""
    return _tmp_then_rename(path, lambda tmp: pq.write_table(table, tmp, **write_options))
