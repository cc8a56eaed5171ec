"""Raw records as the readers yield them, the limits every reader applies, and a file's bytes.

`RawItem` and `RecordError` (one record), `SourceError` (a whole source), `Limits` (nesting depth
and bytes per record, the same for every reader), the errors for a record over a limit, which keep
its first `RAW_KEEP_BYTES` as raw; `parse_record` (orjson, the standard library only for numbers
beyond a double); `ByteSource`, a data file's bytes in chunks, decompressed by its suffix.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from schemas.config_sources import DEFAULT_MAX_RECORD_BYTES

#: Deepest nesting a record may have: real records nest < 15 levels (tool schemas included).
MAX_DEPTH = 128
#: Largest record, in bytes (a .jsonl line; a JSON array element; a parquet row's data): 16 MiB, or the
#: source's `max_record_bytes`.
MAX_RECORD_BYTES = DEFAULT_MAX_RECORD_BYTES
#: How much of a record over a limit is kept as raw text in the quarantine.
RAW_KEEP_BYTES = 64 << 10
#: Bytes read (and scanned) at a time.
CHUNK_BYTES = 1 << 20
#: Compressed data files, by the last suffix of their name (x.jsonl.gz).
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


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
    #: the raw bytes/text (a .jsonl line, a JSON array element); None: the value is re-serialised on failure
    raw: bytes | str | None = None
    error: RecordError | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What one record may be: nesting levels and bytes."""

    max_depth: int = MAX_DEPTH
    max_record_bytes: int = MAX_RECORD_BYTES


LIMITS = Limits()



# ---------------------------------------------------------------------------------------------- bytes

_STREAM_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)


def _zstd(path: Path) -> Any:
    import pyarrow as pa  # already a dependency: no zstandard package needed

    return pa.input_stream(str(path), compression="zstd")


#: Binary file objects with read(n), by compression (None: plain).
_OPENERS = {None: io.FileIO, "gzip": gzip.GzipFile, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile, "zstd": _zstd}


class ByteSource:
    """A file's bytes in chunks, decompressed by its suffix; `push` gives bytes back to read again."""

    def __init__(self, path: Path, notes: list[str]):
        self.path, self.notes = path, notes
        self.comp = COMPRESSIONS.get(path.suffix.lower())
        self.delivered = 0
        self._pushed: list[bytes] = []
        try:
            self._f = _OPENERS[self.comp](path)
            # read1: one step of decompression at a time, so what came before a break is delivered
            self._read = getattr(self._f, "read1", self._f.read) if self.comp else self._f.read
        except OSError as e:
            raise SourceError(f"{path}: cannot be opened ({e})") from None
        try:
            first = self.read()
        except BaseException:
            self._f.close()
            raise
        self.push(first[3:] if first.startswith(b"\xef\xbb\xbf") else first)  # a UTF-8 BOM: JSON parsers reject it

    def read(self, n: int = 0) -> bytes:
        """Up to n (default CHUNK_BYTES) bytes; b"" at the end (or where a compressed stream breaks)."""
        if self._pushed:
            return self._pushed.pop()
        try:
            data = self._read(n or CHUNK_BYTES)
        except _STREAM_ERRORS as e:
            if not self.comp:
                raise
            if self.delivered == 0:
                raise SourceError(f"{self.path}: not a valid {self.comp} file ({e})") from None
            self.notes.append(f"{self.path}: the {self.comp} stream is corrupt or truncated after "
                              f"{self.delivered:,} bytes ({e}); the records before that point are read")
            data = b""
        self.delivered += len(data)
        return data

    def push(self, data: bytes) -> None:
        if data:
            self._pushed.append(data)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ByteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- records


def too_large(size: int, limits: Limits, what: str = "record") -> RecordError:
    return RecordError("schema.too_large", f"{what}: {size:,} bytes, over the limit of {limits.max_record_bytes:,} "
                                           f"(max_record_bytes); raw holds its first bytes only")


def too_deep(depth: int, limits: Limits) -> RecordError:
    return RecordError("schema.too_deep", f"record: nests {depth:,} levels deep, over the limit of "
                                          f"{limits.max_depth} (MAX_DEPTH); raw holds its first bytes only")


def head_bytes(raw: bytes) -> bytes:
    """The first RAW_KEEP_BYTES of a record, not cutting a UTF-8 character in two."""
    if len(raw) <= RAW_KEEP_BYTES:
        return raw
    cut = RAW_KEEP_BYTES
    while cut > RAW_KEEP_BYTES - 4 and 0x80 <= raw[cut] < 0xC0:  # a continuation byte: back to its lead
        cut -= 1
    return raw[:cut]


def decode_error(raw: bytes, exc: Exception | None = None) -> RecordError:
    """Why a record is not JSON: bad UTF-8 bytes or bad syntax (orjson reports both as one error)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return RecordError("schema.invalid_utf8", f"record: invalid UTF-8 byte(s) at offset {e.start}: {e.reason}")
    if exc is None:
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            exc = e
    return RecordError("schema.invalid_json", f"record: not valid JSON ({exc})" if exc else "record: not valid JSON")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_record(raw: bytes) -> tuple[Any, RecordError | None, int]:
    """(value, None, 0), or (None, error, byte offset where parsing failed) — the slow path of a record.

    orjson refuses numbers beyond a double (1e400); those records are read again with the standard
    library (floats as Decimal) so they fail on the field's type, as they would with any other value.
    """
    try:
        return orjson.loads(raw), None, 0
    except orjson.JSONDecodeError as e:
        if "number" in str(e):
            try:
                value = json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_reject_constant)
                json.dumps(value, default=str, ensure_ascii=False).encode("utf-8")  # no lone surrogate got in
                return value, None, 0
            except (ValueError, RecursionError):  # UnicodeError is a ValueError
                pass
        return None, decode_error(raw, e), max(0, e.pos)


def to_json_text(value: Any) -> str:
    """A decoded value back as JSON text (for quarantine), whatever it holds (Decimal, ints over 64 bits)."""
    try:
        return orjson.dumps(value, default=str).decode("utf-8")
    except TypeError:  # orjson refuses integers beyond 64 bits
        return json.dumps(value, default=str, ensure_ascii=False)
