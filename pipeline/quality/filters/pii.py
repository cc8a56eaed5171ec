"""quality.pii: personal data and secrets, redacted with a typed placeholder or dropping the
conversation, per kind (the detection is pipeline.quality.pii)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.ingest.canonical import MESSAGE
from pipeline.quality.batch import Batch, FilterResult
from pipeline.quality.pii import KINDS, scan
from schemas.config_curation import QualityConfig


def pii(b: Batch, cfg: QualityConfig) -> FilterResult:
    """PII and secrets in any turn: redacted with a typed placeholder, or dropping the conversation,
    per kind (quality.pii.<kind> = redact | drop | keep)."""
    policies = {k: cfg.pii.policy(k) for k in KINDS}
    t = b.turns()
    new, counts = scan(t["content"].fill_null(""), policies)
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
        msgs = (
            t.select("row", "role").with_columns(new.alias("content"))
            .group_by("row", maintain_order=True)
            .agg(pl.struct("role", "content").alias("messages"))
        )
        columns["messages"] = msgs["messages"].cast(pl.List(MESSAGE))
    stats = {
        "detected": {k: int(found[k].sum()) for k in KINDS},
        "redacted": {k: int(found[k].sum()) for k in redact_kinds},
        "conversations_redacted": int((redactions > 0).sum()),
    }
    return FilterResult(keep, "quality.pii", detail, columns=columns, stats=stats)
