"""Map a function over tasks in spawned worker processes, or in this process when that is not possible.

Spawned, not forked: polars' thread pool does not survive fork. A daemonic process (a Dask or
multiprocessing worker) may not start children, so there the tasks run here, one after another.
Workers, like every child sftforge starts, end when their parent does (`parent_death_signal`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for Popen: the child gets `sig` when the process that started it ends.

    The signal is tied to the starting thread, so children are started from the main thread (or a
    thread that lives as long as they do). Where prctl is missing (not Linux) it does nothing."""
    parent = os.getpid()

    def preexec() -> None:
        _set_pdeathsig(sig, parent)

    return preexec


def _set_pdeathsig(sig: int, parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def die_with_parent() -> None:
    """In a child (a pool worker, which we do not Popen ourselves): SIGTERM when the parent ends."""
    _set_pdeathsig(signal.SIGTERM, os.getppid())


def pool_map(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int, what: str | None = None) -> list[Any]:
    """[fn(t) for t in tasks], in order, over up to `workers` processes; `what` names the work in
    progress lines (pipeline.core.progress)."""
    from pipeline.core.progress import Progress

    with Progress(what or getattr(fn, "__qualname__", "tasks"), total=len(tasks), unit="tasks") as progress:
        if workers <= 1 or len(tasks) <= 1 or multiprocessing.current_process().daemon:
            out = []
            for t in tasks:
                out.append(fn(t))
                progress.update()
            return out
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                                 initializer=die_with_parent) as ex:
            out = []
            for r in ex.map(fn, tasks):
                out.append(r)
                progress.update()
            return out
