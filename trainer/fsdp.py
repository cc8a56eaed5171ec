"""FSDP2 (`torch.distributed.fsdp.fully_shard`): weights, gradients and AdamW state sharded over ranks.

`train.parallel = "fsdp"` under torchrun shards each decoder block, then the root (embeddings, final
norm, head), instead of replicating the model with DDP. The loop is unchanged: the gradient of a
step is reduce-scattered and averaged over ranks as DDP's all-reduce is, so `step_scale` holds.

Checkpoints and model/ are written in exactly the single-process format, from full tensors gathered
to rank 0 (torch.distributed.checkpoint's full state dicts, offloaded to the CPU): a checkpoint
resumes under FSDP, DDP or one process alike. The optimizer state is re-keyed between parameter
names (what the full state dict uses) and the integer positions `Optimizer.state_dict()` uses; tied
weights are stored once under their first name, as safetensors' `save_model` does.

On CUDA the blocks compute in bf16 through FSDP's mixed-precision policy (parameters all-gathered
in bf16, gradients reduced in fp32), and the sharded parameters and their AdamW state stay fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.model import ModelError


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def shard_model(loss: nn.Module, compute: torch.dtype) -> None:
    """fully_shard every decoder block of `loss.lm`, then `loss` (trainer.loss.TargetLoss) itself.

    The root is the loss module, not the model: the loss runs the decoder and the head separately
    (the head only at target positions), and the root's parameters (embeddings, final norm, head,
    tied or not) are gathered for the whole of the root's forward and reduced after its backward.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = loss.lm
    if getattr(model, "is_loaded_in_4bit", False):
        raise ModelError(
            "train.parallel = 'fsdp' does not shard a 4-bit base: use parallel = 'ddp' with QLoRA"
        )
    layers = getattr(model.get_decoder(), "layers", None) if hasattr(model, "get_decoder") else None
    if not layers:
        raise ModelError(
            "train.parallel = 'fsdp' needs a model whose decoder has `layers`; use parallel = 'ddp'"
        )
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(loss, mp_policy=policy)


def _names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (a tied weight is one parameter under two names)."""
    return {id(p): name for name, p in reversed(list(model.named_parameters(remove_duplicate=False)))}


def aliases(model: nn.Module) -> dict[str, str]:
    """The other names of a tied weight -> the one stored, the alphabetically first, as safetensors'
    `save_model` keeps (so the files are the single-process ones)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {n: min(names) for names in groups.values() for n in names if n != min(names)}


def full_model_state(
    model: nn.Module, trainable_only: bool, tied_once: bool = True
) -> dict[str, torch.Tensor]:
    """The unsharded parameters on rank 0's CPU ({} on the other ranks); a collective: every rank calls it.

    `tied_once`: a tied weight under its stored name only (a checkpoint); else under every name, for
    `save_pretrained`, which drops the model's own tied names itself.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=True))
    if not state:
        return {}
    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    tied = aliases(model)
    out = {k: v.contiguous() for k, v in state.items() if k not in tied and (keep is None or k in keep)}
    if not tied_once:
        out.update({alias: out[name] for alias, name in tied.items() if name in out})
    return out


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The unsharded optimizer state keyed like `Optimizer.state_dict()` (rank 0; {} elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not named:
        return {}
    index = {name: i for i, name in enumerate(n for g in named["param_groups"] for n in g["params"])}
    return {
        "state": {index[name]: value for name, value in named["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]],
    }


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainable_only: bool,
) -> None:
    """Shard full tensors (every rank holds them, read from the checkpoint files) into the model and
    the optimizer. Raises RuntimeError when the names do not fit the model."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    if trainable_only:
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
    else:
        expected = set(model.state_dict()) - set(aliases(model))
    if set(tensors) != expected:
        raise RuntimeError(
            f"missing {sorted(expected - set(tensors))[:5]}, unexpected {sorted(set(tensors) - expected)[:5]}"
        )
    full = dict(tensors)
    if not trainable_only:
        full.update({alias: tensors[name] for alias, name in aliases(model).items()})
    set_model_state_dict(model, full, options=_options(strict=not trainable_only))
    first = _names(model)
    names = [first[id(p)] for g in optimizer.param_groups for p in g["params"]]
    named = {
        "state": {names[int(i)]: v for i, v in optimizer_state["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]} for g in optimizer_state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, named, options=_options())
