"""quality.contamination: user turns sharing a long word n-gram with a configured benchmark's
questions (the index and matching are pipeline.quality.contamination)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.quality.batch import Batch, FilterResult, keep_all
from pipeline.quality.contamination import benchmark_index, find_contaminated
from schemas.config_curation import QualityConfig


def contamination(b: Batch, cfg: QualityConfig) -> FilterResult:
    """User turns sharing a word n-gram (default 13) with a configured benchmark's questions."""
    cc = cfg.contamination
    if not cc.enabled or not cc.benchmarks:
        return keep_all(b.n, "quality.contamination")
    index = benchmark_index(cc)
    user = b.turns("user").group_by("row", maintain_order=True).agg(pl.col("norm").str.join(" "))
    found = find_contaminated(user["norm"], index)
    keep = np.ones(b.n, dtype=bool)
    detail: list[str | None] = [None] * b.n
    hits: dict[str, int] = {}
    for r, f in zip(user["row"].to_list(), found, strict=True):
        if f is not None:
            bench, item, k = f
            keep[r] = False
            hits[bench] = hits.get(bench, 0) + 1
            detail[r] = f"user turns share {k} {cc.ngram}-word sequence(s) with benchmark {bench!r} item {item}"
    return FilterResult(keep, "quality.contamination", detail, stats={"hits": hits})
