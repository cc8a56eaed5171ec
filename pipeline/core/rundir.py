"""The run directory (docs/CONTRACTS.md): every path in one place, its marker, its lock, atomic writes.

Safety rules, enforced here and nowhere else:
- **Marker.** A run directory carries `.sftforge-run.json`, written when sftforge first claims the
  folder. `claim_run_dir` refuses a folder that exists, is not empty and has no marker, before
  anything is written into it: sftforge never writes into (or deletes from) a folder it did not make.
- **Lock.** One run at a time holds `.sftforge.lock` (an exclusive `flock`, released by the kernel
  when the holder dies; the file names the holder's pid, host and start time). A second run is
  refused at once, naming the holder; a lock file left by a dead process is taken over with a
  warning. The lock is re-entrant within a process (the CLI takes it, then the flow it runs).
- **Writes** go through a temporary name in the same folder and a rename, so readers never see half
  a file; a failed write (a full disk) removes its temporary file and raises an OSError naming the
  path. `sweep_temporaries` removes what a killed process left (`.<name>.tmp-<pid>`), and only that.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

MARKER_NAME = ".sftforge-run.json"
LOCK_NAME = ".sftforge.lock"
#: temporary files of an atomic write: `.<final name>.tmp-<pid>` (a file or a directory)
TEMP_RE = re.compile(r"^\..+\.tmp-\d+$")


class RunDirError(RuntimeError):
    """The output folder cannot be used as a run directory (not ours, or held by another run)."""


@dataclass(frozen=True)
class RunDir:
    """Every path of a run directory; nothing else spells them out."""

    root: Path

    @classmethod
    def of(cls, root: str | Path) -> RunDir:
        return cls(Path(root))

    ledger = property(lambda self: self.root / "ledger")
    quarantine = property(lambda self: self.root / "quarantine")
    curated = property(lambda self: self.root / "curated")
    tokenizer = property(lambda self: self.root / "tokenizer")
    shards = property(lambda self: self.root / "shards")
    report = property(lambda self: self.root / "report")
    model = property(lambda self: self.root / "model")
    train = property(lambda self: self.root / "train")
    dedup_index = property(lambda self: self.root / "dedup_index")
    manifest = property(lambda self: self.root / "manifest.json")
    marker = property(lambda self: self.root / MARKER_NAME)
    lock = property(lambda self: self.root / LOCK_NAME)
    #: intermediate outputs of stages (not part of the contract): work/<stage>/...
    work = property(lambda self: self.root / "work")
    #: per-stage cache records (flows.cache)
    cache = property(lambda self: self.root / "work" / ".cache")

    def stage_dir(self, stage: str) -> Path:
        return self.work / stage


# ------------------------------------------------------------------------------------ marker


def _listing(path: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_run_dir(root: str | Path) -> str:
    """Without writing anything: 'new' (absent or empty), 'ours' (marked), else RunDirError."""
    root = Path(root)
    if not root.exists():
        return "new"
    if not root.is_dir():
        raise RunDirError(f"output_dir {root} is a file, not a folder: choose another output_dir")
    if (root / MARKER_NAME).is_file():
        return "ours"
    if not any(root.iterdir()):
        return "new"
    raise RunDirError(
        f"output_dir {root} is not empty and was not made by sftforge (no {MARKER_NAME}); it holds "
        f"{_listing(root)}. sftforge writes only into an empty folder or a run directory it made: "
        "choose another output_dir (a run directory of an older sftforge: delete it and re-run)"
    )


def claim_run_dir(root: str | Path) -> RunDir:
    """Make `root` a run directory (create it and its marker) or check that it is one already."""
    root = Path(root)
    if check_run_dir(root) == "new":
        root.mkdir(parents=True, exist_ok=True)
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("sftforge")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
            ver = "unknown"
        atomic_write_json(root / MARKER_NAME, {
            "made_by": "sftforge", "version": ver, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "note": "a sftforge run directory: sftforge may replace the files it wrote here",
        })
    return RunDir(root)


def require_run_dir(root: str | Path) -> RunDir:
    """A run directory that sftforge made (for commands that write into an existing one: train)."""
    root = Path(root)
    if not (root / MARKER_NAME).is_file():
        raise RunDirError(
            f"{root}: not a sftforge run directory (no {MARKER_NAME}); curate into it first "
            "(sftforge curate CONFIG)"
        )
    return RunDir(root)


# -------------------------------------------------------------------------------------- lock

_held: dict[str, list[Any]] = {}  # resolved path -> [open file, depth]
_held_guard = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            + (f" ({info['command']})" if info.get("command") else ""))


@contextlib.contextmanager
def run_lock(root: str | Path, command: str = "", warn: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the run directory's lock for the block; RunDirError at once when another run holds it."""
    path = Path(root).resolve() / LOCK_NAME
    key = str(path)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            try:
                holder = json.loads(f.read() or "{}")
            except ValueError:
                holder = {}
            raise RunDirError(
                f"{Path(root)} is in use by another sftforge run ({_describe(holder)}); wait for it to "
                f"finish, or use another output_dir"
            ) from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            try:
                old = json.loads(previous)
            except ValueError:
                old = {}
            if warn is not None:
                alive = isinstance(old.get("pid"), int) and old.get("host") == socket.gethostname() \
                    and _pid_alive(old["pid"])
                state = "a process that still exists but no longer holds it" if alive else "a process that is gone"
                warn(f"taking over the lock of {Path(root)} left by {_describe(old)}: {state}")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info))
        f.flush()
        with _held_guard:
            _held[key] = [f, 1]
        try:
            yield path
        finally:
            with _held_guard:
                _held[key][1] -= 1
                last = _held[key][1] == 0
                if last:
                    del _held[key]
            if last:
                f.seek(0)
                f.truncate()  # an empty lock file: released cleanly, nothing to take over
                f.flush()
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        if key not in _held:
            f.close()


