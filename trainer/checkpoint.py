"""Training checkpoints as data only: tensors in safetensors, everything else in JSON; loading never unpickles.

A checkpoint is a directory `train/checkpoints/step-NNNNNNNN/` holding
- `model.safetensors`: the model's state dict (tied weights once, as safetensors' `save_model` writes them);
  under LoRA only the trainable tensors (the adapters), the frozen base named by its fingerprint
  (`base_hash` in state.json, trainer.lora.base_fingerprint), so a resume onto another base is refused;
- `optimizer.safetensors`: the optimizer state's tensors, named `state.<param index>.<key>` (AdamW's
  exp_avg, exp_avg_sq, step) and `param_groups.<group index>.<key>` for a hyperparameter held as a tensor;
- `state.json`: the step, what the loop needs to resume (`resume`), the optimizer's param_groups and
  non-tensor state, and the python, numpy, torch (and cuda) RNG states.

A pickle can run code when it is loaded, so a planted or legacy `state.pt` is refused with an error that
names it, never read; so is a directory with a missing or damaged file. A checkpoint is written under a
temporary name and renamed, so a killed run leaves either a whole checkpoint or none. The data position
needs no more than the step: the order of every epoch is a function of (seed, epoch) and the rows per
step are fixed, so the loop stores rows_per_step to refuse a resume that would cut the data differently.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

PREFIX = "step-"
FORMAT, VERSION = "sftforge-checkpoint", 1
MODEL, OPTIMIZER, STATE = "model.safetensors", "optimizer.safetensors", "state.json"
FILES = (MODEL, OPTIMIZER, STATE)
_STEP_DIR = re.compile(rf"{PREFIX}(\d+)")
#: files that hold pickles (torch.save, pickle.dump): named in the refusal, never opened
_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"})


class CheckpointError(ValueError):
    """A checkpoint directory that is not a whole sftforge checkpoint; the message names the file and the fix."""


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int,
    base_hash: str | None = None,
    full_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep`.

    `extra` (JSON-able: ints, floats, strings, lists, dicts) comes back from `load_checkpoint`.
    With `base_hash` (a frozen base: LoRA) only the parameters that require grad are written.
    `full_state` gives the model tensors and the optimizer state dict gathered from a sharded model
    (trainer.fsdp), written in place of `model`'s and `optimizer`'s own.
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = ckpt_root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    opt_tensors, opt_rest = _split_optimizer(optimizer.state_dict() if full_state is None else full_state[1])
    if full_state is not None:
        save_file(full_state[0], str(tmp / MODEL))
    elif base_hash is None:
        save_model(model, str(tmp / MODEL))
    else:
        save_file(trainable_tensors(model), str(tmp / MODEL))
    save_file(opt_tensors, str(tmp / OPTIMIZER))
    state = {"format": FORMAT, "version": VERSION, "step": step, "resume": extra, "optimizer": opt_rest,
             "rng": _rng_state()}  # fmt: skip
    if base_hash is not None:
        state["model"] = {"params": "trainable", "base_hash": base_hash}
    (tmp / STATE).write_text(json.dumps(state, default=_not_json), encoding="utf-8")
    for name in FILES:
        _fsync(tmp / name)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _step_dirs(ckpt_root: Path) -> list[Path]:
    """Every `step-N` directory, oldest first (an interrupted write is a hidden temporary directory)."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoints in this module's form (all of FILES present), oldest first."""
    return [p for p in _step_dirs(ckpt_root) if all((p / name).is_file() for name in FILES)]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest `step-N` directory, whatever it holds: a resume loads it or stops on it with
    `load_checkpoint`'s error, rather than skip a legacy or planted one and silently start over."""
    dirs = _step_dirs(ckpt_root)
    return dirs[-1] if dirs else None


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by name (a LoRA checkpoint's model.safetensors)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    base_hash: str | None = None,
    sharded: bool = False,
) -> dict[str, Any]:
    """Restore model, optimizer and RNG from `path`; returns {"step": ..., **extra}.

    Reads safetensors and JSON only. Raises CheckpointError for a directory in any other form, and for
    one of the other kind (full weights vs. adapters on the base `base_hash`) or of another base.
    `sharded`: the model is FSDP-sharded (trainer.fsdp shards the full tensors into it).
    """
    path = Path(path)
    fix = _fix(path)
    _check_files(path, fix)
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path / STATE}: not valid JSON ({e}); {fix}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(
            f"{path / STATE}: not a sftforge checkpoint state (expected format {FORMAT!r}, version {VERSION}); {fix}"
        )
    opt_tensors = _read_tensors(path / OPTIMIZER, fix)
    try:
        opt_state = _join_optimizer(state["optimizer"], opt_tensors, optimizer)
        rng = _rng_from_json(state["rng"])
        step, extra = int(state["step"]), dict(state["resume"])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{path / STATE}: malformed checkpoint state ({type(e).__name__}: {e}); {fix}") from None
    _check_kind(path, state.get("model"), base_hash, fix)
    if sharded:
        from trainer.fsdp import load_full_state

        try:
            load_full_state(model, optimizer, _read_tensors(path / MODEL, fix), opt_state, base_hash is not None)
        except (RuntimeError, KeyError, ValueError, IndexError) as e:
            raise CheckpointError(f"{path}: does not fit this model and optimizer ({e}); {fix}") from None
    else:
        _load_unsharded(path, model, optimizer, opt_state, base_hash is not None, fix)
    try:
        _set_rng_state(rng)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path / STATE}: malformed RNG state ({e}); {fix}") from None
    return {"step": step, **extra}


