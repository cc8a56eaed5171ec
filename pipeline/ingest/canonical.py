"""The canonical conversation as a polars frame: the shape every stage takes and returns."""

from __future__ import annotations

import polars as pl

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})

#: Columns every canonical frame has, in order; stages may add more (lang, score, …) after them.
CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String,
    "origin": pl.String,
    "source": pl.String,
    "tier": pl.String,
    "messages": pl.List(MESSAGE),
    "license": pl.String,
    "category": pl.String,
    "original_id": pl.String,
}


def empty_canonical() -> pl.DataFrame:
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def from_records(rows: list[dict]) -> pl.DataFrame:
    """Canonical frame from dicts with the canonical keys (messages as [{role, content}, …])."""
    if not rows:
        return empty_canonical()
    return pl.DataFrame([{k: r.get(k) for k in CANONICAL_SCHEMA} for r in rows], schema=CANONICAL_SCHEMA)


def role_text(df: pl.DataFrame, role: str, sep: str = "\n") -> pl.Series:
    """All turns of one role joined per conversation (e.g. the assistant text)."""
    return df.select(
        pl.col("messages")
        .list.eval(pl.element().filter(pl.element().struct.field("role") == role).struct.field("content"))
        .list.join(sep)
        .alias(f"{role}_text")
    ).to_series()