# ---------------------------------------------------------------------------- temporaries


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def sweep_temporaries(root: str | Path) -> list[Path]:
    """Remove the temporary files and folders of writes a killed or failed process left behind
    (`.<name>.tmp-<pid>` whose pid is not alive, or is this process); returns what was removed."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in root.rglob(".*.tmp-*"):
        if not TEMP_RE.match(p.name):
            continue
        pid = int(p.name.rsplit("-", 1)[1])
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another live process is writing it
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _tmp_then_rename(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary name in the same folder, then rename: readers never see half a file.
    On failure the temporary file is removed and the error names the final path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and not getattr(e, "filename", None):
            raise OSError(e.errno, f"writing {path}: {e.strerror or e}", str(path)) from e
        if not isinstance(e, OSError) and _is_no_space(e):
            # pyarrow/polars report a full disk as their own error types: name the path, keep errno
            raise OSError(errno.ENOSPC, f"writing {path}: no space left on device ({e})", str(path)) from e
        raise
    return path


def _is_no_space(e: BaseException) -> bool:
    text = str(e).lower()
    return "no space left" in text or "disk quota exceeded" in text


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _tmp_then_rename(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_parquet(df: pl.DataFrame, path: str | Path) -> Path:
    return _tmp_then_rename(path, lambda tmp: df.write_parquet(tmp, statistics=False))


def atomic_write_table(table: pa.Table, path: str | Path, **write_options: Any) -> Path:
    """A pyarrow table to Parquet atomically; `write_options` go to `pyarrow.parquet.write_table`."""
    return _tmp_then_rename(path, lambda tmp: pq.write_table(table, tmp, **write_options))


def atomic_write_ipc(table: pa.Table, path: str | Path, compression: str = "lz4") -> Path:
    """A pyarrow table as an Arrow IPC file atomically: work files a later stage reads whole
    (written and read ~20x faster than Parquet; pipeline.core.parts.read_part reads either)."""
    import pyarrow.feather as feather

    return _tmp_then_rename(path, lambda tmp: feather.write_feather(table, tmp, compression=compression))


def remove_outputs(folder: Path, pattern: str) -> list[Path]:
    """Delete the files matching `pattern` in `folder`, a folder of a run directory sftforge made.

    The one way stages clear their earlier outputs: it refuses to delete anything outside a marked
    run directory, so a mistaken path can never cost a user's files."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob(pattern) if p.is_file() or p.is_symlink()) if folder.is_dir() else []
    if found and not any((p / MARKER_NAME).is_file() for p in (folder, *folder.parents)):
        raise RunDirError(
            f"refusing to delete {len(found)} file(s) {folder}/{pattern}: {folder} is not inside a sftforge "
            f"run directory (no {MARKER_NAME}), so nothing proves sftforge wrote them"
        )
    for p in found:
        p.unlink()
    return found
