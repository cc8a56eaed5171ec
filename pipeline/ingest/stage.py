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
(`files_not_read`) and warned about, as is a source or file that holds no record at all. A
LLaMA-Factory dataset_info.json source reads each dataset it lists (pipeline.ingest.dataset_info).

Nothing that carries text is dropped silently: a field a reader does not read is counted per source
(`fields_not_read`, also a warning the report shows), or with `strict_fields` the record is
quarantined (`schema.unread_field`). A source's column mapping (`columns`) renames keys before the
format is detected and the record read.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.ledger import LedgerImbalance, ledger_rows, write_ledger_part
from pipeline.core.progress import Progress
from pipeline.core.rundir import atomic_write_table, claim_run_dir
from pipeline.core.stage import StageResult
from pipeline.ingest.canonical import CANONICAL_SCHEMA
from pipeline.ingest.dataset_info import Dataset, dataset_info_path, read_dataset_info
from pipeline.ingest.files import (
    Limits,
    RawItem,
    RecordError,
    SourceError,
    iter_file,
    list_source,
    to_json_text,
)
from pipeline.ingest.formats import (
    EXPANDERS,
    RECORD_MODELS,
    TRANSFORMS,
    detect_format,
    fields_read,
    remap,
    unread_keys,
    without_nul,
)
from pipeline.ingest.oasst import assemble
from schemas.config_sources import SourceConfig
from schemas.conversation import conversation_id

__all__ = ["SourceError", "ingest_source", "resolve_format"]

#: CANONICAL_SCHEMA in arrow terms (read back by polars as exactly CANONICAL_SCHEMA).
TOOL_CALL_TYPE = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning", pa.string()),
                          ("tool_calls", pa.list_(TOOL_CALL_TYPE)), ("tool_call_id", pa.string()),
                          ("name", pa.string())])
