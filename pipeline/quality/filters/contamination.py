"""quality.contamination: user turns holding a configured benchmark's question: an exact copy of
any length, a short question contained whole, or a shared long word n-gram (the index and matching
are pipeline.quality.contamination)."""

from __future__ import annotations

import numpy as np

from pipeline.quality.batch import Batch, FilterResult, keep_all
from pipeline.quality.contamination import benchmark_index, find_contaminated
from schemas.config_curation import QualityConfig


def contamination(b: Batch, cfg: QualityConfig) -> FilterResult:
    """User turns holding a configured benchmark's question; stats["hits"] counts conversations per
    benchmark and stats["by_rule"] how they matched (exact, contained, ngram)."""
    cc = cfg.contamination
    if not cc.enabled or not cc.benchmarks:
        return keep_all(b.n, "quality.contamination")
    index = benchmark_index(cc)
    user = b.turns("user")
    found = find_contaminated(user["norm"], index, cc.short_min_share)
    keep = np.ones(b.n, dtype=bool)
    detail: list[str | None] = [None] * b.n
    hits: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    for r, turn, f in zip(user["row"].to_list(), user["turn"].to_list(), found, strict=True):
        if f is None or not keep[r]:
            continue
        keep[r] = False
        hits[f.benchmark] = hits.get(f.benchmark, 0) + 1
        by_rule[f.how] = by_rule.get(f.how, 0) + 1
        what = {
            "exact": "is a copy of",
            "contained": "contains",
            "ngram": f"shares {f.count} {cc.ngram}-word sequence(s) ({f.coverage:.0%} of its words) with",
        }[f.how]
        detail[r] = f"user turn {turn} {what} benchmark {f.benchmark!r} item {f.item}"
    return FilterResult(keep, "quality.contamination", detail, stats={"hits": hits, "by_rule": by_rule})
