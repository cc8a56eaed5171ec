"""Which [train] values a run uses: the fine-tuning defaults for a pre-trained model, and the warm-up.

A config that names a pre-trained model (`model.path`) gets `schemas.config_train.FINETUNE_DEFAULTS`
for every key it leaves unset, found with pydantic's `model_fields_set` (what the TOML or a --set
gave); the from-scratch demo keeps the [train] defaults it was tuned with.
"""

from __future__ import annotations

import math
from typing import Any

from schemas.config import RunConfig
from schemas.config_train import FINETUNE_DEFAULTS, TrainConfig


def finetune_defaults(cfg: RunConfig) -> tuple[RunConfig, dict[str, Any]]:
    """`cfg` with the fine-tuning defaults applied (only with model.path), and what was applied.

    A warm-up given in steps counts as set, as does max_steps for epochs. Applying twice changes
    nothing: model_copy adds the applied keys to model_fields_set.
    """
    if cfg.model.path is None:
        return cfg, {}
    train = cfg.train
    given = train.model_fields_set
    lora = getattr(cfg, "lora", None)
    applied: dict[str, Any] = {}
    if "lr" not in given:
        applied["lr"] = FINETUNE_DEFAULTS["lr"]["lora" if lora is not None and lora.enabled else "full"]
    if not given & {"warmup_ratio", "warmup_steps"}:
        applied["warmup_ratio"] = FINETUNE_DEFAULTS["warmup_ratio"]
    if not given & {"epochs", "max_steps"}:
        applied["epochs"] = FINETUNE_DEFAULTS["epochs"]
    if not applied:
        return cfg, applied
    return cfg.model_copy(update={"train": train.model_copy(update=applied)}), applied


def warmup_of(train: TrainConfig, total_steps: int) -> int:
    """Warm-up steps: warmup_ratio x total steps (rounded up) when set, else warmup_steps."""
    if train.warmup_ratio is not None:
        return math.ceil(train.warmup_ratio * total_steps)
    return train.warmup_steps
