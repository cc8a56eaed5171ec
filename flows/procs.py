"""Child processes that die with their parent: the local Prefect server and the torchrun trainer.

A `kill -9` of `sftforge` runs no cleanup code, so a child started the ordinary way outlives it: a
temporary Prefect server then blocks the next run, and a torchrun trainer races a later `--resume`.
Every child sftforge starts asks the kernel for a parent-death signal (Linux `PR_SET_PDEATHSIG`) in
`pipeline.core.procpool.parent_death_signal`, so it is signalled the moment its parent is gone, however the parent ended.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.core.procpool import parent_death_signal


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process before their server goes away (else
    Prefect prints "Error logging to API" at exit)."""
    if "prefect" not in sys.modules:
        return
    try:
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=15, at_exit=False)
    except Exception:  # noqa: BLE001 - best effort: the run itself is over
        pass


class ServerStartError(RuntimeError):
    """The local Prefect server did not become healthy."""


@contextlib.contextmanager
def local_prefect_server(timeout_s: float | None = None, log: Callable[[str], None] | None = None) -> Iterator[str]:
    """Start a Prefect API server on 127.0.0.1 for this command and stop it after; yields its API URL.

    The same server Prefect's ephemeral mode would start (uvicorn + Prefect's app, no UI), but as our
    child with a parent-death signal, so it cannot outlive a killed `sftforge`."""
    import importlib.util

    # find prefect without importing it: its settings are read at import, and the caller sets
    # PREFECT_API_URL to this server before that
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "prefect is a dependency"
    timeout_s = timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    if log:
        log(f"starting a local Prefect server on {url}")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=parent_death_signal())
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if proc.poll() is not None:
                raise ServerStartError(f"the local Prefect server exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the local Prefect server on {url} was not healthy after {timeout_s:.0f} s; raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or start one (prefect server start) "
                    "and export PREFECT_API_URL"
                )
            time.sleep(0.2)
        yield url
    finally:
        _drain_prefect_workers()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
