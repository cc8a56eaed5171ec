"""quality.refusal: assistant turns that are mostly refusal or AI boilerplate."""

from __future__ import annotations

from functools import lru_cache

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail
from schemas.config_curation import QualityConfig

#: Refusals and AI boilerplate (case-insensitive), from the phrases lists that SFT cleaning passes
#: commonly use (e.g. the "unfiltered" ShareGPT/WizardLM cleaning scripts).
REFUSAL_PATTERNS = [
    r"\bas an ai(?: language model| assistant| model)?\b",
    r"\bas a language model\b",
    r"\bi(?:'m| am) (?:just )?an? (?:ai|artificial intelligence|language model)\b",
    r"\bi (?:cannot|can't|can not|am unable to|am not able to|won't) (?:fulfill|comply with|assist with|help with) "
    r"(?:this|that|your) request\b",
    r"\b(?:goes|go) against my (?:programming|guidelines|principles)\b",
    r"\bi (?:do not|don't) have (?:the ability|personal (?:opinions|feelings|experiences)|access to real-time)\b",
    r"\bi(?:'m| am) not able to browse the internet\b",
    r"\bmy (?:knowledge|training data) (?:cutoff|cut-off)\b",
    r"\bi(?:'m| am) sorry, but i (?:cannot|can't|am unable to|am not able to)\b",
    r"\bopenai\b.{0,40}\b(?:policy|policies|guidelines)\b",
]


@lru_cache(maxsize=16)
def _refusal_regex(extra: tuple[str, ...]) -> str:
    return "(?i)(?:" + "|".join(REFUSAL_PATTERNS + list(extra)) + ")"


def refusal(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Assistant turns that are mostly refusal or AI boilerplate: more than `refusal_min_share` of
    their characters sit in sentences containing one of the phrases."""
    rx = _refusal_regex(tuple(cfg.refusal_patterns))
    t = b.turns("assistant").with_columns(pl.col("content").fill_null("").alias("content"))
    t = t.filter(pl.col("content").str.contains(rx))  # most turns have none: skip the sentence split
    s = (
        t.with_columns(pl.col("content").str.extract_all(r"[^.!?\n]+[.!?]*").alias("s"))
        .explode("s")
        .with_columns(pl.col("s").str.len_chars().fill_null(0).alias("c"), pl.col("s").str.extract(f"({rx})", 1).alias("m"))
        .group_by("row", "turn", maintain_order=True)
        .agg(
            (pl.col("c").filter(pl.col("m").is_not_null()).sum() / pl.col("c").sum().clip(1)).alias("share"),
            pl.col("m").drop_nulls().first(),
        )
    )
    hits = s.filter(pl.col("share") > cfg.refusal_min_share)
    detail = first_detail(
        b.n, hits, pl.format("assistant turn {} is {}% refusal / AI boilerplate (\"{}\")", "turn",
                             (pl.col("share") * 100).round(0).cast(pl.Int64), "m")
    )
    return FilterResult(drop_rows(b.n, hits["row"]), "quality.refusal", detail)
