"""The byte-level rules that split a JSON array into elements, whatever the bytes hold.

Inside the array the depth is 1; `[` and `{` add one, `]` and `}` take one away but never below 1; a
quote opens or closes a string unless an odd run of backslashes precedes it, and nothing inside a
string counts; a comma at depth 1 ends an element. A closer at depth 1 is garbage inside its
element, except that the first `]` at depth 1 after the last comma closes the array. For valid JSON
these are exactly JSON's own boundaries; for broken bytes they still cut somewhere, in constant
memory, and the reader (pipeline.ingest.jsonarray) parses each piece on its own.

`ArrayScanner` applies them with numpy over blocks of bytes (state carried between blocks);
tests/test_ingest_properties.py states them again one byte at a time and checks the two agree.
"""

from __future__ import annotations

import numpy as np

_DELTA = np.zeros(256, dtype=np.int64)
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1
_QUOTE, _BACKSLASH, _COMMA, _CLOSE_BRACKET = 0x22, 0x5C, 0x2C, 0x5D


class ArrayScanner:
    """Element boundaries of a JSON array by the rules of the module docstring, over blocks of bytes.

    `feed` scans data[start:end] with numpy and carries the state (inside a string, an odd run of
    backslashes at the end, depth) to the next block. `take_boundaries` returns the position of each
    comma at depth 1 with the depth of the element it ends (0 for a scalar, 1 for a flat object, …);
    `deepest` and `first_close` describe the element still open.
    """

    __slots__ = ("in_str", "bs_odd", "depth", "deepest", "first_close", "_bounds")

    def __init__(self, depth: int = 1):
        self.in_str = False
        self.bs_odd = False
        self.depth = depth
        self.deepest = depth  # deepest level inside the open element (1 = at the array's own level)
        self.first_close: int | None = None  # position of the first ']' at depth 1 in the open element
        self._bounds: list[tuple[int, int]] = []

    def take_boundaries(self) -> list[tuple[int, int]]:
        out, self._bounds = self._bounds, []
        return out

    def open_depth(self) -> int:
        return self.deepest - 1

    def shift(self, n: int) -> None:
        """The caller dropped the first n bytes of its buffer: move stored positions with them."""
        if self.first_close is not None:
            self.first_close -= n

    def feed(self, data: bytes, start: int, end: int) -> None:
        if end <= start:
            return
        a = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
        carry = self.bs_odd
        j = end - 1  # the run of backslashes that ends the block, for the next block (its parity)
        while j >= start and data[j] == _BACKSLASH:
            j -= 1
        self.bs_odd = bool((end - 1 - j + (carry if j < start else 0)) & 1)
        # The bytes that matter: '"', ',' and the brackets ('[' ']' are '{' '}' less 0x20).
        x = np.bitwise_or(a, 0x20)
        special = x == 0x7B
        special |= x == 0x7D
        special |= a == _QUOTE
        special |= a == _COMMA
        idx = np.flatnonzero(special)
        if not idx.size:
            return
        ch = a[idx]
        is_q = ch == _QUOTE
        q_at = np.flatnonzero(is_q)
        if q_at.size:
            escaped = _escaped(data, start, a, idx[q_at], carry)
            if escaped is not None:
                is_q[q_at[escaped]] = False
        q_before = np.cumsum(is_q)  # unescaped quotes up to each event (a non-quote event: before it)
        struct = ((q_before + self.in_str) & 1) == 0
        struct &= ch != _QUOTE
        if q_before.size:
            self.in_str = bool((int(q_before[-1]) + self.in_str) & 1)
        pos = idx[struct]
        if not pos.size:
            return
        sc = ch[struct]
        delta = _DELTA[sc]
        level = self.depth + np.cumsum(delta)
        # Never below 1: the walk reflected at 1 is the running sum less its lowest dip under 1.
        dip = np.minimum.accumulate(level - 1)
        np.minimum(dip, 0, out=dip)
        level -= dip
        before = np.empty_like(level)
        before[0] = self.depth
        before[1:] = level[:-1]
        at_top = before == 1
        ends = np.flatnonzero(at_top & (sc == _COMMA))
        closes = np.flatnonzero(at_top & (sc == _CLOSE_BRACKET))
        if ends.size:
            starts = np.concatenate(([0], ends + 1))
            if starts[-1] == level.size:
                maxima, open_max = np.maximum.reduceat(level, starts[:-1]), 1
            else:
                both = np.maximum.reduceat(level, starts)
                maxima, open_max = both[:-1], int(both[-1])
            maxima[0] = max(int(maxima[0]), self.deepest)
            self._bounds.extend(zip((pos[ends] + start).tolist(), (maxima - 1).tolist(), strict=True))
            self.deepest = open_max
            later = closes[closes > ends[-1]]
            self.first_close = int(pos[later[0]]) + start if later.size else None
        else:
            self.deepest = max(self.deepest, int(level.max()))
            if self.first_close is None and closes.size:
                self.first_close = int(pos[closes[0]]) + start
        self.depth = int(level[-1])


def _escaped(data: bytes, start: int, a: np.ndarray, qpos: np.ndarray, carry: bool) -> np.ndarray | None:
    """Which quotes (at qpos in the block `a`, which starts at data[start]) an odd run of backslashes
    precedes; `carry`: the block before ended in an odd run. None when none is."""
    prev = qpos - 1
    inside = prev >= 0
    touching = np.zeros(qpos.size, dtype=bool)
    touching[inside] = a[prev[inside]] == _BACKSLASH
    if carry:
        touching[~inside] = True
    if not touching.any():
        return None
    escaped = np.zeros(qpos.size, dtype=bool)
    # Rare (an escaped quote in text): count each run back to its start. Runs end at their quote, so
    # the work is bounded by the block's length.
    for i in np.flatnonzero(touching).tolist():
        q = int(qpos[i]) + start
        j = q - 1
        while j >= start and data[j] == _BACKSLASH:
            j -= 1
        escaped[i] = bool((q - 1 - j + (carry if j < start else 0)) & 1)
    return escaped


def max_depth_of(raw: bytes, start: int = 0, end: int | None = None) -> int:
    """The nesting depth of one JSON value (0 for a scalar), by the scanner's rules."""
    scanner = ArrayScanner(1)
    scanner.feed(raw, start, len(raw) if end is None else end)
    return max([d for _, d in scanner.take_boundaries()] + [scanner.open_depth()])


def end_of_element(buf: bytes, start: int, stop: int) -> int | None:
    """Where an element starting at `start` ends (its comma or the array's ']'), scanning fresh, or None."""
    scanner, lo, width = ArrayScanner(1), start, 1 << 16
    while lo < stop:
        hi = min(stop, lo + width)
        scanner.feed(buf, lo, hi)
        bounds = scanner.take_boundaries()
        ends = [b for b, _ in bounds[:1]] + ([scanner.first_close] if scanner.first_close is not None else [])
        if ends:
            return min(ends)
        lo, width = hi, width * 2
    return None


def openers(raw: bytes) -> int:
    """How many '[' and '{' bytes: a cheap bound on the depth (fewer openers, no deeper nesting)."""
    return raw.count(b"[") + raw.count(b"{")
