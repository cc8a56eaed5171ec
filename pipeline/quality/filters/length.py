"""quality.length: characters and words per turn and per conversation outside the configured bounds."""

from __future__ import annotations

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail
from schemas.config_curation import QualityConfig


def length(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Characters and words per turn and per conversation within the configured bounds."""
    t = b.turns().with_columns(
        pl.col("content").fill_null("").str.len_chars().alias("chars"),
        # norm has single spaces between words: counting them needs no regex.
        (pl.col("norm").str.count_matches(" ", literal=True) + (pl.col("norm") != "").cast(pl.UInt32)).alias("words"),
    )
    per_turn = t.with_columns(
        pl.when(pl.col("chars") > cfg.max_turn_chars)
        .then(pl.format("turn {} has {} characters > max_turn_chars {}", "turn", "chars", pl.lit(cfg.max_turn_chars)))
        .when(pl.col("words") > cfg.max_turn_words)
        .then(pl.format("turn {} has {} words > max_turn_words {}", "turn", "words", pl.lit(cfg.max_turn_words)))
        # a turn that only calls tools has no text to measure
        .when((pl.col("role") == "assistant") & (pl.col("chars") < cfg.min_turn_chars) & ~pl.col("calls"))
        .then(pl.format("assistant turn {} has {} characters < min_turn_chars {}", "turn", "chars",
                        pl.lit(cfg.min_turn_chars)))
        .alias("why")
    ).filter(pl.col("why").is_not_null())
    conv = t.group_by("row").agg(pl.col("chars").sum(), pl.col("words").sum()).with_columns(
        pl.when(pl.col("chars") > cfg.max_conversation_chars)
        .then(pl.format("{} characters > max_conversation_chars {}", "chars", pl.lit(cfg.max_conversation_chars)))
        .when(pl.col("words") > cfg.max_conversation_words)
        .then(pl.format("{} words > max_conversation_words {}", "words", pl.lit(cfg.max_conversation_words)))
        .when(pl.col("words") < cfg.min_conversation_words)
        .then(pl.format("{} words < min_conversation_words {}", "words", pl.lit(cfg.min_conversation_words)))
        .alias("why")
    ).filter(pl.col("why").is_not_null())
    hits = pl.concat([per_turn.select("row", "why"), conv.select("row", "why")]).sort("row", maintain_order=True)
    return FilterResult(drop_rows(b.n, hits["row"]), "quality.length", first_detail(b.n, hits, pl.col("why")))
