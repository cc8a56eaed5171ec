"""quality.echo: an assistant turn that only repeats its prompt."""

from __future__ import annotations

import re

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail
from schemas.config_curation import QualityConfig

#: Where a prompt lists options: a separator between them, or a line that opens an item.
_OPTION_SPLIT = re.compile(r"\s*(?:,|;|/|\||\bor\b|\band\b|\n|\s[-•*]\s|(?:^|\s)\(?[a-e1-9][).:]\s)\s*", re.I)
_LABEL = re.compile(r"^\(?(?:[a-e]|\d{1,2})[).:]\s*", re.I)
_PUNCT = re.compile(r"^[\s\"'“”‘’.,:;!?()\[\]-]+|[\s\"'“”‘’.,:;!?()\[\]-]+$")


def _bare(text: str) -> str:
    return _PUNCT.sub("", _LABEL.sub("", text.strip())).lower()


def is_option(answer: str, prompt: str) -> bool:
    """The answer is one of the options the prompt lists (`Smart Home` in "one of Electronics,
    Computers, Smart Home, or Arts & Crafts"), optionally with its label (`B. Article I`)."""
    want = _bare(answer)
    pieces = [_bare(p) for p in _OPTION_SPLIT.split(prompt) if p and p.strip()]
    if not want or len(pieces) < 2 or want == _bare(prompt):
        return False
    return want in pieces


def echo(b: Batch, cfg: QualityConfig) -> FilterResult:
    """An assistant turn that only repeats its prompt: equal to it after normalisation, or (when at
    least `echo_min_chars` long) found inside it and at least `echo_min_share` of it, and not one of
    the options the prompt lists. A short answer inside a long prompt is an extracted span or a
    chosen label, not an echo."""
    t = b.turns().rename({"norm": "n"})
    # Turns are in conversation order, so the previous row is the prompt when it has the same row and
    # is a user turn (an answer that quotes a tool's result is not an echo).
    same = (pl.col("row") == pl.col("row").shift(1)) & (pl.col("role").shift(1) == "user")
    t = t.with_columns(
        pl.when(same).then(pl.col("n").shift(1)).alias("prev"),
        pl.when(same).then(pl.col("content").shift(1)).alias("prev_content"),
    ).filter((pl.col("role") == "assistant") & pl.col("prev").is_not_null() & (pl.col("n") != ""))
    hit = t.filter(
        (pl.col("n") == pl.col("prev"))
        | ((pl.col("n").str.len_chars() >= cfg.echo_min_chars)
           & (pl.col("n").str.len_chars() >= cfg.echo_min_share * pl.col("prev").str.len_chars())
           & pl.col("prev").str.contains(pl.col("n"), literal=True))
    )
    if hit.height:
        options = [is_option(a or "", p or "") for a, p in hit.select("content", "prev_content").iter_rows()]
        hit = hit.filter(~pl.Series(options, dtype=pl.Boolean))
    detail = first_detail(b.n, hit, pl.format("assistant turn {} only repeats the prompt", pl.col("turn")))
    return FilterResult(drop_rows(b.n, hit["row"]), "quality.echo", detail)
