"""quality.language: conversations mostly in languages not kept; records each one's `lang`."""

from __future__ import annotations

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows
from pipeline.quality.langcodes import script_languages
from pipeline.quality.langid import detect_parts
from schemas.config_curation import QualityConfig


def is_kept(label: str, keep: list[str]) -> bool:
    """A label matches `keep` when it is a kept code, or an undetermined script (`und-Cyrl`) that a
    kept language is written in."""
    return label in keep or any(lang in keep for lang in script_languages(label))


def language(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Language of the prose of each user and assistant turn (langid.detect_parts, a part per script);
    drop when more than `max_foreign_share` of the weighted letters of the parts that could be told
    are in languages not kept. Turns that abstain (code, arithmetic, lists, text too short) count for
    nothing either way.
    `lang` = the language with the most letters (null when every turn abstained)."""
    lc = cfg.language
    turns = b.turns("user", "assistant", kind=True)
    parts = detect_parts(turns["content"].fill_null(""), lc, norm=turns["norm"], kind=turns["kind"])
    t = parts.with_columns(turns["row"].gather(parts["turn"]).alias("row")).rename({"weight": "letters"})
    kept = [lg for lg in t["lang"].unique().to_list() if is_kept(lg, lc.keep)]
    t = t.with_columns(pl.col("lang").is_in(kept).alias("kept"))
    per = t.group_by("row", "lang", "kept").agg(pl.col("letters").sum())
    main = per.sort(["row", "letters", "lang"], descending=[False, True, False]).group_by(
        "row", maintain_order=True
    ).first()
    share = per.group_by("row").agg(
        (pl.col("letters").filter(~pl.col("kept")).sum() / pl.col("letters").sum().clip(1)).alias("foreign"),
        pl.col("lang").filter(~pl.col("kept")).unique().sort().str.join(",").alias("other"),
    )
    lang: list[str | None] = [None] * b.n
    for r, lg in main.select("row", "lang").iter_rows():
        lang[r] = lg
    bad = share.filter(pl.col("foreign") > lc.max_foreign_share)
    detail: list[str | None] = [None] * b.n
    for r, f, other in bad.select("row", "foreign", "other").iter_rows():
        detail[r] = f"{f:.0%} of the prose is in {other}, not in {lc.keep}"
    columns = {"lang": pl.Series("lang", lang, dtype=pl.String)}
    return FilterResult(drop_rows(b.n, bad["row"]), "quality.language", detail, columns=columns)
