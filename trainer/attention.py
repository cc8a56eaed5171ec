"""Segment-wise causal attention for packed rows where no varlen kernel exists (the CPU, CUDA without flash-attn).

A block-diagonal mask keeps packed conversations apart but still computes every (query, key) pair
of the row and throws most away: for ~250-token conversations packed into 2048-token rows that is
8x the attention work. Here the micro-batch is one concatenated sequence and attention runs per
segment with SDPA's causal kernel, so the work is sum(len_i^2), as with flash-attn's varlen kernels.
Registered with transformers' AttentionInterface under `VARLEN`; the segment bounds reach it as the
`sftforge_segments` keyword, which transformers passes through the decoder layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

VARLEN = "sftforge_varlen"


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sftforge_segments: list[tuple[int, int]] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D], None), causal within each segment."""
    if sftforge_segments is None:  # generation, or a caller that did not pack: plain causal SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
            is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa,
        )  # fmt: skip
        for s, e in sftforge_segments
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `VARLEN` a valid `attn_implementation` (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    return VARLEN
