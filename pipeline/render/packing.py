"""Best-fit-decreasing packing of whole conversations into rows of a fixed capacity.

Items are placed longest first (ties broken by their index, so the result depends only on the input);
each goes into the open row with the least room that still fits it, or opens a new row. No item is
split. Finding that row: open rows are kept in a stack per "room left" value, and one Python integer
holds a bit per non-empty stack, so "the smallest room >= need" is a shift and a lowest-set-bit, done
in C on a capacity-bit integer (among rows with equal room, the last one that got that room is used).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def best_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Rows of item indices; every item appears once, each row's total length <= capacity.

    Raises ValueError if an item is longer than the capacity (the caller drops or truncates first)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(
            f"items must be 1..{capacity} long to be packed; got {lengths.min()}..{lengths.max()}"
        )
    # Stable sort on -length: longest first, equal lengths in index order.
    order = np.argsort(-lengths, kind="stable")
    need_of = lengths.tolist()
    stacks: list[list[int]] = [[] for _ in range(capacity + 1)]  # room left -> open rows with that room
    present = 0  # bit r set iff stacks[r] holds a row
    rows: list[list[int]] = []
    for idx in order.tolist():
        need = need_of[idx]
        fits = present >> need
        if fits:
            room = need + (fits & -fits).bit_length() - 1  # the smallest room >= need
            stack = stacks[room]
            row = stack.pop()
            if not stack:
                present ^= 1 << room
        else:
            row, room = len(rows), capacity
            rows.append([])
        rows[row].append(idx)
        left = room - need
        if left > 0:
            stack = stacks[left]
            if not stack:
                present |= 1 << left
            stack.append(row)
    return rows
