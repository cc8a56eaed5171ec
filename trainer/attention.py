"""Attention for packed rows without padding: per-segment SDPA (`VARLEN`) and FlexAttention (`FLEX`).

A block-diagonal mask keeps packed conversations apart but still computes every (query, key) pair
of the row and throws most away: for ~250-token conversations packed into 2048-token rows that is
8x the attention work. Here the micro-batch is one concatenated sequence and attention runs per
segment with SDPA's causal kernel, so the work is sum(len_i^2), as with flash-attn's varlen kernels.
Registered with transformers' AttentionInterface under `VARLEN`; the segment bounds reach it as the
`sftforge_segments` keyword, which transformers passes through the decoder layers.

On CUDA without flash-attn, `FLEX` runs the whole concatenated sequence through one compiled
FlexAttention kernel with a document mask (causal, and a query sees only keys of its own segment), which
skips the masked blocks: one kernel launch per layer instead of one per segment. Its block mask is
built once per batch (every layer sees the same segments). FlexAttention has no backward on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

VARLEN = "sftforge_varlen"
FLEX = "sftforge_flex"


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
    segs = sftforge_segments
    tiles = segs[0][0] == 0 and segs[-1][1] == query.shape[2] and all(
        a[1] == b[0] for a, b in zip(segs, segs[1:], strict=False)
    )
    if tiles and len(segs) > 1:
        # split, not slices: a slice's backward writes its gradient into a zeroed tensor of the whole
        # sequence (one per segment, then summed: ~10% of a small model's step), split's is one concatenation
        lengths = [e - s for s, e in segs]
        pieces = list(zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2),
                          strict=True))  # fmt: skip
    else:
        pieces = [(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]) for s, e in segs]
    outs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        for q, k, v in pieces
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


_cache: dict[str, Any] = {}


def _block_mask(segments: list[tuple[int, int]], device: torch.device) -> Any:
    """The document mask of one batch's segments (cached: every layer of a forward asks for the same)."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (tuple(segments), str(device))
    if _cache.get("mask_key") != key:
        lengths = torch.tensor([e - s for s, e in segments], device=device)
        doc = torch.repeat_interleave(torch.arange(len(segments), device=device), lengths)

        def same_segment_causal(b: Any, h: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return (doc[q] == doc[k]) & (q >= k)

        total = segments[-1][1]
        mask = create_block_mask(
            same_segment_causal, None, None, total, total, device=str(device), _compile=device.type == "cuda"
        )
        _cache.update(mask_key=key, mask=mask)
    return _cache["mask"]


def _flex_kernel(device: torch.device) -> Any:
    """flex_attention compiled once on CUDA (its fused kernel); eager elsewhere (the CPU: forward only)."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "kernel" not in _cache:
        _cache["kernel"] = torch.compile(flex_attention)
    return _cache["kernel"]


def flex_attention_packed(
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
    """query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D], None) under the document mask."""
    if sftforge_segments is None:  # generation, or a caller that did not pack
        return varlen_attention(module, query, key, value, attention_mask, scaling, dropout, None, **kwargs)
    out = _flex_kernel(query.device)(
        query, key, value, block_mask=_block_mask(sftforge_segments, query.device), scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `VARLEN` a valid `attn_implementation` (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    return VARLEN


def register_flex() -> str:
    """Make `FLEX` a valid `attn_implementation` (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(FLEX, flex_attention_packed)
    return FLEX


def flex_available() -> bool:
    """FlexAttention is in this torch (2.5+)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flash_attn_available() -> bool:
    """flash-attn (its varlen kernels, used by transformers' flash_attention_2) is installed."""
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None
