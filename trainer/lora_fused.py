"""One autograd function per LoRA linear: y = x W^T + b + s (drop(x) A^T) B^T, with a hand-written backward.

peft's `lora.Linear.forward` computes the same thing as four modules and two element-wise passes
over the output (`result + lora_B(lora_A(dropout(x))) * scaling`), and autograd then adds the base's
and the adapter's input gradients in one more pass. Here the adapter's product is accumulated into the
base output in place (`addmm_`), and in backward the adapter's input gradient into the base's
(`dx = g W + s (g B) A`): the same six small matmuls, none of the element-wise passes, one autograd
node. A frozen base (LoRA) gets no weight gradient: `ctx.needs_input_grad` skips it, as autograd
would. Same approach as Unsloth's fused LoRA kernels, in plain PyTorch.

`fuse(peft_model)` swaps the forward of every peft `lora.Linear` for `fused_forward`, which takes this
path only in the plain case (one active vanilla adapter, unmerged, an `nn.Linear` base, every tensor of
one dtype, no autocast) and otherwise calls peft's own forward, so DoRA, QLoRA's 4-bit layers, mixed
adapter batches, merging and bf16 autocast behave exactly as peft defines them. tests/test_lora_fused.py
checks outputs and gradients equal peft's. In practice the fused path is the fp32 one (the CPU, or
`train.dtype = "float32"`): on CUDA the default bf16 autocast goes through peft.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, xd: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:  # fmt: skip
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xd2 = None if xd is None else xd.reshape(-1, shape[-1])
        u = (x2 if xd2 is None else xd2) @ a.t()  # [N, r]
        y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        y.addmm_(u, b.t(), alpha=scale)
        ctx.save_for_backward(x2, xd2, weight, a, b, u)
        ctx.scale, ctx.shape, ctx.has_bias = scale, shape, bias is not None
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, xd2, weight, a, b, u = ctx.saved_tensors
        s = ctx.scale
        g = grad.reshape(-1, grad.shape[-1])
        v = g @ b  # [N, r]: the gradient at the adapter's bottleneck, before the scale
        need_x, need_xd, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        dx = dxd = dw = dbias = da = db = None
        if need_x:
            dx = g @ weight
            if xd2 is None:
                dx.addmm_(v, a, alpha=s)
            dx = dx.reshape(ctx.shape)
        if need_xd and xd2 is not None:
            dxd = (v @ a).mul_(s).reshape(ctx.shape)
        if need_w:
            dw = g.t() @ x2
        if need_bias and ctx.has_bias:
            dbias = g.sum(0)
        if need_a:
            da = (v.t() @ (x2 if xd2 is None else xd2)).mul_(s)
        if need_b:
            db = (g.t() @ u).mul_(s)
        return dx, dxd, dw, dbias, da, db, None


def _plain(module: nn.Module, x: torch.Tensor) -> str | None:
    """The adapter name when `module` can take the fused path for input `x`, else None."""
    if module.disable_adapters or module.merged or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    base = module.base_layer
    if (
        name not in module.lora_A
        or name in getattr(module, "lora_variant", {})
        or type(base) is not nn.Linear
    ):
        return None
    if getattr(module, "use_dora", {}).get(name) or name in getattr(module, "lora_magnitude_vector", {}):
        return None  # DoRA, also in peft releases from before its variants
    if getattr(module, "lora_bias", {}).get(name) or getattr(module, "fan_in_fan_out", False):
        return None
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    if not (x.dtype == base.weight.dtype == a.dtype == b.dtype) or torch.is_autocast_enabled(x.device.type):
        return None
    if any(type(t) is not torch.Tensor and type(t) is not nn.Parameter for t in (base.weight, a, b)):
        return None  # tensor subclasses (a DTensor, a quantized weight): peft's path
    return name


def fused_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's lora.Linear.forward, through `_LoraLinear` where it is the plain case (see the module doc)."""
    name = None if args or kwargs else _plain(self, x)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    drop = self.lora_dropout[name]
    xd = drop(x) if isinstance(drop, nn.Dropout) and drop.p > 0 and drop.training else None
    base = self.base_layer
    return _LoraLinear.apply(x, xd, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                             float(self.scaling[name]))  # fmt: skip


def fuse(model: nn.Module) -> int:
    """Route every peft lora.Linear of `model` through `fused_forward`; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    n = 0
    for m in model.modules():
        if type(m) is LoraLinear:
            m.forward = types.MethodType(fused_forward, m)
            n += 1
    return n
