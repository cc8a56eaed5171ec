"""quality.language: conversations mostly in languages not kept; records each one's `lang`."""

from __future__ import annotations

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows
from pipeline.quality.langid import detect_turns
from schemas.config_curation import QualityConfig


def language(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Language of each user and assistant turn (langdetect, seed 0); drop when more than
    `max_foreign_share` of the detected letters are in languages not kept. `lang` = the language
    with the most letters (null when every turn abstained)."""
    lc = cfg.language
    t = b.turns("user", "assistant")
    labels, letters = detect_turns(t["content"].fill_null(""), lc, norm=t["norm"])
    t = t.select("row").with_columns(labels.alias("lang"), pl.Series("letters", letters, dtype=pl.Int64))
    t = t.filter(pl.col("lang").is_not_null())
    per = t.group_by("row", "lang").agg(pl.col("letters").sum())
    main = per.sort(["row", "letters", "lang"], descending=[False, True, False]).group_by(
        "row", maintain_order=True
    ).first()
    share = per.group_by("row").agg(
        (pl.col("letters").filter(~pl.col("lang").is_in(lc.keep)).sum() / pl.col("letters").sum()).alias("foreign"),
        pl.col("lang").filter(~pl.col("lang").is_in(lc.keep)).unique().sort().str.join(",").alias("other"),
    )
    lang: list[str | None] = [None] * b.n
    for r, lg in main.select("row", "lang").iter_rows():
        lang[r] = lg
    bad = share.filter(pl.col("foreign") > lc.max_foreign_share)
    detail: list[str | None] = [None] * b.n
    for r, f, other in bad.select("row", "foreign", "other").iter_rows():
        detail[r] = f"{f:.0%} of the text is in {other}, not in {lc.keep}"
    columns = {"lang": pl.Series("lang", lang, dtype=pl.String)}
    return FilterResult(drop_rows(b.n, bad["row"]), "quality.language", detail, columns=columns)
