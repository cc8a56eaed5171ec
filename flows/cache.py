"""Content-derived cache keys for the stage tasks, and a check that a cached stage's outputs are intact.

A stage's key hashes what determines its output: the bytes of its input files, the config sections
it reads, the source code of the package that computes it, and the run directory it writes into.
Prefect's default policy would hash the task's arguments (paths), which says nothing about whether
the files behind them changed; and a persisted result alone does not prove the files it describes
are still on disk, so the flow also checks a fingerprint of the outputs (`outputs_intact`) and
refreshes the cache when they were deleted or rewritten.
"""

from __future__ import annotations

import io
import json
import keyword
import tokenize
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


def _imports(source: str) -> list[str]:
    """Absolute module names a source imports (`import a.b`, `from a.b import c` gives a.b and a.b.c).

    Read with `tokenize`, not `ast`: CPython 3.11's `ast.parse` keeps its recursion depth in state shared
    by all threads, so a parse in one thread while any other thread (ours or a library's) parses fails
    with "SystemError: AST constructor recursion depth mismatch" (gh-106905; seen in CI with Dask).
    Strings and comments are tokens of their own, so an `import` inside them is not read; `yield from`
    and `raise ... from` are not followed by `import`, so they are not read either; relative imports
    (`from . import x`) are skipped, like the project's absolute-only style.
    """
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL)]
    out: list[str] = []

    def dotted(i: int) -> tuple[str, int]:
        parts = []
        while i < len(toks) and toks[i].type == tokenize.NAME and not keyword.iskeyword(toks[i].string):
            parts.append(toks[i].string)
            if i + 1 < len(toks) and toks[i + 1].string == ".":
                i += 2
            else:
                i += 1
                break
        return ".".join(parts), i

    def names(i: int) -> tuple[list[str], int]:
        """`a.b as x, c` or `(a as x, b,)` up to the end of the statement."""
        found: list[str] = []
        paren = i < len(toks) and toks[i].string == "("
        i += paren
        while i < len(toks):
            t = toks[i]
            if t.type == tokenize.NAME and t.string != "as":
                name, i = dotted(i)
                found.append(name)
                if i < len(toks) and toks[i].string == "as":
                    i += 2
                continue
            if t.string == ",":
                i += 1
                continue
            if t.string == "*":
                i += 1
                continue
            if paren and t.string == ")":
                i += 1
            break
        return found, i

    i = 0
    while i < len(toks):
        t = toks[i]
        if t.type == tokenize.NAME and t.string == "import":
            found, i = names(i + 1)
            out.extend(found)
            continue
        if t.type == tokenize.NAME and t.string == "from" and i + 1 < len(toks):
            j, relative = i + 1, False
            while j < len(toks) and toks[j].string in (".", "..."):
                j, relative = j + 1, True
            module, j = dotted(j)
            if j < len(toks) and toks[j].string == "import" and (module or relative):
                found, i = names(j + 1)
                if not relative:
                    out.append(module)
                    out.extend(f"{module}.{n}" for n in found)
                continue
        i += 1
    return out


#: what a source imports, by the hash of its text: the stages share most of their modules
_IMPORTS_SEEN: dict[str, list[str]] = {}


def _project_imports(name: str, seen: set[str]) -> None:
    """Collect `name` and every project module it imports, transitively (read, not imported)."""
    if name in seen or (f := _module_file(name)) is None:
        return
    seen.add(name)
    text = f.read_text(encoding="utf-8")
    stamp = xxhash.xxh3_128_hexdigest(text.encode())
    if (found := _IMPORTS_SEEN.get(stamp)) is None:
        found = _IMPORTS_SEEN[stamp] = _imports(text)
    for t in found:
        if t.split(".")[0] in _PACKAGES:
            _project_imports(t, seen)


def code_version(*modules: str) -> str:
    """Hash of the source of the given modules and of every project module they import: editing the
    code a stage runs invalidates that stage's cache, editing an unrelated stage does not."""
    seen: set[str] = set()
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

