"""What the trainer reads from a run directory: the manifest, the shard lists, curated metadata.

The manifest is read through `pipeline.core.manifest.read_manifest`, which owns the format and its
checks; its `shards` entry is read tolerantly here (a list of objects with a path, a mapping
name -> object, or a mapping split -> list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.manifest import ManifestError, sha256_file
from pipeline.core.manifest import read_manifest as pipeline_read_manifest


class RunDirError(ValueError):
    """A run directory the trainer cannot train on; the message says what is missing and how to make it."""


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest; a clear error for a run directory that is not complete."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise RunDirError(
            f"{run_dir}: no manifest.json, so this run directory is incomplete (curation did not finish); "
            "run `sftforge curate CONFIG` first, or point the trainer at a finished run directory"
        )
    try:
        return dict(pipeline_read_manifest(run_dir))
    except ManifestError as e:
        raise RunDirError(str(e)) from None


def _entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    shards = manifest.get("shards")
    if isinstance(shards, list) and all(isinstance(e, dict) and "path" in e for e in shards):
        return [dict(e) for e in shards]
    raise RunDirError("manifest.json has no 'shards' list; rebuild the run directory with `sftforge curate`")


def shard_paths(run_dir: Path, manifest: dict[str, Any], *, verify: bool = True) -> dict[str, list[Path]]:
    """{"train": [...], "val": [...]} from the manifest, each file checked to exist (and its sha256)."""
    out: dict[str, list[Path]] = {"train": [], "val": []}
    for e in _entries(manifest):
        raw = e.get("path") or e.get("file") or e.get("name")
        if not raw:
            raise RunDirError(f"manifest.json: shard entry {e} has no path")
        path = Path(raw)
        if not path.is_absolute():
            # "shards/train-00000.parquet" (relative to the run dir) or a bare file name in shards/
            candidates = [run_dir / path, run_dir / "shards" / path]
            path = next((c for c in candidates if c.is_file()), candidates[0])
        split = e.get("split") or path.name.split("-", 1)[0]
        if split not in out:
            continue
        if not path.is_file():
            raise RunDirError(f"{path}: listed in manifest.json but missing; rebuild the run directory")
        digest = e.get("sha256")
        if verify and digest and sha256_file(path) != digest:
            raise RunDirError(f"{path}: sha256 differs from manifest.json (file changed since curation); rebuild")
        out[split].append(path)
    for split in out:
        out[split].sort()
    if not out["train"]:
        raise RunDirError(f"{run_dir}: manifest.json lists no train shards; nothing to train on")
    return out


def conversation_meta(run_dir: Path) -> dict[str, tuple[str, str]]:
    """conversation_id -> (source, tier) from curated/*.parquet; empty when there is no curated data."""
    files = sorted((run_dir / "curated").glob("*.parquet"))
    if not files:
        return {}
    df = (
        pl.scan_parquet(files)
        .select("conversation_id", "source", "tier")
        .unique(subset="conversation_id", keep="first")
        .collect()
    )
    return {c: (s, t) for c, s, t in df.iter_rows()}
