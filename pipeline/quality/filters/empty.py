"""quality.empty: an empty or whitespace-only assistant turn (one that only calls tools is not empty)."""

from __future__ import annotations

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail
from schemas.config_curation import QualityConfig


def empty(b: Batch, cfg: QualityConfig) -> FilterResult:
    """An assistant turn that is empty or whitespace only and makes no tool call."""
    t = b.turns("assistant").filter((pl.col("content").fill_null("").str.strip_chars() == "") & ~pl.col("calls"))
    detail = first_detail(b.n, t, pl.format("assistant turn {} is empty or whitespace only", pl.col("turn")))
    return FilterResult(drop_rows(b.n, t["row"]), "quality.empty", detail)
