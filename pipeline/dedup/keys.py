"""What the dedup rules compare: per conversation, its normalised texts and the facts that pick a
survivor (tier rank, assistant characters, origin), and stable hashes of texts."""

from __future__ import annotations

import numpy as np
import polars as pl
import xxhash

from pipeline.core.textnorm import normalized_turns
from schemas.conversation import TIER_RANK

#: The text columns of `conversation_keys`; "" for a conversation without user or assistant turns.
TEXTS = ("exact_text", "prompt_text", "near_text", "first_text", "first_near")


def conversation_keys(df: pl.DataFrame) -> pl.DataFrame:
    """One row per conversation of `df`, in order: row, the texts the rules compare (exact_text:
    role-tagged turns; prompt_text: user turns; near_text: all turns; first_text / first_near: the
    first exchange, tagged and plain), exchanges (assistant turns), asst_chars, tier_rank, origin.
    Each message is normalised once; system prompts are left out of every text. An assistant turn's
    tool calls (name and arguments) are part of its text, so trajectories that differ only in their
    calls are not duplicates; tool results are turns of their own (role `tool`)."""
    role = pl.col("role")
    ns = normalized_turns(df).filter(role != "system")
    if "tool_calls" in ns.columns:
        calls = pl.col("tool_calls").list.eval(
            pl.concat_str([pl.element().struct.field("name"), pl.element().struct.field("arguments")], separator=" ")
        ).list.join(" ")
        ns = ns.with_columns(pl.concat_str([pl.col("norm"), calls], separator=" ", ignore_nulls=True).alias("norm"))
    tagged = pl.concat_str([pl.lit("<"), role, pl.lit("> "), pl.col("norm")])
    per_row = ns.group_by("row", maintain_order=True).agg(
        tagged.str.join(" ").alias("exact_text"),
        pl.col("norm").filter(role == "user").str.join(" ").alias("prompt_text"),
        pl.col("norm").str.join(" ").alias("near_text"),
        tagged.head(2).str.join(" ").alias("first_text"),
        pl.col("norm").head(2).str.join(" ").alias("first_near"),
        (role == "assistant").sum().alias("exchanges"),
        pl.col("content").filter(role == "assistant").str.len_chars().sum().alias("asst_chars"),
    )
    return (
        pl.DataFrame({"row": np.arange(df.height, dtype=np.int64)})
        .join(per_row, on="row", how="left")
        .with_columns(*[pl.col(c).fill_null("") for c in TEXTS], pl.col("exchanges", "asst_chars").fill_null(0))
        .with_columns(
            df["tier"].replace_strict(TIER_RANK, default=len(TIER_RANK)).alias("tier_rank"), df["origin"]
        )
        .with_columns(pl.col("row").cast(pl.UInt32))
    )


def hash_texts(texts: pl.Series) -> pl.Series:
    """Stable 128-bit content hash (hex) of each string: persisted indexes compare across runs and
    versions, so polars' own (unstable) hash is not used."""
    return pl.Series([xxhash.xxh3_128_hexdigest(t.encode()) for t in texts.to_list()], dtype=pl.String)
