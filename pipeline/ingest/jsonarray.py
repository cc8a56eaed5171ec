"""A .json file: an array read element by element with the tolerant scanner, or one top-level value.

Each element (cut by pipeline.ingest.jsonscan) is parsed on its own with orjson, so one bad element
costs only itself; its locator is its 0-based index. Anything after the array's closing `]` is one
more record. An array that never closes (a truncated file) keeps every complete element, and its
unfinished tail is one quarantined record. When an element fails to parse, the reader looks past the
point of failure for a `,` followed by `{` (or `[`) from which a well-formed element of the same
kind as the good ones parses, and resumes there (an unbalanced quote or bracket would otherwise run
the element on through the rest of the file); else the element, as the rules cut it, is quarantined
with its raw bytes. An element that passes the size limit without ending is resynchronised the same
way, or skipped without being held. A file whose first byte is not `[` is one record (or JSON lines,
when its first line is a whole object and more lines follow).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.ingest import raw as rawmod
from pipeline.ingest.jsonl import iter_jsonl
from pipeline.ingest.jsonscan import ArrayScanner, end_of_element, max_depth_of, openers
from pipeline.ingest.raw import (
    LIMITS,
    RAW_KEEP_BYTES,
    ByteSource,
    Limits,
    RawItem,
    RecordError,
    head_bytes,
    parse_record,
    too_deep,
    too_large,
)

#: Candidates tried when resynchronising after a broken element, before giving up on it.
MAX_RESYNC_TRIES = 64

_RESYNC = re.compile(rb",[ \t\r\n]*([\[{])")
_LINE_END = re.compile(rb"[\r\n]")
_NOT_WS = re.compile(rb"[^ \t\r\n]")
_WS = b" \t\r\n"


def iter_json(path: Path, *, limits: Limits = LIMITS, notes: list[str] | None = None) -> Iterator[RawItem]:
    """A JSON array element by element (the module docstring gives the rules), or one top-level value."""
    notes = [] if notes is None else notes
    with ByteSource(path, notes) as src:
        head = body = b""
        while not body and (chunk := src.read()):
            head = (head if len(head) <= limits.max_record_bytes else head[-2:]) + chunk  # blank so far
            body = head.lstrip(_WS)
        if not body:
            return
        if body[:1] == b"[":
            yield from _ArrayReader(src, body, limits, notes, path).elements()
            return
        src.push(head)  # as read: the blank lines before the first record count for JSON lines' numbers
        if body[:1] == b"{" and _first_line_is_an_object_and_more_follow(src, limits):
            yield from iter_jsonl(path, limits=limits, notes=notes, source=src)
            return
        yield from _single_value(src, limits)


def _first_line_is_an_object_and_more_follow(src: ByteSource, limits: Limits) -> bool:
    """A .json file that is really JSON lines; reads ahead and gives everything back to `src`."""
    data = src.read()
    first = len(data) - len(data.lstrip(_WS))
    while (cut := _LINE_END.search(data, first)) is None and len(data) <= limits.max_record_bytes:
        chunk = src.read()
        if not chunk:
            break
        data += chunk
    if cut is not None:
        while not data[cut.end():].strip() and len(data) <= limits.max_record_bytes:
            chunk = src.read()
            if not chunk:
                break
            data += chunk
    src.push(data)
    if cut is None:
        return False
    try:
        return isinstance(orjson.loads(data[first: cut.start()]), dict) and bool(data[cut.end():].strip())
    except orjson.JSONDecodeError:
        return False


def _single_value(src: ByteSource, limits: Limits) -> Iterator[RawItem]:
    """A file that is one top-level value: one record, "0"."""
    parts, size = [], 0
    while size <= limits.max_record_bytes and (chunk := src.read()):
        parts.append(chunk)
        size += len(chunk)
    raw = b"".join(parts).strip(_WS)
    if size > limits.max_record_bytes:
        while chunk := src.read():  # count the rest without keeping it
            size += len(chunk)
        yield RawItem("0", raw=head_bytes(raw), error=too_large(size, limits))
        return
    depth = max_depth_of(raw) if openers(raw) > limits.max_depth else 0
    if depth > limits.max_depth:
        yield RawItem("0", raw=head_bytes(raw), error=too_deep(depth, limits))
        return
    value, error, _ = parse_record(raw)
    yield RawItem("0", raw=raw, error=error) if error else RawItem("0", value)


class _ArrayReader:
    """The elements of one JSON array, streamed: a buffer holds the open element and the unscanned bytes."""

    def __init__(self, src: ByteSource, body: bytes, limits: Limits, notes: list[str], path: Path):
        self.src, self.limits, self.notes, self.path = src, limits, notes, path
        self.buf = body
        self.start = 1  # the open element starts here (just after '[')
        self.scanned = 1
        self.scanner = ArrayScanner(1)
        self.pending: deque[tuple[int, int]] = deque()
        self.index = 0
        self.eof = False
        self.closed = False
        self.skipping: tuple[bytes, int] | None = None  # (head, size so far) of an element over the size limit
        self.last: Any = None  # the last good element: what a resync looks for

    def elements(self) -> Iterator[RawItem]:
        limit, max_depth = self.limits.max_record_bytes, self.limits.max_depth
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        pending = self.pending
        while not self.closed:
            if pending and self.skipping is not None:
                end, _ = pending.popleft()
                head, size = self.skipping
                self.skipping = None
                yield self._item(raw=head, error=too_large(size + end - self.start, self.limits))
                self.start = end + 1
                continue
            if pending:
                buf = self.buf
                while pending:
                    end, depth = pending.popleft()
                    raw = buf[self.start:end].strip(_WS)
                    if raw and len(raw) <= limit and depth <= max_depth:  # the usual case, kept short
                        try:
                            value = loads(raw)
                        except JSONDecodeError:
                            pass
                        else:
                            self.last = value
                            yield RawItem(str(self.index), value, raw)
                            self.index += 1
                            self.start = end + 1
                            continue
                    item, resumed = self._element(self.start, end, depth)
                    if item is not None:
                        yield item
                    if resumed:
                        break  # scanning starts again further on (pending was cleared)
                    self.start = end + 1
                continue
            if self.scanned < len(self.buf):
                self.scanner.feed(self.buf, self.scanned, len(self.buf))
                self.scanned = len(self.buf)
                self.pending.extend(self.scanner.take_boundaries())
                continue
            if self.skipping is None and len(self.buf) - self.start > limit:
                item = self._runaway()
                if item is not None:
                    yield item
                continue
            if self.eof:
                yield from self._finish()
                continue
            self._read_more()

    def _read_more(self) -> None:
        # Longer reads for a long element (fewer copies), but never much past the size limit.
        open_len = len(self.buf) - self.start
        chunk = self.src.read(max(rawmod.CHUNK_BYTES, min(open_len, self.limits.max_record_bytes + 1 - open_len)))
        if not chunk:
            self.eof = True
            return
        if self.skipping is not None:  # nothing of a skipped element is kept
            head, size = self.skipping
            self.skipping = (head, size + len(self.buf) - self.start)
            drop = len(self.buf)
        else:
            drop = self.start
        self.buf = self.buf[drop:] + chunk
        self.scanner.shift(drop)
        self.scanned -= drop
        self.start = max(0, self.start - drop)

    def _item(self, value: Any = None, raw: bytes | None = None, error: RecordError | None = None) -> RawItem:
        item = RawItem(str(self.index), value, raw, error)
        self.index += 1
        return item

    def _element(self, start: int, end: int, depth: int) -> tuple[RawItem | None, bool]:
        """The record in buf[start:end]: (item or None for a blank slot, whether reading resumed elsewhere)."""
        raw = self.buf[start:end]
        lead = len(raw) - len(raw.lstrip(_WS))
        raw = raw[lead:].rstrip(_WS)
        if not raw:
            return None, False
        if len(raw) > self.limits.max_record_bytes:
            if (cut := self._resync(start + lead, end)) is not None:
                return self._resume(start, *cut), True
            return self._item(raw=head_bytes(raw), error=too_large(len(raw), self.limits)), False
        if depth > self.limits.max_depth:
            return self._item(raw=head_bytes(raw), error=too_deep(depth, self.limits)), False
        value, error, failed_at = parse_record(raw)
        if error is None:
            self.last = value
            return self._item(value, raw), False
        if (cut := self._resync(start + lead + failed_at, end)) is not None:
            return self._resume(start, *cut), True
        return self._item(raw=raw, error=error), False

    def _resync(self, lo: int, hi: int) -> tuple[int, int] | None:
        """(comma, next start) of the first element after `lo` that parses and looks like the good ones."""
        last = self.last
        kind = None if last is None else type(last)
        want = b"{" if kind is dict else b"[" if kind is list else None
        tries = 0
        for m in _RESYNC.finditer(self.buf, lo, hi):
            if want is not None and m.group(1) != want:
                continue
            tries += 1
            if tries > MAX_RESYNC_TRIES:
                break
            c = m.start(1)
            end = end_of_element(self.buf, c, min(len(self.buf), c + self.limits.max_record_bytes + 1))
            if end is None:
                continue
            try:
                value = orjson.loads(self.buf[c:end])
            except orjson.JSONDecodeError:
                continue
            if kind is None or (type(value) is kind and (
                    kind is not dict or not last or not value or last.keys() & value.keys())):
                return m.start(), c
        return None

    def _resume(self, start: int, comma: int, c: int) -> RawItem:
        """Quarantine buf[start:comma] as one record and scan again from c, with a fresh state."""
        raw = self.buf[start:comma].strip(_WS)
        self.scanner = ArrayScanner(1)
        self.scanned = self.start = c
        self.pending.clear()
        if len(raw) > self.limits.max_record_bytes:
            return self._item(raw=head_bytes(raw), error=too_large(len(raw), self.limits))
        value, error, _ = parse_record(raw)
        return self._item(raw=raw, error=error) if error else self._item(value, raw)

    def _runaway(self) -> RawItem | None:
        """The open element has passed the size limit without ending: resync inside it, else skip it."""
        m = _NOT_WS.search(self.buf, self.start)
        if m is None or len(self.buf) - m.start() <= self.limits.max_record_bytes:
            self.start = len(self.buf) if m is None else m.start()  # it was blanks: no need to keep them
            return None
        first = m.start()
        try:  # where it stops being JSON (its end, for a long valid one); no copy of the buffer
            failed_at = len(self.buf) - first
            orjson.loads(memoryview(self.buf)[first:])
        except orjson.JSONDecodeError as e:
            failed_at = e.pos
        if (cut := self._resync(first + failed_at, len(self.buf))) is not None:
            return self._resume(self.start, *cut)
        self.skipping = (head_bytes(self.buf[first:first + RAW_KEEP_BYTES]), 0)
        return None

    def _finish(self) -> Iterator[RawItem]:
        """End of file: the last element (up to the array's ']'), then anything after the array."""
        if self.skipping is not None:
            head, size = self.skipping
            self.skipping = None
            yield self._item(raw=head, error=too_large(size + len(self.buf) - self.start, self.limits))
            self.notes.append(f"{self.path}: the JSON array never closes (file truncated?)")
            self.closed = True
            return
        close = self.scanner.first_close
        end = len(self.buf) if close is None else close
        item, resumed = self._element(self.start, end, max_depth_of(self.buf, self.start, end))
        if item is not None:
            yield item
        if resumed:
            return
        self.closed = True
        if close is None:
            self.notes.append(f"{self.path}: the JSON array never closes (file truncated?); "
                              "its complete elements are read")
            return
        if self.buf[close + 1:].strip(_WS):
            self.notes.append(f"{self.path}: content after the end of the JSON array is read as one more "
                              f"record ({self.index})")
            item, resumed = self._element(close + 1, len(self.buf), max_depth_of(self.buf, close + 1, len(self.buf)))
            if item is not None:
                yield item
            self.closed = not resumed  # a resync found elements further on: read on
