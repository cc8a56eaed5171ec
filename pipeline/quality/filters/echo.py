"""quality.echo: an assistant turn that only repeats its prompt."""

from __future__ import annotations

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail
from schemas.config_curation import QualityConfig


def echo(b: Batch, cfg: QualityConfig) -> FilterResult:
    """An assistant turn that only repeats its prompt: equal to it after normalisation, or (when at
    least `echo_min_chars` long) contained in it."""
    t = b.turns().rename({"norm": "n"})
    # Turns are in conversation order, so the previous row is the prompt when it has the same row.
    same = pl.col("row") == pl.col("row").shift(1)
    t = t.with_columns(pl.when(same).then(pl.col("n").shift(1)).alias("prev")).filter(
        (pl.col("role") == "assistant") & pl.col("prev").is_not_null() & (pl.col("n") != "")
    )
    hit = t.filter(
        (pl.col("n") == pl.col("prev"))
        | ((pl.col("n").str.len_chars() >= cfg.echo_min_chars) & pl.col("prev").str.contains(pl.col("n"), literal=True))
    )
    detail = first_detail(b.n, hit, pl.format("assistant turn {} only repeats the prompt", pl.col("turn")))
    return FilterResult(drop_rows(b.n, hit["row"]), "quality.echo", detail)
