"""quality.refusal: assistant turns that are mostly refusal or AI boilerplate."""

from __future__ import annotations

from functools import lru_cache

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail
from schemas.config_curation import QualityConfig

#: AI self-description boilerplate (case-insensitive), from the phrase lists that SFT cleaning passes
#: commonly use (e.g. the "unfiltered" ShareGPT/WizardLM cleaning scripts). Not counted in a reply to
#: a user who asks who or what the assistant is: there it is the answer.
IDENTITY_PATTERNS = [
    r"\bas an ai(?: language model| assistant| model)?\b",
    r"\bas a language model\b",
    r"\bi(?:'m| am) (?:just )?an? (?:ai|artificial intelligence|language model)\b",
]
#: Refusals, counted whatever the user asked.
REFUSAL_PATTERNS = [
    r"\bi (?:cannot|can't|can not|am unable to|am not able to|won't) (?:fulfill|comply with|assist with|help with) "
    r"(?:this|that|your) request\b",
    r"\b(?:goes|go) against my (?:programming|guidelines|principles)\b",
    r"\bi (?:do not|don't) have (?:the ability|personal (?:opinions|feelings|experiences)|access to real-time)\b",
    r"\bi(?:'m| am) not able to browse the internet\b",
    r"\bmy (?:knowledge|training data) (?:cutoff|cut-off)\b",
    r"\bi(?:'m| am) sorry, but i (?:cannot|can't|am unable to|am not able to)\b",
    r"\bopenai\b.{0,40}\b(?:policy|policies|guidelines)\b",
]


#: A user turn asking about the assistant itself (its name, nature, maker).
IDENTITY_QUESTION = (
    r"(?i)\b(?:who|what) (?:are|r) (?:you|u)\b|\bwho you are\b|\byour (?:name|model|creator|maker)\b"
    r"|\babout (?:yourself|you)\b|\bintroduce yourself\b"
    r"|\bwho (?:made|created|built|trained|taught|developed|programmed|designed|owns) you\b"
    r"|\bhow (?:were|are) you (?:made|trained|built|created)\b|\bdo you (?:call|use|run on|rely on) \w+ (?:apis?|models?)\b"
    r"|\bare you (?:a |an )?(?:human|person|real|robot|bot|machine|ai|sentient|conscious|alive|language model|"
    r"chatgpt|gpt|openai|davinci|curie|ada|babbage|bard|claude|llama|vicuna|alpaca|based on|trained|made|created)"
)


@lru_cache(maxsize=16)
def _refusal_regex(extra: tuple[str, ...], identity: bool = True) -> str:
    return "(?i)(?:" + "|".join((IDENTITY_PATTERNS if identity else []) + REFUSAL_PATTERNS + list(extra)) + ")"


def refusal(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Assistant turns that are mostly refusal or AI boilerplate: more than `refusal_min_share` of
    their characters sit in sentences containing one of the phrases. After a user turn that asks who
    or what the assistant is, only the refusal phrases count (an identity answer is not boilerplate)."""
    rx = _refusal_regex(tuple(cfg.refusal_patterns))
    rx_refusal = _refusal_regex(tuple(cfg.refusal_patterns), identity=False)
    turns = b.turns()
    # Most turns have no phrase at all: the identity question and the sentence split run on the rest.
    t = turns.filter((pl.col("role") == "assistant") & pl.col("content").fill_null("").str.contains(rx))
    prompts = turns.filter(pl.col("role") == "user").select(
        "row", (pl.col("turn") + 1).alias("turn"), pl.col("content").alias("prompt"))
    t = t.join(prompts, on=["row", "turn"], how="left", maintain_order="left").with_columns(
        pl.col("prompt").str.contains(IDENTITY_QUESTION).fill_null(False).alias("asked"))
    s = (
        t.with_columns(pl.col("content").str.extract_all(r"[^.!?\n]+[.!?]*").alias("s"))
        .explode("s")
        .with_columns(
            pl.col("s").str.len_chars().fill_null(0).alias("c"),
            pl.when(pl.col("asked")).then(pl.col("s").str.extract(f"({rx_refusal})", 1))
            .otherwise(pl.col("s").str.extract(f"({rx})", 1)).alias("m"),
        )
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
