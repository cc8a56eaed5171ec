"""Map a function over tasks in spawned worker processes, or in this process when that is not possible.

Spawned, not forked: polars' thread pool does not survive fork. A daemonic process (a Dask or
multiprocessing worker) may not start children, so there the tasks run here, one after another.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def pool_map(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int) -> list[Any]:
    """[fn(t) for t in tasks], in order, over up to `workers` processes."""
    if workers <= 1 or len(tasks) <= 1 or multiprocessing.current_process().daemon:
        return [fn(t) for t in tasks]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as ex:
        return list(ex.map(fn, tasks))
