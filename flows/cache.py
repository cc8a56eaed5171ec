"""Content-derived cache keys for the stage tasks, and a check that a cached stage's outputs are intact.

A stage's key hashes what determines its output: the bytes of its input files, the config sections
it reads, the source code of the package that computes it, and the run directory it writes into.
Prefect's default policy would hash the task's arguments (paths), which says nothing about whether
the files behind them changed; and a persisted result alone does not prove the files it describes
are still on disk, so the flow also checks a fingerprint of the outputs (`outputs_intact`) and
refreshes the cache when they were deleted or rewritten.
"""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Iterable
from pathlib import Path

import xxhash

from pipeline.core.rundir import RunDir, atomic_write_json

_PROJECT = Path(__file__).resolve().parent.parent
_PACKAGES = ("pipeline", "schemas", "trainer")

def hash_files(paths: Iterable[str | Path]) -> str:
    """Hash of the names' order and the bytes of the given files (a directory: every file below it)."""
    h = xxhash.xxh3_128()
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.name).encode() + b"\0")
            try:
                with open(f, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
            except FileNotFoundError:
                h.update(b"<missing>")
            h.update(b"\0")
    return h.hexdigest()


def _module_file(name: str) -> Path | None:
    base = _PROJECT.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _project_imports(name: str, seen: set[str]) -> None:
    """Collect `name` and every project module it imports, transitively (read with ast, not imported)."""
    if name in seen or (f := _module_file(name)) is None:
        return
    seen.add(name)
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            if t.split(".")[0] in _PACKAGES:
                _project_imports(t, seen)


#: CPython 3.11's ast.parse is not safe in concurrent threads ("SystemError: AST constructor recursion
#: depth mismatch", seen when a Dask worker's threads computed cache keys at once): one at a time
_PARSE_LOCK = threading.Lock()


def code_version(*modules: str) -> str:
    """Hash of the source of the given modules and of every project module they import: editing the
    code a stage runs invalidates that stage's cache, editing an unrelated stage does not."""
    seen: set[str] = set()
    with _PARSE_LOCK:
        for m in modules:
            _project_imports(m, seen)
    return hash_files(sorted(f for m in seen if (f := _module_file(m)) is not None))[:16]


def stage_key(stage: str, run_dir: str | Path, *parts: str) -> str:
    """The cache key of one stage: stage name, resolved run directory and the content parts."""
    h = xxhash.xxh3_128()
    for piece in (stage, str(Path(run_dir).resolve()), *parts):
        h.update(piece.encode() + b"\0")
    return f"sftforge-{stage}-{h.hexdigest()}"


def _output_files(run_dir: Path, stage: str, source: str | None) -> dict[str, list[int]]:
    """Size and mtime of every file the stage writes (its outputs, from the registry)."""
    from flows.stages import stage as stage_of

    out: dict[str, list[int]] = {}
    for target in stage_of(stage).outputs(RunDir(run_dir), source):
        files = sorted(f for f in target.rglob("*") if f.is_file()) if target.is_dir() else [target]
        for f in files:
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                out[str(f.relative_to(run_dir))] = [st.st_size, st.st_mtime_ns]
    return out


def _marker(run_dir: Path, stage: str, source: str | None) -> Path:
    return RunDir(run_dir).cache / (f"{stage}-{source}.json" if source else f"{stage}.json")


def record_outputs(run_dir: str | Path, stage: str, key: str, source: str | None = None) -> None:
    """After a stage ran: remember its key and the size/mtime of every file it wrote."""
    run_dir = Path(run_dir)
    atomic_write_json(_marker(run_dir, stage, source), {"key": key, "files": _output_files(run_dir, stage, source)})


def outputs_intact(run_dir: str | Path, stage: str, key: str, source: str | None = None) -> bool:
    """True when the stage last ran here with this key and none of its files was removed or rewritten."""
    run_dir = Path(run_dir)
    try:
        marker = json.loads(_marker(run_dir, stage, source).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("key") != key or not marker.get("files"):
        return False
    return marker["files"] == _output_files(run_dir, stage, source)

