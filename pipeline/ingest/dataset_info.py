"""A LLaMA-Factory `dataset_info.json` as a source: every dataset it lists with a local file.

The source's path is such a file, or a directory holding one. Each entry names a dataset:
`file_name` (a file or a directory, relative to the dataset_info.json), `formatting` (`alpaca`, the
default, `sharegpt` or `openai`), `columns` and `tags` (read as the source's `columns` and `tags`). A
sharegpt entry whose tags say `role`/`content` is OpenAI-style messages and is read as `openai`. A
local `file_name` is read even where the entry also names a hub (LLaMA-Factory would load the hub's). Records are
located as `<source>:<dataset name>:<n>` (`<source>:<dataset name>:<file>:<n>` for a directory).

Entries that cannot be read are listed with why (as `files_not_read`), never dropped silently: a
dataset only on a hub (`hf_hub_url`, `ms_hub_url`, `om_hub_url`, `script_url`, `cloud_file_name`
without a local `file_name`), a missing file, preference data (`ranking`, chosen/rejected, KTO), or
multimodal columns (images, videos, audios).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.ingest.files import SourceError, list_source
from schemas.config_sources import ColumnMap, SourceConfig, TagMap

NAME = "dataset_info.json"
_HUBS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_UNSUPPORTED_COLUMNS = {"images": "multimodal (images)", "videos": "multimodal (videos)",
                        "audios": "multimodal (audios)", "chosen": "preference data (chosen/rejected)",
                        "rejected": "preference data (chosen/rejected)", "kto_tag": "KTO data (kto_tag)"}


@dataclass
class Dataset:
    """One readable entry: its name, its files, the root they are located against, and the source
    settings it is read with (the configured source with this entry's format, columns and tags)."""

    name: str
    root: Path
    files: list[Path]
    source: SourceConfig


def dataset_info_path(path: Path) -> Path | None:
    """The dataset_info.json a source path names (the file itself, or one in the directory), or None."""
    if path.is_file() and path.name == NAME:
        return path
    if path.is_dir() and (path / NAME).is_file():
        return path / NAME
    return None


def read_dataset_info(info: Path, source: SourceConfig) -> tuple[list[Dataset], list[dict[str, str]]]:
    """The readable datasets of a dataset_info.json and, for every other entry, {path, reason}."""
    try:
        entries = orjson.loads(info.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise SourceError(f"{info}: not a readable dataset_info.json ({e})") from None
    if not isinstance(entries, dict):
        raise SourceError(f"{info}: a dataset_info.json is an object of datasets, got {type(entries).__name__}")
    datasets, not_read = [], []
    for name, entry in entries.items():
        where = f"{info}#{name}"
        why = _why_not(entry, info.parent)
        if why:
            not_read.append({"path": where, "reason": why})
            continue
        target = info.parent / entry["file_name"]
        files, skipped = list_source(target)
        not_read += skipped
        datasets.append(Dataset(name, target, files, _entry_source(source, entry)))
    if not datasets:
        raise SourceError(f"{info}: no dataset with a local file to read ("
                          + "; ".join(f"{n['path']}: {n['reason']}" for n in not_read[:5]) + ")")
    return datasets, not_read


def _why_not(entry: Any, base: Path) -> str | None:
    if not isinstance(entry, dict):
        return "the entry is not an object"
    file_name = entry.get("file_name")
    if not file_name:
        hub = next((k for k in _HUBS if entry.get(k)), None)
        if hub:
            return (f"only on a hub ({hub} = {entry[hub]!r}); sftforge reads local files: download it and set "
                    "file_name to the local copy")
        return "no file_name"
    if entry.get("ranking"):
        return "preference data (ranking = true) is not read"
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        return f"formatting {formatting!r} is not read (alpaca, sharegpt or openai)"
    for col in entry.get("columns") or {}:
        if col in _UNSUPPORTED_COLUMNS:
            return f"{_UNSUPPORTED_COLUMNS[col]} is not read"
    if not (base / file_name).exists():
        return f"file_name {file_name!r} does not exist under {base}"
    return None


def _entry_source(source: SourceConfig, entry: dict) -> SourceConfig:
    columns = {k: v for k, v in (entry.get("columns") or {}).items() if k in ColumnMap.model_fields and v}
    tags = {k: v for k, v in (entry.get("tags") or {}).items() if k in TagMap.model_fields and v}
    fmt = entry.get("formatting", "alpaca")
    if fmt == "openai" or (fmt == "sharegpt" and tags.get("role_tag") == "role" and tags.get("content_tag") == "content"):
        fmt, tags = "openai", {}  # OpenAI-style messages: the openai reader knows their roles and tool calls
    return source.model_copy(update={
        "format": fmt,
        "columns": ColumnMap(**columns) if columns else None,
        "tags": TagMap(**tags) if tags else None,
    })
