"""What ingest will make of a source, without running it: the preflight check of every source
(before any server starts) and `sftforge inspect` (the first records as canonical conversations,
the fields the reader does not read, the errors records would be quarantined with)."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.ingest.files import Limits, RawItem, RecordError, SourceError, iter_file, list_source
from pipeline.ingest.formats import TRANSFORMS
from pipeline.ingest.stage import file_formats
from schemas.config_sources import SourceConfig
from schemas.records import (
    AlpacaRecord,
    DollyRecord,
    OasstMessage,
    OpenAIRecord,
    PromptCompletionRecord,
    ShareGPTRecord,
)

_MODELS = {"alpaca": AlpacaRecord, "dolly": DollyRecord, "sharegpt": ShareGPTRecord, "openai": OpenAIRecord,
           "oasst": OasstMessage, "prompt_completion": PromptCompletionRecord, "flan": PromptCompletionRecord}


def fields_read(fmt: str) -> set[str]:
    """The top-level keys the reader of `fmt` reads (its record model's fields and aliases)."""
    model = _MODELS[fmt]
    names = set(model.model_fields)
    names |= {f.alias for f in model.model_fields.values() if f.alias}
    if fmt in ("prompt_completion", "flan"):
        names |= {"prompt", "completion", "inputs", "targets"}
    return names


def fields_not_read(value: Any, fmt: str, source: SourceConfig) -> list[str]:
    """Top-level keys of a record that carry text (a string, or a list/dict holding one) and that
    the reader of `fmt` ignores."""
    if not isinstance(value, dict):
        return []
    known = fields_read(fmt) | {source.prompt_field, source.completion_field} - {None}

    def has_text(v: Any) -> bool:
        if isinstance(v, str):
            return bool(v.strip())
        if isinstance(v, list | tuple):
            return any(has_text(x) for x in v)
        if isinstance(v, dict):
            return any(has_text(x) for x in v.values())
        return False

    return sorted(k for k, v in value.items() if k not in known and has_text(v))


def preflight_source(source: SourceConfig) -> list[str]:
    """Problems that stop ingest of this source, found by reading only the first records of each
    file: a missing path, an unsupported file type, a directory with no data file, a format that
    cannot be told. Empty when the source can be read."""
    try:
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
    files, not_read = list_source(root)
    limits = Limits(max_record_bytes=source.max_record_bytes)
    warnings: list[str] = []
    formats = file_formats(source, files, limits, warnings)
    records: list[InspectedRecord] = []
    unread: Counter[str] = Counter()
    for f in files:
        fmt = formats[f]
        prefix = "" if f == root else f"{f.relative_to(root).as_posix()}:"
        items = iter_file(f, limits=limits, notes=[])
        try:
            for item in itertools.islice(items, n):
                records.append(_inspect(item, fmt, source, f"{source.name}:{prefix}{item.locator}", unread))
        finally:
            items.close()
    return InspectedSource(source.name, {str(f): formats[f] for f in files}, not_read, records, dict(unread), warnings)


def _inspect(item: RawItem, fmt: str | None, source: SourceConfig, origin: str, unread: Counter[str]
             ) -> InspectedRecord:
    if item.error is not None:
        return InspectedRecord(origin, "quarantined", reason=item.error.code, detail=item.error.message)
    if fmt is None:
        return InspectedRecord(origin, "quarantined", reason="schema.unknown_format", detail="no format detected")
    missing = fields_not_read(item.value, fmt, source)
    unread.update(missing)
    if fmt == "oasst":  # a message row: trees are assembled over the whole file, so show the row's text
        text = item.value.get("text") if isinstance(item.value, dict) else None
        role = "user" if isinstance(item.value, dict) and item.value.get("role") == "prompter" else "assistant"
        return InspectedRecord(origin, "kept", [{"role": role, "content": str(text)}], not_read=missing)
    try:
        messages, _, _ = TRANSFORMS[fmt](item.value, source)
    except RecordError as e:
        return InspectedRecord(origin, "quarantined", reason=e.code, detail=e.message, not_read=missing)
    return InspectedRecord(origin, "kept", messages, not_read=missing)
