"""Best-fit-decreasing packing: every item once, rows within capacity, deterministic, best fit."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.render.packing import best_fit_decreasing


def test_best_fit_literal() -> None:
    # Longest first: 7 opens row 0 (room 3); 5 opens row 1 (room 5); 4 -> row 1 (room 1); 3 -> row 0
    # (room 0); 2 fits nowhere, opens row 2 (room 8); 1 -> row 1, the tightest fit (room 0); 1 -> row 2.
    assert best_fit_decreasing([5, 7, 4, 3, 2, 1, 1], 10) == [[1, 3], [0, 2, 5], [4, 6]]


def test_equal_lengths_keep_index_order_and_exact_fill() -> None:
    assert best_fit_decreasing([2, 2, 2, 2, 2], 4) == [[0, 1], [2, 3], [4]]
    assert best_fit_decreasing([4, 4], 4) == [[0], [1]]


def test_too_long_item_is_an_error() -> None:
    with pytest.raises(ValueError, match="1..8"):
        best_fit_decreasing([3, 9], 8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=300), st.integers(64, 200))
def test_every_item_once_and_rows_within_capacity(lengths: list[int], capacity: int) -> None:
    rows = best_fit_decreasing(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows)
    assert rows == best_fit_decreasing(list(lengths), capacity)  # deterministic
    # First-fit-decreasing bound: no two rows could be merged into one
    loads = sorted(sum(lengths[i] for i in row) for row in rows)
    assert len(loads) < 2 or loads[0] + loads[1] > capacity


def test_packs_many_short_items_densely() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 900) for _ in range(20_000)]
    rows = best_fit_decreasing(lengths, 2048)
    assert sum(lengths) / (len(rows) * 2048) > 0.99


def _reference_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing by exhaustive search: the row with the least room that fits, and among rows
    with that room the one that got it last (the order the shards were always written in)."""
    rows: list[list[int]] = []
    room: list[int] = []
    since: list[int] = []  # when each row got its current room
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for t, i in enumerate(order):
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i] and room[r] > 0]
        if fits:
            r = min(fits, key=lambda r: (room[r], -since[r]))
        else:
            r = len(rows)
            rows.append([])
            room.append(capacity)
            since.append(t)
        rows[r].append(i)
        room[r] -= lengths[i]
        since[r] = t
    return rows


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64).flatmap(lambda cap: st.tuples(st.lists(st.integers(1, cap), max_size=80), st.just(cap))))
def test_rows_are_exactly_best_fit_decreasing(case: tuple[list[int], int]) -> None:
    lengths, capacity = case
    assert best_fit_decreasing(lengths, capacity) == _reference_bfd(lengths, capacity)
