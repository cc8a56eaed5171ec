"""Configuration of deduplication ([dedup]) and quality filtering ([quality])."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DedupConfig(BaseModel):
    """Exact and near-duplicate removal (filled in by the dedup stage)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class QualityConfig(BaseModel):
    """Quality filters (filled in by the quality stage)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
