"""Training checkpoints: model, optimizer, step (which fixes the schedule and data position), RNG.

A checkpoint is a directory `train/checkpoints/step-NNNNNNNN/` holding `state.pt`; it is written
under a temporary name and renamed, so a killed run leaves either a whole checkpoint or none.
The data position needs no more than the step: the order of every epoch is a function of
(seed, epoch) and the rows per step are fixed, so `plan` is stored to refuse a resume that would
cut the data differently.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step-"


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep`."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = ckpt_root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state()}
    state.update(extra)
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of an interrupted write are skipped)."""
    if not ckpt_root.is_dir():
        return []
    done = [p for p in ckpt_root.glob(f"{PREFIX}*") if (p / "state.pt").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG from `path`; returns the whole state (step, plan, ...)."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return state
