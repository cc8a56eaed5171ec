"""The canonical conversation as a polars frame: the shape every stage takes and returns.

A message is a struct of role (system | user | assistant | tool), content (a string, empty for an
assistant turn that only calls tools), reasoning, tool_calls (list of {id, name, arguments: a JSON
string}), tool_call_id and name (for a tool message); every field but role and content is null where
the source has none. `tools` is the conversation's offered function schemas as one JSON string, or null.
"""

from __future__ import annotations

import polars as pl

TOOL_CALL = pl.Struct({"id": pl.String, "name": pl.String, "arguments": pl.String})
MESSAGE = pl.Struct({
    "role": pl.String,
    "content": pl.String,
    "reasoning": pl.String,
    "tool_calls": pl.List(TOOL_CALL),
    "tool_call_id": pl.String,
    "name": pl.String,
})
#: The message fields, in struct order.
MESSAGE_FIELDS = tuple(f.name for f in MESSAGE.fields)

#: Columns every canonical frame has, in order; stages may add more (lang, score, …) after them.
CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String,
    "origin": pl.String,
    "source": pl.String,
    "tier": pl.String,
    "messages": pl.List(MESSAGE),
    "tools": pl.String,
    "license": pl.String,
    "category": pl.String,
    "original_id": pl.String,
}


def empty_canonical() -> pl.DataFrame:
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def full_message(m: dict) -> dict:
    """A message dict with every MESSAGE field (None where absent)."""
    return {k: m.get(k) for k in MESSAGE_FIELDS}


def from_records(rows: list[dict]) -> pl.DataFrame:
    """Canonical frame from dicts with the canonical keys (messages as [{role, content, …}, …]; the
    optional message fields and `tools` may be left out)."""
    if not rows:
        return empty_canonical()
    data = []
    for r in rows:
        d = {k: r.get(k) for k in CANONICAL_SCHEMA}
        if d["messages"] is not None:
            d["messages"] = [full_message(m) for m in d["messages"]]
        data.append(d)
    return pl.DataFrame(data, schema=CANONICAL_SCHEMA)


def role_text(df: pl.DataFrame, role: str, sep: str = "\n") -> pl.Series:
    """All turns of one role joined per conversation (e.g. the assistant text)."""
    return df.select(
        pl.col("messages")
        .list.eval(pl.element().filter(pl.element().struct.field("role") == role).struct.field("content"))
        .list.join(sep)
        .alias(f"{role}_text")
    ).to_series()
