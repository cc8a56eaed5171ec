"""quality.pii: personal data and secrets, redacted with a typed placeholder or dropping the
conversation, per kind (the detection and its validation are pipeline.quality.pii)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.quality.batch import Batch, FilterResult
from pipeline.quality.pii import FORMAT_TASK, KINDS, scan
from schemas.config_curation import QualityConfig


def _with_contents(df: pl.DataFrame, contents: pl.Series) -> pl.Series:
    """`messages` with each message's content replaced, in turn order; every other field kept."""
    ex = (
        df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "messages")
        .explode("messages")
        .filter(pl.col("messages").struct.field("role").is_not_null())
        .with_columns(contents.alias("_content"))
        .with_columns(pl.col("messages").struct.with_fields(pl.col("_content").alias("content")))
        .group_by("row", maintain_order=True)
        .agg("messages")
    )
    full = pl.DataFrame({"row": pl.int_range(df.height, dtype=pl.Int64, eager=True)}).join(ex, on="row", how="left")
    return full["messages"].fill_null([]).cast(df.schema["messages"]).alias("messages")


def pii(b: Batch, cfg: QualityConfig) -> FilterResult:
    """PII and secrets in any turn: redacted with a typed placeholder, or dropping the conversation,
    per kind (quality.pii.<kind> = redact | drop | keep). stats["examples"] holds up to
    `pii.examples` redactions per kind as {origin, kind, before, after}."""
    policies = {k: cfg.pii.policy(k) for k in KINDS}
    t = b.turns(kind=True)
    # A conversation whose user turns ask about formats (a regex, validation): its example
    # addresses are the subject of the task.
    # Only conversations with an address-like string need the question asked.
    cand = t.filter(pl.col("content").fill_null("").str.contains(r"@|\d\.\d+\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]*:"))["row"]
    fmt_rows = t.filter((pl.col("role") == "user") & pl.col("row").is_in(cand.unique().implode())).group_by("row").agg(
        pl.col("content").fill_null("").str.contains(FORMAT_TASK).any().alias("f")
    ).filter(pl.col("f"))["row"]
    fmt = t["row"].is_in(fmt_rows.implode()).to_list() if fmt_rows.len() else None
    new, counts, shown = scan(t["content"].fill_null(""), policies, fmt, examples=cfg.pii.examples,
                              code=(t["kind"] == "code").to_list())
    per_turn = t.select("row").with_columns([counts[k].alias(k) for k in KINDS])
    per_row = per_turn.group_by("row").agg([pl.col(k).sum() for k in KINDS]).sort("row")
    rows = per_row["row"].to_numpy()
    found = {k: np.zeros(b.n, dtype=np.int64) for k in KINDS}
    for k in KINDS:
        found[k][rows] = per_row[k].to_numpy()
    keep = np.ones(b.n, dtype=bool)
    detail: list[str | None] = [None] * b.n
    for k in (k for k in KINDS if policies[k] == "drop"):
        for r in np.flatnonzero(found[k] > 0).tolist():
            if keep[r]:
                detail[r] = f"contains {found[k][r]} {k.replace('_', ' ')} item(s) (policy: drop)"
            keep[r] = False
    redact_kinds = [k for k in KINDS if policies[k] == "redact"]
    redactions = sum((found[k] for k in redact_kinds), np.zeros(b.n, dtype=np.int64))
    columns = {"pii_redactions": pl.Series("pii_redactions", redactions, dtype=pl.Int32)}
    if redactions.any():
        columns["messages"] = _with_contents(b.df, new)
    turn_row = t["row"].to_list() if shown else []
    origins = b.df["origin"].to_list() if shown and "origin" in b.df.columns else None
    examples = [
        {"origin": origins[turn_row[r.position]] if origins else None, "kind": r.kind, "before": r.before,
         "after": r.after}
        for r in shown if keep[turn_row[r.position]]
    ]
    stats = {
        "detected": {k: int(found[k].sum()) for k in KINDS},
        "redacted": {k: int(found[k][keep].sum()) for k in redact_kinds},
        "conversations_redacted": int(((redactions > 0) & keep).sum()),
        "examples": examples,
    }
    return FilterResult(keep, "quality.pii", detail, columns=columns, stats=stats)
