"""Stream raw records out of .jsonl, .json and .parquet files without loading a file whole.

Each reader yields `RawItem`s: the record's locator inside its file (1-based line for .jsonl,
0-based index for a JSON array or a parquet row), the decoded value, and — when the record could not
be decoded — a `RecordError`. Nothing here knows about source formats.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class SourceError(ValueError):
    """A source that cannot be read at all (missing, empty directory, unknown format, not parquet).

    The message names the path and says what to fix."""


class RecordError(Exception):
    """One record failed; `code` is the ledger reason (schema.*), the message names field and expectation."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class RawItem:
    locator: str
    value: Any = None
    #: the raw bytes/text when cheap to keep (a .jsonl line); else the value is re-serialised on failure
    raw: bytes | str | None = None
    error: RecordError | None = None


def data_files(path: Path) -> list[Path]:
    """The data files of a source: the file itself, or the .jsonl/.json/.parquet files under a directory."""
    if not path.exists():
        raise SourceError(f"{path}: source path does not exist (check [[sources]] path in the config)")
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise SourceError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl, .json or .parquet")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise SourceError(f"{path}: directory holds no .jsonl, .json or .parquet files")
    return files


def iter_file(path: Path, *, batch_rows: int = 8192) -> Iterator[RawItem]:
    """Every record of one file, streamed."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return iter_jsonl(path)
    if suffix == ".json":
        return iter_json(path)
    return iter_parquet(path, batch_rows=batch_rows)


# ---------------------------------------------------------------------------------------------- jsonl

#: Some editors on Windows start UTF-8 files with a byte-order mark; JSON parsers reject it.
BOM = b"\xef\xbb\xbf"


def _skip_bom(f: BinaryIO) -> None:
    if f.read(3) != BOM:
        f.seek(0)



def decode_error(raw: bytes) -> RecordError:
    """Why a line is not JSON: bad UTF-8 bytes or bad syntax (orjson reports both as one error)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return RecordError("schema.invalid_utf8", f"record: invalid UTF-8 byte(s) at offset {e.start}: {e.reason}")
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return RecordError("schema.invalid_json", f"record: not valid JSON ({e})")
    return RecordError("schema.invalid_json", "record: not valid JSON")


def iter_jsonl(path: Path) -> Iterator[RawItem]:
    """One item per non-blank line; blank lines are not records (a trailing newline is common)."""
    with open(path, "rb") as f:
        _skip_bom(f)
        for n, line in enumerate(f, 1):
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                if not line.strip():
                    continue
                yield RawItem(str(n), raw=line.rstrip(b"\r\n"), error=decode_error(line))
                continue
            yield RawItem(str(n), value, line)


# ---------------------------------------------------------------------------------------------- json

#: Invalid UTF-8 bytes in a JSON array are mapped to these private-use characters (one per byte value)
#: so the streaming parser can go on, and the element holding one is quarantined as schema.invalid_utf8.
_BAD_BYTE_BASE = 0x10FE00
_BAD_CHARS = re.compile("[\U0010fe80-\U0010feff]")


class _Utf8Guard(io.RawIOBase):
    """A byte stream that passes valid UTF-8 through and maps each invalid byte to a marker character."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._carry = b""
        self.saw_invalid = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunk = b""
        while not chunk:  # an empty read means EOF to the parser, so never return one early
            fresh = self._f.read(n)
            data = self._carry + fresh
            # Hold back a character cut by the chunk boundary, so each chunk can be checked on its own.
            cut = len(data) if not fresh else _complete_prefix(data)
            chunk, self._carry = data[:cut], data[cut:]
            if not fresh:
                break
        try:
            chunk.decode("utf-8")
            return chunk  # the common case: valid, passed through untouched
        except UnicodeDecodeError:
            self.saw_invalid = True
        text = chunk.decode("utf-8", "surrogateescape")
        return "".join(chr(_BAD_BYTE_BASE + ord(c) - 0xDC00) if "\udc80" <= c <= "\udcff" else c
                       for c in text).encode("utf-8")

    def readinto(self, b: Any) -> int:  # pragma: no cover - ijson calls read()
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _complete_prefix(data: bytes) -> int:
    """Length of `data` without a trailing, incomplete UTF-8 sequence (at most 3 bytes held back)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # a lead byte: complete if its sequence fits in what follows
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


