"""Ingestion: one configured source -> canonical Parquet parts, quarantine and ledger rows.

`ingest_source` streams the source's file(s) record by record (pipeline.ingest.files), turns each
record into a canonical conversation with its format's transform (pipeline.ingest.formats, or the
OASST tree assembly in pipeline.ingest.oasst) and writes

    work/ingest/<source>/part-NNNNN.parquet   kept conversations, `chunk_rows` per part (CANONICAL_SCHEMA)
    quarantine/<source>.parquet              origin, source, tier, reason, errors, raw
    ledger/ingest-<source>.parquet           one row per quarantined or dropped record

A failing record never stops the run; a source that cannot be read at all raises SourceError.

A directory source reads every data file under it, each in its own format (detected from that file's
first records unless the source sets `format`); the files it cannot read are listed in the stats
(`files_not_read`) and warned about, as is a source or file that holds no record at all.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.ledger import LedgerImbalance, ledger_rows, write_ledger_part
from pipeline.core.progress import Progress
from pipeline.core.rundir import atomic_write_json, atomic_write_table, claim_run_dir
from pipeline.ingest.canonical import CANONICAL_SCHEMA
from pipeline.ingest.files import (
    Limits,
    RawItem,
    RecordError,
    SourceError,
    iter_file,
    list_source,
    to_json_text,
)
from pipeline.ingest.formats import TRANSFORMS, detect_format, without_nul
from pipeline.ingest.oasst import assemble
from schemas.config_sources import SourceConfig
from schemas.conversation import conversation_id

__all__ = ["SourceError", "ingest_source", "resolve_format"]

#: CANONICAL_SCHEMA in arrow terms (read back by polars as exactly CANONICAL_SCHEMA).
PART_SCHEMA = pa.schema(
    [(c, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])) if c == "messages" else pa.string())
     for c in CANONICAL_SCHEMA]
)
QUARANTINE_SCHEMA = pa.schema([(c, pa.string()) for c in ("origin", "source", "tier", "reason", "errors", "raw")])
#: How many records are read looking for one that reveals the format.
DETECT_WINDOW = 1000

log = logging.getLogger(__name__)


def _raw_text(raw: Any) -> str:
    """The raw record as text; invalid UTF-8 bytes shown as \\xNN (backslashreplace)."""
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        return raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    if isinstance(raw, str):
        return raw
    return to_json_text(raw)


class _PartWriter:
    """Buffers kept conversations column-wise; writes a canonical part every `chunk_rows` (or `chunk_chars` of text)."""

    def __init__(self, out_dir: Path, source: SourceConfig, chunk_rows: int, chunk_chars: int = 64 << 20):
        self.out_dir, self.source, self.chunk_rows, self.chunk_chars = out_dir, source, chunk_rows, chunk_chars
        self.parts: list[Path] = []
        self.rows_written = 0
        out_dir.mkdir(parents=True, exist_ok=True)
        self._reset()

    def _reset(self) -> None:
        self.cols: dict[str, list] = {k: [] for k in ("conversation_id", "origin", "category", "original_id")}
        # messages are kept flat (offsets + roles + contents): building list<struct> from Python dicts
        # row by row is the slowest step of ingestion otherwise.
        self.offsets, self.roles, self.contents = [0], [], []
        self.chars = 0

    def add(self, origin: str, messages: list[dict], category: str | None, original_id: str | None) -> None:
        c = self.cols
        c["conversation_id"].append(conversation_id(messages))
        c["origin"].append(origin)
        for m in messages:
            self.roles.append(m["role"])
            self.contents.append(m["content"])
            self.chars += len(m["content"])
        self.offsets.append(len(self.roles))
        c["category"].append(without_nul(category) if category else category)
        c["original_id"].append(without_nul(original_id) if original_id else original_id)
        # Also bounded by text size: chunk_rows of very long conversations must not fill memory.
        if len(c["origin"]) >= self.chunk_rows or self.chars >= self.chunk_chars:
            self.flush()

    def flush(self) -> None:
        n = len(self.cols["origin"])
        if not n:
            return
        s = self.source
        const = {"source": s.name, "tier": str(s.tier.value), "license": s.license}
        columns = {
            "messages": pa.ListArray.from_arrays(
                pa.array(self.offsets, pa.int32()),
                pa.StructArray.from_arrays([pa.array(self.roles, pa.string()), pa.array(self.contents, pa.string())],
                                           names=["role", "content"]),
            ),
            **{k: pa.array(v, pa.string()) for k, v in self.cols.items()},
            **{k: pa.array([v] * n, pa.string()) for k, v in const.items()},
        }
        # Written with pyarrow directly: a polars frame in between cost ~20% more memory and time.
        table = pa.table({c: columns[c] for c in CANONICAL_SCHEMA}, schema=PART_SCHEMA)
        self._reset()
        path = atomic_write_table(table, self.out_dir / f"part-{len(self.parts):05d}.parquet")
        self.parts.append(path)
        self.rows_written += table.num_rows


class _Rejects:
    """Quarantined and dropped records: quarantine Parquet streamed in row groups, ledger rows kept small."""

    def __init__(self, path: Path, source: SourceConfig, flush_rows: int = 10_000):
        self.path, self.source, self.flush_rows = path, source, flush_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._writer = pq.ParquetWriter(self._tmp, QUARANTINE_SCHEMA)
        self._q: dict[str, list] = {"origin": [], "reason": [], "errors": [], "raw": []}
        self.ledger: dict[str, list] = {"origin": [], "outcome": [], "reason": [], "detail": []}
        self.reasons: Counter[str] = Counter()
        self.quarantined = self.dropped = 0

    def quarantine(self, origin: str, code: str, errors: str, raw: Any) -> None:
        self.quarantined += 1
        self._note(origin, "quarantined", code, errors)
        for k, v in (("origin", origin), ("reason", code), ("errors", errors), ("raw", _raw_text(raw))):
            self._q[k].append(v)
        if len(self._q["origin"]) >= self.flush_rows:
            self._flush()

    def drop(self, origin: str, code: str, detail: str) -> None:
        self.dropped += 1
        self._note(origin, "dropped", code, detail)

    def _note(self, origin: str, outcome: str, code: str, detail: str) -> None:
        self.reasons[code] += 1
        for k, v in (("origin", origin), ("outcome", outcome), ("reason", code), ("detail", detail)):
            self.ledger[k].append(v)

    def _flush(self) -> None:
        n = len(self._q["origin"])
        cols = {**self._q, "source": [self.source.name] * n, "tier": [str(self.source.tier.value)] * n}
        self._writer.write_table(pa.table({c: cols[c] for c in QUARANTINE_SCHEMA.names}, schema=QUARANTINE_SCHEMA))
        self._q = {k: [] for k in self._q}

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def close(self, run_dir: Path) -> int:
        """Finish the quarantine file, write the ledger part; return how many ledger rows it holds."""
        if self._q["origin"]:
            self._flush()
        self._writer.close()
        self._tmp.replace(self.path)
        s = self.source
        frame = pl.DataFrame(self.ledger, schema={k: pl.String for k in self.ledger}).with_columns(
            source=pl.lit(s.name, dtype=pl.String), tier=pl.lit(str(s.tier.value), dtype=pl.String)
        )
        parts = [
            ledger_rows(frame.filter(pl.col("outcome") == o), stage="ingest", outcome=o,
                        reason=pl.col("reason"), detail=pl.col("detail"))
            for o in ("quarantined", "dropped")
        ]
        rows = pl.concat(parts)
        write_ledger_part(run_dir, f"ingest-{s.name}", rows)
        return rows.height


def _located_items(files: list[Path], root: Path, limits: Limits, notes: list[str],
                   counts: dict[Path, int]) -> Iterator[tuple[str, RawItem]]:
    """(origin prefix, item) for every record of every file; a directory source names the file in origins.

    `counts` gets how many records each file held, once the file is read through."""
    for f in files:
        prefix = "" if f == root else f"{f.relative_to(root).as_posix()}:"
        n = 0
        for item in iter_file(f, limits=limits, notes=notes):
            n += 1
            yield prefix, item
        counts[f] = n


def _detect(path: Path, limits: Limits) -> tuple[str | None, int]:
    """The format the first decodable records of one file reveal (or None), and how many were looked at."""
    items = iter_file(path, limits=limits, notes=[])
    seen = 0
    try:
        for item in itertools.islice(items, DETECT_WINDOW):  # stops at the first record that tells
            seen += 1
            if item.error is None and (fmt := detect_format(item.value)):
                return fmt, seen
    finally:
        items.close()
    return None, seen


def _detect_in(head: list[RawItem]) -> tuple[str | None, int]:
    fmt = next((f for item in head if item.error is None and (f := detect_format(item.value))), None)
    return fmt, len(head)


def _cannot_tell(source: SourceConfig, where: Path) -> SourceError:
    return SourceError(
        f"{where}: cannot tell the format of source {source.name!r} from its first records; "
        "set format = \"alpaca\" | \"dolly\" | \"sharegpt\" | \"openai\" | \"oasst\" | \"prompt_completion\" | \"flan\" "
        "in its [[sources]] entry"
    )


def file_formats(source: SourceConfig, files: list[Path], limits: Limits, warnings: list[str],
                 found: dict[Path, tuple[str | None, int]] | None = None) -> dict[Path, str | None]:
    """Each file's format: the configured one, else detected per file (None: the file holds no record).

    A file of a directory whose records reveal none is read in the format of the directory's first
    file that does, with a warning; a source where no file reveals one is a SourceError. `found`:
    detections already made ({file: (format, records looked at)})."""
    if source.format:
        return dict.fromkeys(files, source.format)
    found = found or {f: _detect(f, limits) for f in files}
    known = next(((f, fmt) for f, (fmt, _) in found.items() if fmt), None)
    out: dict[Path, str | None] = {}
    for f, (fmt, seen) in found.items():
        if fmt is None and seen:
            if known is None:
                raise _cannot_tell(source, source.path if len(files) == 1 else f)
            fmt = known[1]
            warnings.append(f"source {source.name}: cannot tell the format of {f} from its first records; read as "
                            f"{fmt}, like {known[0].name} (set format in its [[sources]] entry to choose)")
        out[f] = fmt
    return out


def resolve_format(source: SourceConfig, peek: list[RawItem] | None = None) -> str:
    """The configured format, else the one the first decodable record reveals; SourceError when none does."""
    if source.format:
        return source.format
    if peek is None:
        limits = Limits(max_record_bytes=source.max_record_bytes)
        formats = file_formats(source, list_source(Path(source.path))[0], limits, [])
        fmt = next((f for f in formats.values() if f), None)
        if fmt:
            return fmt
        raise _cannot_tell(source, Path(source.path))
    for item in peek:
        if item.error is None and (fmt := detect_format(item.value)):
            return fmt
    raise _cannot_tell(source, Path(source.path))


def _convert(items: Iterator[tuple[str, RawItem]], fmt: str, source: SourceConfig, parts: _PartWriter,
             rejects: _Rejects) -> int:
    """Send every record to the kept parts or to the rejects; return how many records were read."""
    with Progress(f"ingest {source.name}", unit="records read") as progress:
        read = _convert_all(items, fmt, source, parts, rejects, progress)
    return read


def _convert_all(items: Iterator[tuple[str, RawItem]], fmt: str, source: SourceConfig, parts: _PartWriter,
                 rejects: _Rejects, progress: Progress) -> int:
    name, read = source.name, 0
    if fmt == "oasst":
        located = (RawItem(prefix + item.locator, item.value, item.raw, item.error) for prefix, item in items)
        for o in assemble(located, source.oasst_paths):
            read += 1
            progress.update()
            origin = f"{name}:{o.locator}"
            if o.outcome == "kept":
                parts.add(origin, o.messages, None, o.original_id)
            elif o.outcome == "quarantined":
                rejects.quarantine(origin, o.code, o.detail, o.raw)
            else:
                rejects.drop(origin, o.code, o.detail)
        return read
    transform = TRANSFORMS[fmt]
    for prefix, item in items:
        read += 1
        progress.update()
        origin = f"{name}:{prefix}{item.locator}"
        if item.error is not None:
            rejects.quarantine(origin, item.error.code, item.error.message, item.raw)
            continue
        try:
            messages, category, original_id = transform(item.value, source)
        except RecordError as e:
            rejects.quarantine(origin, e.code, e.message, item.raw if item.raw is not None else item.value)
            continue
        parts.add(origin, messages, category, original_id)
    return read


def _not_read_warning(source: SourceConfig, not_read: list[dict[str, str]]) -> str:
    root = Path(source.path)
    names = [Path(f["path"]).relative_to(root).as_posix() for f in not_read]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return (f"source {source.name}: {len(names)} file(s) under {root} not read (files_not_read says why): "
            f"{shown}")


def ingest_source(source: SourceConfig, run_dir: Path, chunk_rows: int = 50_000) -> dict:
    """Read one source into the run directory; return its stats (see module docstring for outputs).

    Stats: source, tier, format ("mixed" when a directory's files differ), file_formats {file: format},
    files, files_not_read [{path, reason}], warnings [sentences, also logged], read, kept, quarantined,
    dropped, reasons {code: n}, parts [paths], seconds. read == kept + quarantined + dropped is checked
    here (LedgerImbalance otherwise).
    """
    t0 = time.perf_counter()
    rd = claim_run_dir(run_dir)
    root = Path(source.path)
    files, not_read = list_source(root)
    limits = Limits(max_record_bytes=source.max_record_bytes)
    warnings: list[str] = [_not_read_warning(source, not_read)] if not_read else []
    notes: list[str] = []
    counts: dict[Path, int] = dict.fromkeys(files, 0)
    # One file: its first records tell the format and are read once (the stream goes on after them).
    single = _located_items(files, root, limits, notes, counts) if len(files) == 1 and not source.format else None
    try:
        head = list(itertools.islice(single, DETECT_WINDOW)) if single else []
        found = {files[0]: _detect_in([item for _, item in head])} if single else None
        formats = file_formats(source, files, limits, warnings, found)
    except BaseException:
        if single:
            single.close()
        raise

    out_dir = rd.stage_dir("ingest") / source.name
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("part-*.parquet"):
        stale.unlink()
    parts = _PartWriter(out_dir, source, chunk_rows)
    rejects = _Rejects(rd.quarantine / f"{source.name}.parquet", source)
    read = 0
    try:
        if single:
            if formats[files[0]]:
                read += _convert(itertools.chain(head, single), formats[files[0]], source, parts, rejects)
        else:
            # OASST trees may span files, so all OASST files are assembled together, after the others.
            for f in files:
                if formats[f] is not None and formats[f] != "oasst":
                    read += _convert(_located_items([f], root, limits, notes, counts), formats[f], source, parts,
                                     rejects)
            oasst = [f for f in files if formats[f] == "oasst"]
            if oasst:
                read += _convert(_located_items(oasst, root, limits, notes, counts), "oasst", source, parts, rejects)
    except BaseException:
        rejects.abort()  # e.g. a later file of a directory is unreadable: leave no half-written quarantine
        raise
    parts.flush()
    ledger_written = rejects.close(rd.root)
    # Counted from what was written, not from the loop: a lost record shows up here.
    if read != parts.rows_written + ledger_written:
        raise LedgerImbalance(f"ingest {source.name}: read {read} records but wrote {parts.rows_written} kept + "
                              f"{ledger_written} ledger rows")
    warnings += [f"source {source.name}: {n}" for n in notes]
    if not sum(counts.values()):
        warnings.append(f"source {source.name}: no records read from {root}")
    if len(files) > 1:
        warnings += [f"source {source.name}: no records read from {f}" for f in files if not counts[f]]
    for w in warnings:
        log.warning(w)
    used = {fmt for fmt in formats.values() if fmt}
    name, kept = source.name, parts.rows_written
    stats = {
        "stage": "ingest",
        "source": name,
        "tier": str(source.tier.value),
        "format": used.pop() if len(used) == 1 else "mixed" if used else source.format,
        "file_formats": {(f.relative_to(root).as_posix() if f != root else f.name): fmt for f, fmt in formats.items()},
        "files": [str(f) for f in files],
        "files_not_read": not_read,
        "warnings": warnings,
        "read": read,
        "kept": kept,
        "quarantined": rejects.quarantined,
        "dropped": rejects.dropped,
        "reasons": dict(sorted(rejects.reasons.items())),
        "parts": [str(p) for p in parts.parts],
        "seconds": round(time.perf_counter() - t0, 3),
        # the common fields of a stage result (pipeline.core.stage), for the report and the flow log
        "records_in": read,
        "records_out": kept,
    }
    atomic_write_json(out_dir / "stats.json", stats)
    return stats
