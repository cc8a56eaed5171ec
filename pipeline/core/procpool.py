"""Map a function over tasks in spawned worker processes, or in this process when that is not possible.

Spawned, not forked: polars' thread pool does not survive fork. A daemonic process (a Dask or
multiprocessing worker) may not start children, so there the tasks run here, one after another.
Workers, like every child sftforge starts, end when their parent does (`parent_death_signal`).
"""

from __future__ import annotations

import contextlib
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


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (shown as the cause of the re-raised one)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def _sendable(e: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as its text
        return RuntimeError(f"{type(e).__name__}: {e}")


def _actor_main(conn: Any, factory: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """A worker of `Actors`: build the object, then run the parent's method calls on it until told to stop."""
    import traceback

    die_with_parent()
    try:
        obj = factory(*args)
        conn.send(("ok", None))
        while (msg := conn.recv()) is not None:
            method, margs = msg
            try:
                conn.send(("ok", getattr(obj, method)(*margs)))
            except BaseException as e:  # noqa: BLE001 - handed to the parent, which re-raises it
                conn.send(("error", (_sendable(e), traceback.format_exc())))
    except BaseException as e:  # noqa: BLE001
        with contextlib.suppress(OSError, EOFError):
            conn.send(("error", (_sendable(e), traceback.format_exc())))
    finally:
        conn.close()


class Actors:
    """Objects that keep state between calls, one per worker process: `factory(*args)` for each
    `args` of `specs`, built in its own spawned process when `workers` > 1 (else all here). The parent
    calls a method on every object at once (`call`) and gets their results in order; an exception in
    a worker is re-raised here with its type, the worker's traceback as its cause. The workers start
    (import, build their objects) while the parent goes on after the constructor; the first call waits.

    For work done in phases that need something only the parent can compute between them (the encode
    stage renders its chunks, the parent trains the tokenizer on a sample of the texts, the chunks then
    encode what they rendered), where `pool_map` would lose each worker's state between phases.
    """

    def __init__(self, factory: Callable[..., Any], specs: Sequence[tuple[Any, ...]], workers: int,
                 what: str = "tasks") -> None:
        self.what = what
        self._local: list[Any] | None = None
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        if workers <= 1 or len(specs) <= 1 or multiprocessing.current_process().daemon:
            self._local = [factory(*a) for a in specs]
            return
        ctx = multiprocessing.get_context("spawn")
        try:
            for a in specs:
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_actor_main, args=(child, factory, a), daemon=True)
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
        except BaseException:
            self.close(abort=True)
            raise
        #: the workers build their objects (and import) while the parent goes on: the first call waits
        self._started = False

    def _gather(self, progress: Any) -> list[Any]:
        out: list[Any] = []
        failure: tuple[BaseException, str] | None = None
        for i, (p, conn) in enumerate(zip(self._procs, self._conns, strict=True)):
            try:
                status, value = conn.recv()
            except (EOFError, OSError):
                p.join(timeout=5)
                status, value = "error", (RuntimeError(
                    f"{self.what}: worker process {i} (pid {p.pid}) ended with exit code {p.exitcode} "
                    "before answering (killed for memory?)"), "")
            if status == "error" and failure is None:
                failure = value
            out.append(value if status == "ok" else None)
            if progress is not None:
                progress.update()
        if failure is not None:
            exc, tb = failure
            raise exc from (_RemoteTraceback(tb) if tb else None)
        return out

    @property
    def size(self) -> int:
        """How many objects there are."""
        return len(self._local) if self._local is not None else len(self._conns)

    def call(self, method: str, args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        """`getattr(obj, method)(*args[i])` on object i, all at once; the results in order."""
        from pipeline.core.progress import Progress

        args = list(args) if args is not None else [()] * self.size
        with Progress(f"{self.what}: {method}", total=self.size, unit="tasks") as progress:
            if self._local is not None:
                out = []
                for obj, a in zip(self._local, args, strict=True):
                    out.append(getattr(obj, method)(*a))
                    progress.update()
                return out
            if not self._started:
                self._gather(None)
                self._started = True
            for conn, a in zip(self._conns, args, strict=True):
                conn.send((method, a))
            return self._gather(progress)

    def close(self, abort: bool = False) -> None:
        """Stop the workers: let them end after the call they are in (a stuck one is terminated after
        10 s), or at once with `abort` (the parent is failing: their work is not wanted)."""
        for conn in self._conns:
            with contextlib.suppress(OSError, EOFError):
                conn.send(None)
        for p in self._procs:
            if not abort:
                p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._local = [], [], None

    def __enter__(self) -> Actors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(abort=exc[0] is not None)
