"""Stream raw records out of .jsonl, .json and .parquet files, in bounded memory, whatever the bytes hold.

Each reader yields `RawItem`s: the record's locator inside its file (1-based line for .jsonl, 0-based
index for a JSON array or a parquet row), the decoded value, and, when the record could not be
decoded, a `RecordError`. Nothing here knows about source formats.

Files: `.jsonl`, `.json`, `.parquet`; the JSON ones may be compressed (`.gz`, `.bz2`, `.xz`, `.zst`:
`x.jsonl.gz`, `x.json.zst`). Parquet compresses inside the file, so `x.parquet.gz` is not read. A
compressed stream that breaks part-way ends the file there (a note says so): what came before is read.

Limits, the same on every reader (`Limits`): a record nests at most `MAX_DEPTH` levels (an object or
array is one level; a parquet row counts like its JSON form) and takes at most `max_record_bytes`
bytes (default `MAX_RECORD_BYTES`; a .jsonl line is one record, so this is also the line length). A
record over a limit is quarantined alone as `schema.too_deep` or `schema.too_large`, keeping its first
`RAW_KEEP_BYTES` bytes as raw; memory stays bounded by the record limit plus a read chunk.

The readers, one module each:
- pipeline.ingest.jsonl: `\\n`, `\\r\\n` and a lone `\\r` each end a line; a line is one record;
- pipeline.ingest.jsonarray: a JSON array split into elements by a byte-level scan
  (pipeline.ingest.jsonscan, which states the rules), each element parsed on its own with orjson,
  so one bad element costs only itself; garbage resynchronises at the next element; a truncated
  array keeps every complete element;
- pipeline.ingest.parquet: rows, one record batch at a time;
and pipeline.ingest.raw holds what they share (RawItem, the errors, Limits, ByteSource).

NUL characters: a raw NUL byte (like any raw control character) inside a JSON string makes its record
invalid JSON. An escaped `\\u0000` is valid JSON and decodes to U+0000; that character is removed
from every text that reaches the canonical conversation (pipeline.ingest.formats.finish), as is a NUL
inside a parquet string, so a conversation never carries one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.ingest.jsonarray import iter_json
from pipeline.ingest.jsonl import iter_jsonl
from pipeline.ingest.parquet import iter_parquet
from pipeline.ingest.raw import (
    COMPRESSIONS,
    LIMITS,
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    RAW_KEEP_BYTES,
    Limits,
    RawItem,
    RecordError,
    SourceError,
    decode_error,
    parse_record,
    to_json_text,
)

__all__ = [
    "MAX_DEPTH", "MAX_RECORD_BYTES", "RAW_KEEP_BYTES", "Limits", "RawItem", "RecordError", "SourceError",
    "data_files", "decode_error", "file_kind", "iter_file", "iter_json", "iter_jsonl", "iter_parquet",
    "list_source", "parse_record", "to_json_text",
]

DATA_TYPES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
DATA_SUFFIXES = tuple(DATA_TYPES)
_EXPECTED = ".jsonl, .json or .parquet (JSON ones optionally .gz, .bz2, .xz or .zst compressed)"


def file_kind(path: Path) -> tuple[str | None, str | None, str | None]:
    """(data type, compression, why not read) from the file name: ("jsonl", "gzip", None) for x.jsonl.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if comp:
        suffixes = suffixes[:-1]
    kind = DATA_TYPES.get(suffixes[-1]) if suffixes else None
    if kind is None:
        shown = "".join(path.suffixes[-2:]) if comp else path.suffix
        return None, comp, f"unsupported file type {shown or '(no suffix)'!r}; expected {_EXPECTED}"
    if kind == "parquet" and comp:
        return None, comp, "a compressed .parquet file is not read: parquet compresses inside the file"
    return kind, comp, None


def list_source(path: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The data files of a source, and every other file under a directory with why it is not read."""
    if not path.exists():
        raise SourceError(f"{path}: source path does not exist (check [[sources]] path in the config)")
    if path.is_file():
        kind, _, why = file_kind(path)
        if kind is None:
            raise SourceError(f"{path}: {why}")
        return [path], []
    files, not_read = [], []
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        kind, _, why = file_kind(p)
        if kind is None:
            not_read.append({"path": str(p), "reason": why})
        else:
            files.append(p)
    if not files:
        raise SourceError(f"{path}: directory holds no {_EXPECTED} files")
    return files, not_read


def data_files(path: Path) -> list[Path]:
    """The data files of a source: the file itself, or the readable files under a directory."""
    return list_source(path)[0]


def iter_file(path: Path, *, batch_rows: int = 8192, limits: Limits = LIMITS,
              notes: list[str] | None = None) -> Iterator[RawItem]:
    """Every record of one file, streamed; file-level problems (a truncated stream, …) go to `notes`."""
    kind, comp, why = file_kind(path)
    if kind is None:
        raise SourceError(f"{path}: {why}")
    notes = [] if notes is None else notes
    if kind == "parquet":
        return iter_parquet(path, batch_rows=batch_rows, limits=limits)
    if kind == "jsonl":
        return iter_jsonl(path, limits=limits, notes=notes)
    return iter_json(path, limits=limits, notes=notes)
