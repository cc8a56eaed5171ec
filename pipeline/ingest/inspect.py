"""What ingest will make of a source, without running it: the preflight check of every source
(before any server starts) and `sftforge inspect` (the first records as canonical conversations,
the fields the reader does not read, the errors records would be quarantined with)."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.ingest.dataset_info import dataset_info_path, read_dataset_info
from pipeline.ingest.files import Limits, RawItem, RecordError, SourceError, iter_file, list_source
from pipeline.ingest.formats import EXPANDERS, RECORD_MODELS, TRANSFORMS, remap, unread_keys
from pipeline.ingest.formats import fields_read as _fields_read
from pipeline.ingest.stage import file_formats
from schemas.config_sources import SourceConfig


def fields_read(fmt: str) -> set[str]:
    """The top-level keys the reader of `fmt` reads (its record model's fields and aliases), with the
    bookkeeping keys never counted as not read."""
    return set(_fields_read(fmt, RECORD_MODELS[fmt]))


def fields_not_read(value: Any, fmt: str, source: SourceConfig) -> list[str]:
    """Top-level keys of a record that carry text (a string, or a list/dict holding one) and that
    the reader of `fmt` ignores (after the source's column mapping)."""
    lost: list[str] = []
    if source.columns is not None:
        value, lost = remap(value, source.columns.renames())
    known = _fields_read(fmt, RECORD_MODELS[fmt]) | {source.prompt_field, source.completion_field} - {None}
    return sorted(set(lost + unread_keys(value, known)))


def preflight_source(source: SourceConfig) -> list[str]:
    """Problems that stop ingest of this source, found by reading only the first records of each
    file: a missing path, an unsupported file type, a directory with no data file, a format that
    cannot be told. Empty when the source can be read."""
    try:
        if (info := dataset_info_path(Path(source.path))) is not None:
            read_dataset_info(info, source)
            return []
        files, _ = list_source(Path(source.path))
        file_formats(source, files, Limits(max_record_bytes=source.max_record_bytes), [])
    except SourceError as e:
        return [f"source {source.name!r}: {e}"]
    return []


@dataclass
class InspectedRecord:
    """One record as ingest will take it."""

    origin: str
    outcome: str  # kept | quarantined
    messages: list[dict[str, str]] | None = None
    reason: str | None = None
    detail: str | None = None
    not_read: list[str] = field(default_factory=list)
    tools: str | None = None  # the offered tools (JSON text), as the curated `tools` column holds them


@dataclass
class InspectedSource:
    """A source's files (with the format of each), the first records and the fields not read."""

    name: str
    files: dict[str, str | None]
    files_not_read: list[dict[str, str]]
    records: list[InspectedRecord]
    not_read_counts: dict[str, int]
    warnings: list[str]


def inspect_source(source: SourceConfig, n: int = 3) -> InspectedSource:
    """The first `n` records of each file of `source`, read exactly as ingest reads them (OpenAssistant
    message rows are shown as rows: their trees are assembled across the whole file)."""
    root = Path(source.path)
    limits = Limits(max_record_bytes=source.max_record_bytes)
    warnings: list[str] = []
    if (info := dataset_info_path(root)) is not None:
        datasets, not_read = read_dataset_info(info, source)
        plan = [(f, d.source, d.source.format, f"{d.name}:" + ("" if f == d.root else f"{f.relative_to(d.root)}:"))
                for d in datasets for f in d.files]
    else:
        files, not_read = list_source(root)
        formats = file_formats(source, files, limits, warnings)
        plan = [(f, source, formats[f], "" if f == root else f"{f.relative_to(root).as_posix()}:") for f in files]
    records: list[InspectedRecord] = []
    unread: Counter[str] = Counter()
    for f, src, fmt, prefix in plan:
        items = iter_file(f, limits=limits, notes=[])
        try:
            for item in itertools.islice(items, n):
                records.extend(_inspect(item, fmt, src, f"{source.name}:{prefix}{item.locator}", unread))
        finally:
            items.close()
    return InspectedSource(source.name, {str(f): fmt for f, _, fmt, _ in plan}, not_read, records, dict(unread),
                           warnings)


def _inspect(item: RawItem, fmt: str | None, source: SourceConfig, origin: str, unread: Counter[str]
             ) -> list[InspectedRecord]:
    if item.error is not None:
        return [InspectedRecord(origin, "quarantined", reason=item.error.code, detail=item.error.message)]
    if fmt is None:
        return [InspectedRecord(origin, "quarantined", reason="schema.unknown_format", detail="no format detected")]
    missing = fields_not_read(item.value, fmt, source)
    unread.update(missing)
    if fmt == "oasst":  # a message row: trees are assembled over the whole file, so show the row's text
        text = item.value.get("text") if isinstance(item.value, dict) else None
        role = "user" if isinstance(item.value, dict) and item.value.get("role") == "prompter" else "assistant"
        return [InspectedRecord(origin, "kept", [{"role": role, "content": str(text)}], not_read=missing)]
    value = remap(item.value, source.columns.renames())[0] if source.columns is not None else item.value
    units: list[tuple[str, Any]] = [("", value)]
    out = []
    try:
        if fmt in EXPANDERS:
            units = EXPANDERS[fmt](value)
    except RecordError as e:
        return [InspectedRecord(origin, "quarantined", reason=e.code, detail=e.message, not_read=missing)]
    for suffix, unit in units:
        try:
            conv = TRANSFORMS[fmt](unit, source)
        except RecordError as e:
            out.append(InspectedRecord(origin + suffix, "quarantined", reason=e.code, detail=e.message,
                                       not_read=missing))
            continue
        unread.update(conv.unread)
        out.append(InspectedRecord(origin + suffix, "kept", conv.messages, not_read=sorted({*missing, *conv.unread}),
                                   tools=conv.tools))
    return out