PART_SCHEMA = pa.schema([(c, pa.list_(MESSAGE_TYPE) if c == "messages" else pa.string()) for c in CANONICAL_SCHEMA])
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
        self.cols: dict[str, list] = {k: [] for k in ("conversation_id", "origin", "tools", "category", "original_id")}
        # messages are kept flat (offsets + one list per field): building list<struct> from Python dicts
        # row by row is the slowest step of ingestion otherwise.
        self.offsets, self.roles, self.contents = [0], [], []
        # the messages with more than role and content, by index: most sources have none
        self.extra: dict[int, dict] = {}
        self.chars = 0

    def add(self, origin: str, messages: list[dict], category: str | None, original_id: str | None,
            tools: str | None = None) -> None:
        c = self.cols
        c["conversation_id"].append(conversation_id(messages, tools, canonical=True))
        c["origin"].append(origin)
        c["tools"].append(tools)
        roles, contents = self.roles, self.contents
        for m in messages:
            if len(m) > 2:  # readers build a plain message with role and content only
                self.extra[len(roles)] = m
            roles.append(m["role"])
            contents.append(m["content"])
            self.chars += len(m["content"])
        self.offsets.append(len(roles))
        c["category"].append(without_nul(category) if category else category)
        c["original_id"].append(without_nul(original_id) if original_id else original_id)
        # Also bounded by text size: chunk_rows of very long conversations must not fill memory.
        if len(c["origin"]) >= self.chunk_rows or self.chars >= self.chunk_chars:
            self.flush()

    def _extra_arrays(self) -> list[pa.Array]:
        """reasoning, tool_calls, tool_call_id, name for every message (all null where none has them)."""
        n = len(self.roles)
        out = []
        for f in list(MESSAGE_TYPE)[2:]:
            if not self.extra:
                out.append(pa.nulls(n, f.type))
                continue
            values: list = [None] * n
            for i, m in self.extra.items():
                values[i] = m.get(f.name)
            out.append(pa.array(values, f.type))
        return out

    def flush(self) -> None:
        n = len(self.cols["origin"])
        if not n:
            return
        s = self.source
        const = {"source": s.name, "tier": str(s.tier.value), "license": s.license}
        columns = {
            "messages": pa.ListArray.from_arrays(
                pa.array(self.offsets, pa.int32()),
                pa.StructArray.from_arrays(
                    [pa.array(self.roles, pa.string()), pa.array(self.contents, pa.string()), *self._extra_arrays()],
                    fields=list(MESSAGE_TYPE)),
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


def _detect_value(value: Any, source: SourceConfig | None) -> str | None:
    """The format of one decoded record, read through the source's column mapping."""
    if source is not None and source.columns is not None:
        value = remap(value, source.columns.renames())[0]
    return detect_format(value)


def _detect(path: Path, limits: Limits, source: SourceConfig | None = None) -> tuple[str | None, int]:
    """The format the first decodable records of one file reveal (or None), and how many were looked at."""
    items = iter_file(path, limits=limits, notes=[])
    seen = 0
    try:
        for item in itertools.islice(items, DETECT_WINDOW):  # stops at the first record that tells
            seen += 1
            if item.error is None and (fmt := _detect_value(item.value, source)):
                return fmt, seen
    finally:
        items.close()
    return None, seen


def _detect_in(head: list[RawItem], source: SourceConfig | None = None) -> tuple[str | None, int]:
    fmt = next((f for item in head if item.error is None and (f := _detect_value(item.value, source))), None)
    return fmt, len(head)


def _cannot_tell(source: SourceConfig, where: Path) -> SourceError:
    return SourceError(
        f"{where}: cannot tell the format of source {source.name!r} from its first records; "
        "set format = \"alpaca\" | \"dolly\" | \"sharegpt\" | \"openai\" | \"oasst\" | \"prompt_completion\" | \"flan\" "
        "| \"self_instruct\" "
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
    found = found or {f: _detect(f, limits, source) for f in files}
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
        if item.error is None and (fmt := _detect_value(item.value, source)):
            return fmt
    raise _cannot_tell(source, Path(source.path))


_NONE: list[str] = []  # never appended to: the fields not read of a record that has none


class _Tally:
    """Per source: records holding text in fields the reader does not read ({field: records}), and the
    adjustments readers made ({note: records}, e.g. trimmed_trailing_turns)."""

    def __init__(self) -> None:
        self.unread: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()


def _convert(items: Iterator[tuple[str, RawItem]], fmt: str, source: SourceConfig, parts: _PartWriter,
             rejects: _Rejects, tally: _Tally) -> int:
    """Send every record to the kept parts or to the rejects; return how many records were read."""
    with Progress(f"ingest {source.name}", unit="records read") as progress:
        read = _convert_all(items, fmt, source, parts, rejects, progress, tally)
    return read


def _unread_error(fields: list[str]) -> RecordError:
    shown = ", ".join(f"'{f}'" for f in fields)
    return RecordError("schema.unread_field", f"field(s) {shown} carry text the reader does not read "
                                              "(strict_fields = true; map them with `columns`, or drop strict_fields "
                                              "to count them instead)")


def _convert_all(items: Iterator[tuple[str, RawItem]], fmt: str, source: SourceConfig, parts: _PartWriter,
                 rejects: _Rejects, progress: Progress, tally: _Tally) -> int:
    name, read = source.name, 0
    known = fields_read(fmt, RECORD_MODELS.get(fmt)) | {source.prompt_field, source.completion_field} - {None}
    renames = source.columns.renames() if source.columns else {}
    strict, unread = source.strict_fields, tally.unread
    if fmt == "oasst":
        def rows() -> Iterator[RawItem]:
            for prefix, item in items:
                if item.error is None and (lost := unread_keys(item.value, known)):
                    unread.update(lost)
                yield RawItem(prefix + item.locator, item.value, item.raw, item.error)

        for o in assemble(rows(), source.oasst_paths):
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
    transform, expand = TRANSFORMS[fmt], EXPANDERS.get(fmt)
    quarantine, add, update = rejects.quarantine, parts.add, progress.update
    for prefix, item in items:
        read += 1
        update()
        origin = f"{name}:{prefix}{item.locator}"
        if item.error is not None:
            quarantine(origin, item.error.code, item.error.message, item.raw)
            continue
        if renames:
            value, lost = remap(item.value, renames)
        else:
            value, lost = item.value, _NONE
        if type(value) is dict and not value.keys() <= known:
            lost = [*lost, *unread_keys(value, known)]
        if expand is None:  # one record, one conversation (every format but self_instruct)
            units: list[tuple[str, Any]] | None = None
        else:
            try:
                units = expand(value)
            except RecordError as e:
                quarantine(origin, e.code, e.message, item.raw if item.raw is not None else item.value)
                continue
            read += len(units) - 1
        for suffix, unit in units or ((None, value),):
            where = origin if suffix is None else origin + suffix
            try:
                conv = transform(unit, source)
                fields = [*lost, *conv.unread] if conv.unread else lost
                if fields and strict:
                    raise _unread_error(fields)
            except RecordError as e:
                quarantine(where, e.code, e.message, item.raw if item.raw is not None else item.value)
                continue
            if fields:
                unread.update(set(fields))
            if conv.notes:
                tally.notes.update(set(conv.notes))
            add(where, conv.messages, conv.category, conv.original_id, conv.tools)
    return read


def _file_key(f: Path, root: Path, datasets: list[Dataset]) -> str:
    """How the stats name a file: relative to the source's directory, or `<dataset>:<file>` for a
    dataset_info.json source."""
    for d in datasets:
        if f in d.files:
            return f"{d.name}:{f.relative_to(d.root).as_posix() if f != d.root else f.name}"
    return f.relative_to(root).as_posix() if f != root else f.name


def _not_read_warning(source: SourceConfig, not_read: list[dict[str, str]]) -> str:
    root = Path(source.path)
    names = [Path(f["path"]).relative_to(root).as_posix() if Path(f["path"]).is_relative_to(root) else f["path"]
             for f in not_read]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return (f"source {source.name}: {len(names)} file(s) under {root} not read (files_not_read says why): "
            f"{shown}")


@dataclass
class IngestResult(StageResult):
    """What ingesting one source did: records_in (read) == records_out (kept) + quarantined +
    dropped_records is checked before it is returned (LedgerImbalance otherwise); a Self-Instruct
    task counts as its instances. `dropped` (as in every stage result): reason code -> records
    quarantined or dropped for it. Its JSON also says `read` and `kept` (the ledger's words)."""

    source: str = ""
    tier: str = ""
    #: the format read ("mixed" when a directory's files differ)
    format: str | None = None
    #: file (relative to the source, or dataset:file for a dataset_info.json) -> its format
    file_formats: dict[str, str | None] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    #: files under the source that were not read: {path, reason}
    files_not_read: list[dict[str, str]] = field(default_factory=list)
    #: sentences, also logged (and shown in the report)
    warnings: list[str] = field(default_factory=list)
    quarantined: int = 0
    dropped_records: int = 0
    #: kept records holding text in fields the reader does not read: {field: records}
    fields_not_read: dict[str, int] = field(default_factory=dict)
    #: adjustments made to kept records: {note: records} (trimmed_trailing_turns, think_block)
    adjusted: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "read": self.records_in, "kept": self.records_out}


def ingest_source(source: SourceConfig, run_dir: Path, chunk_rows: int = 50_000) -> IngestResult:
    """Read one source into the run directory (see the module docstring for the outputs); its result
    is also written to work/ingest/<source>/stats.json."""
    t0 = time.perf_counter()
    rd = claim_run_dir(run_dir)
    root = Path(source.path)
    info = dataset_info_path(root)
    datasets: list[Dataset] = []
    if info is not None:
        datasets, not_read = read_dataset_info(info, source)
        files = [f for d in datasets for f in d.files]
    else:
        files, not_read = list_source(root)
    limits = Limits(max_record_bytes=source.max_record_bytes)
    warnings: list[str] = [_not_read_warning(source, not_read)] if not_read else []
    notes: list[str] = []
    counts: dict[Path, int] = dict.fromkeys(files, 0)
    # One file: its first records tell the format and are read once (the stream goes on after them).
    single = (_located_items(files, root, limits, notes, counts)
              if len(files) == 1 and not source.format and info is None else None)
    try:
        head = list(itertools.islice(single, DETECT_WINDOW)) if single else []
        found = {files[0]: _detect_in([item for _, item in head], source)} if single else None
        formats = ({f: d.source.format for d in datasets for f in d.files} if info is not None
                   else file_formats(source, files, limits, warnings, found))
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
    tally = _Tally()
    read = 0
    try:
        if single:
            if formats[files[0]]:
                read += _convert(itertools.chain(head, single), formats[files[0]], source, parts, rejects, tally)
        elif info is not None:
            for d in datasets:
                for f in d.files:
                    items = ((f"{d.name}:{p}", it) for p, it in _located_items([f], d.root, limits, notes, counts))
                    read += _convert(items, d.source.format, d.source, parts, rejects, tally)
        else:
            # OASST trees may span files, so all OASST files are assembled together, after the others.
            for f in files:
                if formats[f] is not None and formats[f] != "oasst":
                    read += _convert(_located_items([f], root, limits, notes, counts), formats[f], source, parts,
                                     rejects, tally)
            oasst = [f for f in files if formats[f] == "oasst"]
            if oasst:
                read += _convert(_located_items(oasst, root, limits, notes, counts), "oasst", source, parts, rejects,
                                 tally)
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
    # Text the reader did not use is never dropped silently: counted here, shown in the report.
    warnings += [f"source {source.name}: fields not read: `{f}` in {n:,} records (map it with `columns`, or set "
                 "strict_fields = true to quarantine such records)" for f, n in sorted(tally.unread.items())]
    if n := tally.notes.get("trimmed_trailing_turns"):
        warnings.append(f"source {source.name}: user/tool turns after the last assistant turn cut in {n:,} records "
                        "(adjusted.trimmed_trailing_turns)")
    if not sum(counts.values()):
        warnings.append(f"source {source.name}: no records read from {root}")
    if len(files) > 1:
        warnings += [f"source {source.name}: no records read from {f}" for f in files if not counts[f]]
    for w in warnings:
        log.warning(w)
    used = {fmt for fmt in formats.values() if fmt}
    name, kept = source.name, parts.rows_written
    stats = IngestResult(
        stage="ingest", source=name, tier=str(source.tier.value),
        format=used.pop() if len(used) == 1 else "mixed" if used else source.format,
        file_formats={_file_key(f, root, datasets): fmt for f, fmt in formats.items()},
        files=[str(f) for f in files], files_not_read=not_read, warnings=warnings,
        quarantined=rejects.quarantined, dropped_records=rejects.dropped,
        dropped=dict(sorted(rejects.reasons.items())), fields_not_read=dict(sorted(tally.unread.items())),
        adjusted=dict(sorted(tally.notes.items())), parts=[str(p) for p in parts.parts],
        seconds=round(time.perf_counter() - t0, 3), records_in=read, records_out=kept,
    )
    stats.write(out_dir / "stats.json")
    return stats
