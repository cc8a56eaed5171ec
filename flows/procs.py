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


def _server_cmd(port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a Prefect API server on 127.0.0.1:port (what Prefect's own
    ephemeral mode runs: uvicorn + Prefect's app, no UI), found without importing prefect."""
    import importlib.util

    # find prefect without importing it: its settings are read at import, and the caller sets
    # PREFECT_API_URL to this server before that
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "prefect is a dependency"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    return cmd, env


def _wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if proc.poll() is not None:
            raise ServerStartError(f"the local Prefect server exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"the local Prefect server on {url} was not healthy after {timeout_s:.0f} s; raise "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or start one (sftforge server start) "
                "and run again"
            )
        time.sleep(0.2)


def _timeout(timeout_s: float | None) -> float:
    return timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))


def _home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")


def _state_file() -> Path:
    return _home() / "sftforge-server.json"


def running_server() -> str | None:
    """The API URL of the background server `sftforge server start` left for this PREFECT_HOME, if it
    still answers; None otherwise."""
    import json

    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    url = state.get("url")
    return url if isinstance(url, str) and _healthy(url) else None


def start_background_server(timeout_s: float | None = None) -> tuple[str, int, bool]:
    """`sftforge server start`: a server that stays up between commands (it does not die with this
    one, on purpose), so every later command in this PREFECT_HOME starts in seconds. Returns
    (url, pid, started_now)."""
    import json

    if (url := running_server()) is not None:
        return url, int(json.loads(_state_file().read_text())["pid"]), False
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    cmd, env = _server_cmd(port)
    _home().mkdir(parents=True, exist_ok=True)
    with open(_home() / "sftforge-server.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    _wait_healthy(proc, url, _timeout(timeout_s))
    _state_file().write_text(json.dumps({"url": url, "pid": proc.pid, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return url, proc.pid, True


def stop_background_server() -> int | None:
    """`sftforge server stop`: stop the background server; returns its pid, or None when none ran."""
    import json
    import signal

    try:
        pid = int(json.loads(_state_file().read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    _state_file().unlink(missing_ok=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    return pid


@contextlib.contextmanager
def local_prefect_server(timeout_s: float | None = None, log: Callable[[str], None] | None = None,
                         while_starting: Callable[[str], None] | None = None) -> Iterator[str]:
    """Start a Prefect API server on 127.0.0.1 for this command and stop it after; yields its API URL.

    The same server Prefect's ephemeral mode would start (uvicorn + Prefect's app, no UI), but as our
    child with a parent-death signal, so it cannot outlive a killed `sftforge`. `while_starting(url)`
    runs while the server boots (the caller's heavy imports: seconds saved)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    cmd, env = _server_cmd(port)
    if log:
        log(f"starting a local Prefect server on {url}")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=parent_death_signal())
    try:
        if while_starting is not None:
            while_starting(url)
        _wait_healthy(proc, url, _timeout(timeout_s))
        yield url
    finally:
        _drain_prefect_workers()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
