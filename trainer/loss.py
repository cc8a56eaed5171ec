"""The SFT loss: cross-entropy on target tokens only, with the one label shift of the project.

`loss_mask[t] = 1` means "token t is a target, predicted from tokens < t" (docs/CONTRACTS.md). The shift
happens here and nowhere else: the hidden state at t-1 predicts the token at t. Only target
positions go through the output head, which for a small vocabulary-heavy model is most of the
compute that padding-free packing leaves.

With a large vocabulary even the target positions' logits are big (16k targets x 150k tokens is
9.6 GB in fp32), so the head and the cross-entropy run over chunks of target positions, each chunk's
logits recomputed in backward (activation checkpointing of the head alone): only one chunk's logits
exist at a time. `chunk_tokens` (auto: 2^26 / vocab) decides the chunk; below it nothing changes.
A head that does not train (LoRA) takes `FrozenHeadLoss` instead: its gradient into the hidden states
is computed in forward, chunk by chunk, so logits are neither kept nor recomputed.

Normalisation is by the target tokens of the whole optimizer step (every micro-batch of every
rank), not a mean of per-micro-batch means: `step_scale` gives the factor each micro-batch's *sum*
is multiplied by before backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Causal LMs whose logits are exactly `lm_head(last_hidden_state)` (no soft-capping or scaling), so
#: the head can be applied to the target positions alone.
_HEAD_ONLY_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
#: logits elements (chunk tokens x vocab) computed at once with `chunk_tokens = 0`: 256 MB in fp32
AUTO_CHUNK_ELEMENTS = 1 << 26


def chunk_size(chunk_tokens: int, vocab: int) -> int:
    """Target tokens per head-and-loss chunk: `chunk_tokens`, or (0) as many as AUTO_CHUNK_ELEMENTS allows."""
    return chunk_tokens if chunk_tokens > 0 else max(1, AUTO_CHUNK_ELEMENTS // max(1, vocab))


def _head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def chunked_head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-target cross-entropy of `head(hidden)` [N, V], never holding more than `chunk` rows of logits.

    Up to `chunk` targets this is the plain computation; beyond, each chunk runs under non-reentrant
    checkpointing, which keeps only its inputs and recomputes the logits in backward.
    """
    n = hidden.shape[0]
    if n <= chunk:
        return _head_loss(head, hidden, targets)
    parts = [
        checkpoint(_head_loss, head, hidden[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
        if torch.is_grad_enabled()
        else _head_loss(head, hidden[i : i + chunk], targets[i : i + chunk])
        for i in range(0, n, chunk)
    ]
    return torch.cat(parts)


#: rows of logits a frozen head computes at once (FrozenHeadLoss): chunk x vocab fp32 stays near the cache
FROZEN_HEAD_CHUNK_ELEMENTS = 1 << 21
#: ... but never fewer rows than this: each chunk reads the whole head weight twice, which for a
#: 150k vocabulary at 13 rows a chunk would cost far more than the logits it saves
FROZEN_HEAD_MIN_ROWS = 256


class FrozenHeadLoss(torch.autograd.Function):
    """Per-target cross-entropy through an output head that does not train (LoRA), in one pass per chunk.

    The gradient a target's loss sends into its hidden state is `(softmax - onehot) @ W`, and the
    upstream gradient only scales it per target, so it is computed in forward, chunk by chunk, while the
    chunk's logits are still in cache: the logits turn into probabilities in place and go straight into
    the matmul. What is kept for backward is that [N, hidden] gradient, never [N, vocab] logits; nothing
    is recomputed (chunked_head_loss recomputes each chunk's logits in backward), and the element-wise
    passes of log_softmax, nll and their backward (~10% of a small model's step) are gone.
    `head_loss` takes it only with gradients on (outside them, and under torch.compile, the plain
    loss). Equal to `_head_loss` within float rounding (tests).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:  # fmt: skip
        n = hidden.shape[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for i in range(0, n, chunk):
            h, t = hidden[i : i + chunk], targets[i : i + chunk]
            logits = (torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=1)
            losses[i : i + chunk] = lse - logits.gather(1, t[:, None]).squeeze(1)
            if grad_hidden is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                torch.mm(probs.to(weight.dtype), weight, out=grad_hidden[i : i + chunk])
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad[:, None].to(grad_hidden.dtype), None, None, None, None


def frozen_head_ok(head: nn.Module, hidden: torch.Tensor) -> bool:
    """FrozenHeadLoss applies: a plain linear head whose weight and bias do not train, gradients on,
    no autocast (whose casts it would not repeat), one dtype."""
    if type(head) is not nn.Linear or head.weight.requires_grad or not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling():  # its loop over a varying number of targets would recompile
        return False
    if head.bias is not None and head.bias.requires_grad:
        return False
    return hidden.dtype == head.weight.dtype and not torch.is_autocast_enabled(hidden.device.type)


def head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-target cross-entropy of head(hidden): FrozenHeadLoss when the head is frozen, else chunked_head_loss."""
    if frozen_head_ok(head, hidden):
        rows = max(1, min(chunk, max(FROZEN_HEAD_MIN_ROWS, FROZEN_HEAD_CHUNK_ELEMENTS // max(1, head.weight.shape[0]))))
        return FrozenHeadLoss.apply(hidden, head.weight, head.bias, targets, rows)
    return chunked_head_loss(head, hidden, targets, chunk)


class TargetLoss(nn.Module):
    """Wraps a causal LM; forward returns the per-target-token cross-entropy (float32, unreduced).

    Wrapping the whole computation in one module lets DistributedDataParallel see one forward.
    Returns `(losses [N], batch_row [N], position [N])`, where position is the target token's index.
    """

    def __init__(self, lm: nn.Module, chunk_tokens: int = 0) -> None:
        super().__init__()
        self.lm = lm
        self.head_only = getattr(getattr(lm, "config", None), "model_type", None) in _HEAD_ONLY_TYPES
        vocab = getattr(getattr(lm, "config", None), "vocab_size", None) or 1
        self.chunk = chunk_size(chunk_tokens, vocab)

    def forward(
        self,
        input_ids: torch.Tensor,
        loss_mask: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        segments: list[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the shift: target t (mask[:, t], ids[:, t]) is predicted from the output at t-1
        tmask = loss_mask[:, 1:]
        rows, cols = tmask.nonzero(as_tuple=True)
        targets = input_ids[:, 1:][rows, cols]
        kw = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
        if segments is not None:  # segment bounds for trainer.attention's varlen attention
            kw["sftforge_segments"] = segments
        if self.head_only:
            hidden = self.lm.get_decoder()(input_ids=input_ids, **kw).last_hidden_state
            head = self.lm.get_output_embeddings()
            losses = head_loss(head, hidden[:, :-1][rows, cols], targets, self.chunk)
        else:
            logits = self.lm(input_ids=input_ids, **kw).logits[:, :-1][rows, cols]
            losses = F.cross_entropy(logits.float(), targets, reduction="none")
        return losses, rows, cols + 1


def step_scale(global_targets: int, world_size: int) -> float:
    """Factor for a micro-batch's summed loss so the step's gradient is sum(loss) / all target tokens.

    DDP averages gradients over ranks, hence the world_size back in the numerator.
    """
    return world_size / max(1, global_targets)