def restore_bad_bytes(text: str) -> str:
    """Marker characters back to the backslash form of the invalid bytes they stand for (e.g. \\xff)."""
    return _BAD_CHARS.sub(lambda m: f"\\x{ord(m.group()) - _BAD_BYTE_BASE:02x}", text)


def to_json_text(value: Any) -> str:
    """A decoded value back as JSON text (for quarantine), whatever it holds (Decimal, ints over 64 bits)."""
    try:
        return orjson.dumps(value, default=str).decode("utf-8")
    except TypeError:  # orjson refuses integers beyond 64 bits
        return json.dumps(value, default=str, ensure_ascii=False)


def has_bad_bytes(value: Any) -> bool:
    """Whether a decoded value holds a marker of an invalid UTF-8 byte anywhere in its strings or keys."""
    return bool(_BAD_CHARS.search(to_json_text(value)))


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        _skip_bom(f)
        while chunk := f.read(4096):
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
    return b""


def _looks_like_jsonl(path: Path) -> bool:
    """A .json file that is really JSON lines: its first line is a whole object and more lines follow."""
    with open(path, "rb") as f:
        _skip_bom(f)
        first = f.readline()
        rest = f.read(4096)
    try:
        return isinstance(orjson.loads(first), dict) and bool(rest.strip())
    except orjson.JSONDecodeError:
        return False


def iter_json(path: Path) -> Iterator[RawItem]:
    """A JSON array streamed element by element (ijson), or a single top-level value as one record.

    A syntax error part-way through an array ends it: the elements before are read, and the rest of
    the file becomes one quarantined record at the failing index, since element boundaries can no
    longer be trusted.
    """
    import ijson

    first = _first_byte(path)
    if first == b"{" and _looks_like_jsonl(path):
        yield from iter_jsonl(path)
        return
    if first != b"[":
        # Not an array: the file is one record (a top-level object, as axolotl's fixtures have).
        raw = path.read_bytes().removeprefix(BOM)
        if not raw.strip():
            return
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield RawItem("0", raw=raw, error=decode_error(raw))
            return
        yield RawItem("0", value)
        return
    with open(path, "rb") as fh:
        _skip_bom(fh)
        guard = _Utf8Guard(fh)
        index = 0
        try:
            # Non-integers come as Decimal: with use_float, a valid 1e400 would break the whole array.
            for value in ijson.items(guard, "item"):
                if guard.saw_invalid and has_bad_bytes(value):
                    raw = restore_bad_bytes(to_json_text(value))
                    yield RawItem(str(index), raw=raw, error=RecordError(
                        "schema.invalid_utf8", "record: holds invalid UTF-8 byte(s) (shown as \\xNN in raw)"))
                else:
                    yield RawItem(str(index), value)
                index += 1
        except (ijson.JSONError, ValueError) as e:
            msg = restore_bad_bytes(str(e).strip())
            yield RawItem(str(index), raw=f"(JSON array breaks at element {index}; the parser said:)\n{msg}",
                          error=RecordError("schema.invalid_json",
                                            f"record: the JSON array is broken at element {index} and the rest "
                                            f"of the file could not be read: {msg.splitlines()[0]}"))


# ---------------------------------------------------------------------------------------------- parquet


def iter_parquet(path: Path, *, batch_rows: int = 8192) -> Iterator[RawItem]:
    """Rows of a parquet file as dicts, one record batch at a time."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise SourceError(f"{path}: not a readable parquet file ({e})") from None
    index = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            yield RawItem(str(index), row)
            index += 1
