"""Best-fit-decreasing packing of whole conversations into rows of a fixed capacity.

Items are placed longest first (ties broken by their index, so the result depends only on the input);
each goes into the open row with the least room that still fits it, or opens a new row. No item is
split. Finding that row is a query on a segment tree over "room left" values: O(log capacity) per item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class _RoomTree:
    """Counts of open rows per room-left value, answering "smallest room >= need" in O(log C)."""

    def __init__(self, capacity: int) -> None:
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.count = [0] * (2 * self.size)
        self.rows: list[list[int]] = [[] for _ in range(capacity + 1)]

    def add(self, room: int, row: int) -> None:
        self.rows[room].append(row)
        i = room + self.size
        while i:
            self.count[i] += 1
            i //= 2

    def take(self, need: int) -> tuple[int, int] | None:
        """Remove and return (room, row) of the row with the smallest room >= need, if any."""
        count, size = self.count, self.size
        # Walk up from the leaf `need` to find a subtree right of it holding a row, then down its left side.
        i = need + size
        if not count[i]:
            while True:
                if i == 1:
                    return None
                if i % 2 == 0 and count[i + 1]:
                    i += 1
                    break
                i //= 2
            while i < size:
                i = 2 * i if count[2 * i] else 2 * i + 1
        room = i - size
        row = self.rows[room].pop()
        while i:
            count[i] -= 1
            i //= 2
        return room, row


def best_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Rows of item indices; every item appears once, each row's total length <= capacity.

    Raises ValueError if an item is longer than the capacity (the caller drops or truncates first)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"items must be 1..{capacity} long to be packed; got {lengths.min()}..{lengths.max()}")
    # Stable sort on -length: longest first, equal lengths in index order.
    order = np.argsort(-lengths, kind="stable")
    tree = _RoomTree(capacity)
    rows: list[list[int]] = []
    for idx in order.tolist():
        need = int(lengths[idx])
        found = tree.take(need)
        if found is None:
            row, room = len(rows), capacity
            rows.append([])
        else:
            room, row = found
        rows[row].append(idx)
        if room - need > 0:
            tree.add(room - need, row)
    return rows
