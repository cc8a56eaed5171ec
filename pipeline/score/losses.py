"""Reference-model losses, batched and packed like training.

Every sequence (a conversation's prompted and alone forms, pipeline.score.reference) is a segment of
one concatenated row per forward, up to `batch_tokens` tokens, with the trainer's varlen attention
(trainer.attention: causal within each segment, no padding) and its head-only loss (trainer.loss:
cross-entropy on target positions only, with the project's one label shift). The sums per segment
come from the trainer's own `segment_losses`, so a score is the loss the trainer would report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def load_reference(model_dir: Path, device: str = "auto") -> tuple[Any, Any]:
    """(TargetLoss module in eval mode, torch device) for the reference model, with varlen attention."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:  # pragma: no cover - torch and transformers are dependencies
        raise RuntimeError("reference scoring needs torch and transformers: pip install torch transformers") from e
    from trainer.attention import register
    from trainer.loss import TargetLoss

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("select.score_device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=register())
    model.to(dev).eval()
    return TargetLoss(model).eval(), dev


def batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into forwards of at most `batch_tokens` tokens (a longer sequence alone),
    longest first so similar lengths share a forward."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        if cur and used + lengths[i] > batch_tokens:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        out.append(cur)
    return out


def sequence_losses(
    module: Any, device: Any, seqs: Sequence[tuple[np.ndarray, np.ndarray]], batch_tokens: int,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, int]]:
    """(loss sum, target count) of each (ids, target mask) sequence, in order."""
    import torch

    from trainer.data import Row, collate
    from trainer.fit import segment_losses

    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    lengths = [len(s[0]) for s in seqs]
    with torch.no_grad():
        for group in batches(lengths, batch_tokens):
            rows = [
                Row(np.asarray(seqs[i][0], dtype=np.int64), np.asarray(seqs[i][1], dtype=bool),
                    np.array([lengths[i]], dtype=np.int64), [str(i)])
                for i in group if lengths[i] > 0
            ]  # fmt: skip
            if rows:
                for key, (s, c) in segment_losses(module, collate(rows, 0, flat=True), device).items():
                    out[int(key)] = (s, int(c))
            if progress is not None:
                progress(len(group))
    return out


def derive(prompted: tuple[float, int], alone: tuple[float, int]) -> dict[str, float | int | None]:
    """Mean losses, perplexity (of the response given its prompt) and IFD = loss given the prompt /
    loss alone, over the same target tokens."""
    (sp, cp), (sa, ca) = prompted, alone
    if cp == 0 or ca == 0:
        return {"ref_loss": None, "ref_loss_alone": None, "ref_ppl": None, "ifd": None, "ref_targets": cp}
    lp, la = sp / cp, sa / ca
    return {"ref_loss": lp, "ref_loss_alone": la, "ref_ppl": math.exp(min(lp, 50.0)),
            "ifd": lp / la if la > 0 else None, "ref_targets": cp}  # fmt: skip
