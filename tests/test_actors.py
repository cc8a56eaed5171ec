"""pipeline.core.procpool.Actors: objects that keep state between calls, one per worker process."""

from __future__ import annotations

import os

import pytest

from pipeline.core.procpool import Actors


class Tally:
    """Keeps a running total between calls, and can fail or die on request."""

    def __init__(self, start: int, fail_at_init: bool = False) -> None:
        if fail_at_init:
            raise ValueError(f"cannot start at {start}")
        self.total = start

    def add(self, n: int) -> tuple[int, int]:
        self.total += n
        return self.total, os.getpid()

    def fail(self, why: str) -> None:
        raise KeyError(why)

    def die(self) -> None:
        os._exit(3)


@pytest.mark.parametrize("workers", [1, 3])
def test_each_object_keeps_its_state_between_calls_and_answers_in_order(workers):
    with Actors(Tally, [(0,), (100,), (1000,)], workers, what="tally") as actors:
        first = actors.call("add", [(1,), (2,), (3,)])
        second = actors.call("add", [(10,), (10,), (10,)])
    assert [t for t, _ in first] == [1, 102, 1003]
    assert [t for t, _ in second] == [11, 112, 1013]
    pids = [p for _, p in first]
    assert [p for _, p in second] == pids  # the same object answered both calls
    if workers > 1:
        assert len(set(pids)) == 3 and os.getpid() not in pids
    else:
        assert set(pids) == {os.getpid()}


@pytest.mark.parametrize("workers", [1, 2])
def test_an_exception_in_a_worker_is_raised_here_with_its_type(workers):
    with Actors(Tally, [(0,), (0,)], workers) as actors, pytest.raises(KeyError, match="the reason"):
        actors.call("fail", [("the reason",), ("the reason",)])
    with pytest.raises(ValueError, match="cannot start at 7"), Actors(Tally, [(0,), (7, True)], workers) as actors:
        actors.call("add", [(1,), (1,)])  # a worker builds its object while the parent goes on


def test_a_worker_that_dies_is_an_error_naming_it():
    with Actors(Tally, [(0,), (0,)], 2, what="tally") as actors, \
            pytest.raises(RuntimeError, match=r"tally: worker process \d .* exit code 3"):
        actors.call("die")
