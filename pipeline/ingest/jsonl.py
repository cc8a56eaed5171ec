"""JSON lines: one record per line, read in chunks, in bounded memory.

`\\n`, `\\r\\n` and a lone `\\r` each end a line (a raw CR cannot sit inside valid JSON); blank lines are
no record but count for line numbers (the locator is the 1-based line). A line is one record, so the
record size limit is also the line length limit: a longer line is skipped without being held, and is
one `schema.too_large` record. Depth is checked without a per-line cost (`_OpenerCounter`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from pipeline.ingest.jsonscan import max_depth_of, openers
from pipeline.ingest.raw import (
    LIMITS,
    ByteSource,
    Limits,
    RawItem,
    head_bytes,
    parse_record,
    too_deep,
    too_large,
)

_EOL = re.compile(rb"\r\n?|\n")


def iter_jsonl(path: Path, *, limits: Limits = LIMITS, notes: list[str] | None = None,
               source: ByteSource | None = None) -> Iterator[RawItem]:
    """One item per non-blank line, read in chunks; an over-long line is skipped, not held in memory.

    The limits cost one numpy pass per chunk (`_OpenerCounter`); only the lines it flags, a line that
    spans chunks and a line that is not valid JSON take the per-line checks of `_line_item`."""
    notes = [] if notes is None else notes
    max_bytes, max_depth = limits.max_record_bytes, limits.max_depth
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    n = 0
    parts: list[bytes] = []  # the unfinished last line, as read so far
    pending = 0
    skipped: tuple[bytes, int] | None = None  # (head, bytes so far) of an over-long line being skipped
    after_cr = False
    counter = _OpenerCounter()
    with source or ByteSource(path, notes) as src:
        while True:
            chunk = src.read()
            if not chunk:
                break
            if after_cr and chunk[:1] == b"\n":  # the \n of a \r\n split between two chunks
                chunk = chunk[1:]
            after_cr = chunk[-1:] == b"\r"
            before = counter.count(chunk)
            crlf = b"\r" in chunk
            lines = _EOL.split(chunk) if crlf else chunk.split(b"\n")
            last = lines.pop()
            # Lines that could break a limit take the per-line checks (None: all of them).
            suspect = None if len(chunk) > max_bytes else counter.suspects(before, lines, max_depth, 0 if crlf else 1)
            if skipped is not None:
                if lines:
                    head, size = skipped
                    n += 1
                    yield RawItem(str(n), raw=head, error=too_large(size + len(lines[0]), limits, "line"))
                    skipped = None
                    del lines[0]  # the end of the skipped line
                    suspect = {i - 1 for i in suspect if i} if suspect else suspect
                else:
                    skipped = (skipped[0], skipped[1] + len(last))
                    continue
            elif parts and lines:  # the line begun in earlier chunks ends here
                parts.append(lines[0])
                first = b"".join(parts)
                parts, pending = [], 0
                del lines[0]
                suspect = {i - 1 for i in suspect if i} if suspect else suspect
                n += 1
                if (item := _line_item(first, n, limits)) is not None:
                    yield item
            if suspect is not None and not suspect:
                for line in lines:  # the fast path
                    n += 1
                    try:
                        value = loads(line)
                    except JSONDecodeError:
                        if (item := _line_item(line, n, limits)) is not None:
                            yield item
                        continue
                    yield RawItem(str(n), value, line)
            else:
                for i, line in enumerate(lines):
                    n += 1
                    if suspect is None or i in suspect:
                        if (item := _line_item(line, n, limits)) is not None:
                            yield item
                        continue
                    try:
                        value = loads(line)
                    except JSONDecodeError:
                        if (item := _line_item(line, n, limits)) is not None:
                            yield item
                        continue
                    yield RawItem(str(n), value, line)
            if skipped is None and last:
                parts.append(last)
                pending += len(last)
                if pending > max_bytes:
                    skipped, parts, pending = (head_bytes(b"".join(parts)), pending), [], 0
        if skipped is not None:
            n += 1
            yield RawItem(str(n), raw=skipped[0], error=too_large(skipped[1], limits, "line"))
        elif parts:
            n += 1
            if (item := _line_item(b"".join(parts), n, limits)) is not None:
                yield item


#: Bytes per block when counting openers (255 x 8: a byte lane of the uint64 sums cannot overflow).
_BLOCK = 2040


class _OpenerCounter:
    """Which lines of a chunk could nest deeper than a limit, from one numpy pass (buffers reused).

    A line nests no deeper than it has '[' and '{' bytes. They are counted per block of the chunk;
    a line whose blocks together hold no more than the limit is cleared (nearly every line: records
    are far from the limit), and only the others are counted exactly (`_line_item`)."""

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=np.uint8)

    def count(self, chunk: bytes) -> np.ndarray:
        """before[j]: the openers in the blocks of `chunk` before block j (one pass, while it is in cache)."""
        n = len(chunk)
        if len(self._buf) < n:
            self._buf = np.empty(max(n, 1 << 20), dtype=np.uint8)
        a = np.frombuffer(chunk, dtype=np.uint8)
        opener = self._buf[:n]
        np.bitwise_or(a, 0x20, out=opener)
        np.equal(opener, 0x7B, out=opener.view(bool))  # '{' is 0x7B and '[' 0x5B: no other byte gives 0x7B
        k = n // _BLOCK
        per_block = opener[: k * _BLOCK].view(np.uint64).reshape(k, _BLOCK // 8).sum(axis=1)
        per_block = per_block.view(np.uint8).reshape(k, 8).sum(axis=1, dtype=np.int64)  # add up the byte lanes
        before = np.zeros(k + 2, dtype=np.int64)  # before[j]: openers in the blocks before block j
        np.cumsum(per_block, out=before[1 : k + 1])
        before[k + 1] = before[k] + np.count_nonzero(opener[k * _BLOCK:])
        return before

    @staticmethod
    def suspects(before: np.ndarray, lines: list[bytes], max_depth: int, gap: int) -> set[int] | None:
        """Indices into `lines` (complete lines from the start of the chunk, `gap` bytes between them;
        0: unknown) that may break the limit; None: any may."""
        if before[-1] <= max_depth:
            return set()
        width = max(map(len, lines), default=0) // _BLOCK + 2  # the most blocks a line touches
        if width < len(before) and int((before[width:] - before[:-width]).max()) <= max_depth:
            return set()  # no run of that many blocks holds more openers than the limit
        if not gap:
            return None
        lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
        starts = np.cumsum(lengths + gap) - lengths - gap
        last = np.maximum(starts + lengths - 1, starts)
        # the openers of the blocks a line touches: an upper bound on its own
        bound = before[last // _BLOCK + 1] - before[starts // _BLOCK]
        return set(np.flatnonzero(bound > max_depth).tolist())


def _line_item(line: bytes, n: int, limits: Limits) -> RawItem | None:
    """One line with every check (size, JSON, depth); None for a blank line."""
    if len(line) > limits.max_record_bytes:
        return RawItem(str(n), raw=head_bytes(line), error=too_large(len(line), limits, "line"))
    if not line.strip():
        return None
    depth = max_depth_of(line) if openers(line) > limits.max_depth else 0
    if depth > limits.max_depth:
        return RawItem(str(n), raw=head_bytes(line), error=too_deep(depth, limits))
    value, error, _ = parse_record(line)
    return RawItem(str(n), raw=line, error=error) if error else RawItem(str(n), value, line)
