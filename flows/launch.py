"""Start the trainer: in this process, or as `torchrun` workers whose output streams to a log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from flows.procs import parent_death_signal


class TrainingFailed(RuntimeError):
    """The trainer subprocess exited non-zero; the message carries its last lines."""


def torchrun_command(run_dir: Path, config: str | Path, overrides: list[str], nproc: int) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m trainer RUN_DIR ...`.

    The module form of torchrun uses this interpreter, so the venv is the one the flow runs in.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "trainer", str(run_dir), "--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def stream_subprocess(cmd: list[str], log: Callable[[str], None], cwd: str | Path | None = None) -> None:
    """Run `cmd`, passing each output line (stdout and stderr merged) to `log` as it comes.

    Raises TrainingFailed with the tail of the output when the command fails.
    """
    tail: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=cwd, env=env,
        preexec_fn=parent_death_signal(),  # torchrun (and so its workers) end with the flow's process
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            log(line)
            tail = (tail + [line])[-20:]
        rc = proc.wait()
    if rc != 0:
        raise TrainingFailed(f"trainer exited with status {rc}: {' '.join(cmd)}\n" + "\n".join(tail))
