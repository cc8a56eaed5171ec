"""Part files: the folders of parts stages hand to each other (paths, never DataFrames). Parquet, or
Arrow IPC (`.arrow`) for work files written and read whole by the next stages (the encodings)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core.rundir import atomic_write_parquet, remove_outputs

PART_PATTERN = "part-[0-9][0-9][0-9][0-9][0-9].parquet"


def read_part(path: str | Path, columns: list[str] | None = None, offset: int = 0, length: int | None = None
              ) -> pl.DataFrame:
    """One part file, Parquet or Arrow IPC (by its suffix); all columns or `columns`; with `offset`
    / `length`, only those rows (a worker's batch of a part, read without the rest of it)."""
    ipc = Path(path).suffix == ".arrow"
    if not offset and length is None:
        return pl.read_ipc(path, columns=columns) if ipc else pl.read_parquet(path, columns=columns)
    scan = pl.scan_ipc(path) if ipc else pl.scan_parquet(path)
    return (scan if columns is None else scan.select(columns)).slice(offset, length).collect()


def part_rows(path: str | Path) -> int:
    """How many rows a part file holds (from its metadata where the format has it)."""
    scan = pl.scan_ipc(path) if Path(path).suffix == ".arrow" else pl.scan_parquet(path)
    return int(scan.select(pl.len()).collect().item())


def read_parts(in_paths: list[Path]) -> pl.DataFrame:
    """Concatenate canonical parts, in the given order (extra columns such as lang are kept, also
    when every part is empty)."""
    from pipeline.ingest.canonical import empty_canonical

    frames = [read_part(p) for p in in_paths]
    rows = [f for f in frames if f.height]
    if rows:
        return pl.concat(rows, how="diagonal_relaxed")
    frames = [f for f in frames if f.width]
    return pl.concat(frames, how="diagonal_relaxed") if frames else empty_canonical()


def write_parts(df: pl.DataFrame, out_dir: Path, rows_per_part: int) -> list[str]:
    """Write a frame as out_dir/part-00000.parquet, … (replacing earlier parts); returns the paths.
    An empty frame still writes one (empty) part, so the next stage sees its columns."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_outputs(out_dir, PART_PATTERN)
    return [str(atomic_write_parquet(df.slice(s, rows_per_part), out_dir / f"part-{i:05d}.parquet"))
            for i, s in enumerate(range(0, max(df.height, 1), rows_per_part))]