def _load_unsharded(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, opt_state: dict[str, Any],
    trainable_only: bool, fix: str,
) -> None:
    try:
        if trainable_only:
            _load_trainable(model, _read_tensors(path / MODEL, fix))
        else:
            load_model(model, path / MODEL, strict=True)
    except SafetensorError as e:
        raise CheckpointError(f"{path / MODEL}: not a readable safetensors file ({e}); {fix}") from None
    except RuntimeError as e:
        raise CheckpointError(f"{path / MODEL}: does not fit this model ({e}); {fix}") from None
    try:
        optimizer.load_state_dict(opt_state)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path / OPTIMIZER}: does not fit this optimizer ({e}); {fix}") from None


def _check_kind(path: Path, saved: Any, base_hash: str | None, fix: str) -> None:
    """The checkpoint holds what this run trains: full weights, or adapters on the same frozen base."""
    saved_hash = saved.get("base_hash") if isinstance(saved, dict) else None
    if base_hash is None and saved_hash is None:
        return
    if base_hash is None:
        raise CheckpointError(
            f"{path}: holds LoRA adapters, but this run fine-tunes all weights (lora.enabled = false); {fix}"
        )
    if saved_hash is None:
        raise CheckpointError(
            f"{path}: holds full weights, but this run trains LoRA adapters (lora.enabled = true); {fix}"
        )
    if saved_hash != base_hash:
        raise CheckpointError(
            f"{path}: its adapters were trained on another base model (fingerprint {saved_hash}, this run's base "
            f"is {base_hash}): resume with the same model.path, dtype and lora settings; {fix}"
        )


def _load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a LoRA checkpoint's tensors into the model's trainable parameters (exactly those, same shapes)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if tensors.keys() != params.keys():
        missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
        raise RuntimeError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise RuntimeError(f"{name}: shape {tuple(tensors[name].shape)}, the model has {tuple(p.shape)}")
            p.copy_(tensors[name])


def _fix(path: Path) -> str:
    return f"move {path.name} out of {path.parent} to resume from an earlier checkpoint, or train without --resume"


def _check_files(path: Path, fix: str) -> None:
    missing = [name for name in FILES if not (path / name).is_file()]
    if not missing:
        return
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    pickles = [name for name in found if Path(name).suffix in _PICKLE_SUFFIXES]
    if pickles:
        why = f"refusing to load {', '.join(pickles)}, which could run code"
    else:
        why = f"found only {', '.join(found)}" if found else "the directory is empty or missing"
    raise CheckpointError(f"{path}: not a sftforge checkpoint (expected {', '.join(FILES)}); {why}; {fix}")


def _read_tensors(file: Path, fix: str) -> dict[str, torch.Tensor]:
    try:
        # cloned: the optimizer updates its state in place, and the file may be memory-mapped
        return {name: t.clone() for name, t in load_file(file).items()}
    except SafetensorError as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e}); {fix}") from None


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict -> (named tensors for safetensors, the rest for JSON)."""
    tensors: dict[str, torch.Tensor] = {}

    def split(prefix: str, entries: dict[str, Any]) -> dict[str, Any]:
        rest = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{key}"] = value.detach()
            else:
                rest[key] = value
        return rest

    state = {str(pid): split(f"state.{pid}", entry) for pid, entry in sd["state"].items()}
    groups = [split(f"param_groups.{i}", group) for i, group in enumerate(sd["param_groups"])]
    return tensors, {"state": state, "param_groups": groups}


def _join_optimizer(
    saved: dict[str, Any], tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The inverse of `_split_optimizer`: a state dict for `optimizer.load_state_dict`."""
    # the optimizer matches state to parameters by these integer indices (JSON made them strings)
    state = {int(pid): dict(entry) for pid, entry in saved["state"].items()}
    groups = [dict(group) for group in saved["param_groups"]]
    for name, t in tensors.items():
        kind, index, key = name.split(".", 2)
        if kind == "state":
            state.setdefault(int(index), {})[key] = t
        elif kind == "param_groups":
            groups[int(index)][key] = t
        else:
            raise ValueError(f"unexpected tensor {name!r} in {OPTIMIZER}")
    # JSON has no tuples: restore the ones the live optimizer holds (AdamW's betas)
    for group, live in zip(groups, optimizer.param_groups, strict=False):
        for key, value in group.items():
            if isinstance(value, list) and isinstance(live.get(key), tuple):
                group[key] = tuple(value)
    return {"state": state, "param_groups": groups}


def _rng_state() -> dict[str, Any]:
    version, mt, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss_next": gauss_next},
        "numpy": {"bit_generator": name, "key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},  # fmt: skip
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def _rng_from_json(saved: dict[str, Any]) -> dict[str, Any]:
    py, npy = saved["python"], saved["numpy"]
    gauss_next = py["gauss_next"]
    return {
        "python": (int(py["version"]), tuple(int(x) for x in py["state"]), None if gauss_next is None else float(gauss_next)),
        "numpy": (str(npy["bit_generator"]), np.asarray(npy["key"], dtype=np.uint32), int(npy["pos"]),
                  int(npy["has_gauss"]), float(npy["cached_gaussian"])),  # fmt: skip
        "torch": _unb64(saved["torch"]),
        "cuda": [_unb64(s) for s in saved["cuda"]] if "cuda" in saved else None,
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s, validate=True)), dtype=torch.uint8)


def _not_json(value: Any) -> Any:
    raise TypeError(f"a checkpoint's state.json cannot hold {type(value).__name__} {value!r}")


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
