"""manifest.json: the last file a run writes; its presence says the shards are complete.

It names the schema version, the config hash, the tokenizer hash, the template, the counts and every
shard with its sha256 and row count. The trainer refuses a run directory without it (`read_manifest`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.core.rundir import RunDir, atomic_write_json

#: Version of the manifest and shard layout; bump it (and say so in the README) when either changes.
SCHEMA_VERSION = 1


class ManifestError(RuntimeError):
    """The run directory has no (readable, current) manifest.json: it is incomplete."""


class NothingKept(ManifestError):
    """The curation kept no conversation, so there is no shard to describe (a run outcome: the
    report says which sources lost everything and why)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (shards can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_manifest(run_dir: str | Path, cfg: Any, counts: dict) -> dict[str, Any]:
    """The manifest of a curated run directory, as a dict (written by `write_manifest`)."""
    rd = RunDir.of(run_dir)
    tok_file = rd.tokenizer / "tokenizer.json"
    if not tok_file.exists():
        raise ManifestError(f"{tok_file} is missing: run the tokenize stage before writing the manifest")
    tok_cfg = json.loads((rd.tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
    shards = []
    for path in sorted(rd.shards.glob("*.parquet")):
        shards.append({
            "path": f"shards/{path.name}",
            "split": path.name.split("-", 1)[0],
            "rows": pq.ParquetFile(path).metadata.num_rows,
            "sha256": sha256_file(path),
        })
    if not shards:
        raise NothingKept(f"{rd.shards} holds no shard: the curation kept no conversation")
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "config_hash": cfg.data_hash(),
        "tokenizer_hash": sha256_file(tok_file),
        "template": cfg.template.name,
        "chat_template": tok_cfg.get("chat_template"),
        "max_seq_len": cfg.pack.max_seq_len,
        "counts": counts,
        "shards": shards,
    }


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically: the run's "complete" flag, so the very last file a run writes."""
    return atomic_write_json(RunDir.of(run_dir).manifest, manifest)


def remove_manifest(run_dir: str | Path) -> None:
    """A run that starts is not complete until it writes its manifest again: remove the old one first,
    so a run killed half-way never leaves a manifest describing shards that are gone."""
    RunDir.of(run_dir).manifest.unlink(missing_ok=True)


def read_manifest(run_dir: str | Path) -> dict:
    """The manifest of a complete run directory; ManifestError (saying what to do) otherwise."""
    path = RunDir.of(run_dir).manifest
    if not path.exists():
        raise ManifestError(
            f"{path} not found: {run_dir} is not a complete run directory (the curation flow writes "
            "manifest.json last); run `sftforge curate CONFIG` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); re-run the curation") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema_version {manifest.get('schema_version')!r}, this sftforge reads {SCHEMA_VERSION}; "
            "re-run the curation with this version"
        )
    return manifest
