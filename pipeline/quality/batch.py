"""What a quality filter is given (a Batch of conversations) and returns (a FilterResult), and the
helpers filters share to build a result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from pipeline.core.textnorm import normalize_texts, normalized_turns
from pipeline.quality.textkind import kinds

#: Hidden columns aligned with `messages`: each message's normalised text (`norm_lists`) and
#: whether it is code or prose (`kind_lists`, pipeline.quality.textkind; math is told apart from prose
#: only where a rule asks, textkind.math_kind).
NORM = "_norm"
KIND = "_kind"


@dataclass
class Batch:
    """The conversations a filter looks at (`df`, rows 0..n-1) and their turns, one row per turn."""

    df: pl.DataFrame

    @property
    def n(self) -> int:
        return self.df.height

    def turns(self, *roles: str, kind: bool = False) -> pl.DataFrame:
        """row, turn, role, content, norm (normalised content), calls (the turn makes tool calls: its
        content may be empty) and, with `kind`, kind (code or prose,
        or also math when there is no hidden column); only `roles` when given. `norm` and `kind` come from the hidden columns (`norm_lists`,
        `kind_lists`) when there are, else they are computed."""
        hidden = [c for c in (NORM, KIND) if c in self.df.columns and (c == NORM or kind)]
        t = (
            self.df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "messages", *hidden)
            .explode(["messages", *hidden])
            .with_columns(pl.int_range(pl.len()).over("row").alias("turn"))
            .unnest("messages")
            .filter(pl.col("role").is_not_null())
            .rename({NORM: "norm", KIND: "kind"}, strict=False)
        )
        if NORM not in hidden:
            t = t.with_columns(normalize_texts(t["content"]).alias("norm"))
        if kind and KIND not in hidden:
            t = t.with_columns(kinds(t["content"])["kind"].alias("kind"))
        calls = (pl.col("tool_calls").list.len().fill_null(0) > 0) if "tool_calls" in t.columns else pl.lit(False)
        t = t.select("row", "turn", "role", "content", "norm", calls.alias("calls"), *(["kind"] if kind else []))
        return t.filter(pl.col("role").is_in(list(roles))) if roles else t


@dataclass
class FilterResult:
    """A filter's verdict on a batch. True in `keep` means keep."""

    keep: np.ndarray  # bool per row of the batch
    reason: str  # the ledger code of the drops
    detail: list[str | None] | None = None  # per row: why (for dropped rows)
    columns: dict[str, pl.Series] = field(default_factory=dict)  # replaced / added columns
    stats: dict = field(default_factory=dict)


def norm_lists(df: pl.DataFrame) -> pl.Series:
    """The normalised content of every message, as a list aligned with `messages`: the hidden
    column that lets every filter of a run share one normalisation."""
    t = normalized_turns(df)
    lists = t.group_by("row", maintain_order=True).agg("norm")
    full = pl.DataFrame({"row": np.arange(df.height, dtype=np.int64)}).join(lists, on="row", how="left")
    return full["norm"].fill_null([]).cast(pl.List(pl.String)).alias(NORM)


def kind_lists(df: pl.DataFrame) -> pl.Series:
    """The kind of every message (textkind.kinds), as a list aligned with `messages`."""
    t = (
        df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "messages")
        .explode("messages")
        .unnest("messages")
        .filter(pl.col("role").is_not_null())
    )
    # Code is what most rules need to know; math only repetition, which marks it on its own turns.
    t = t.with_columns(kinds(t["content"], math=False)["kind"].alias("kind"))
    lists = t.group_by("row", maintain_order=True).agg("kind")
    full = pl.DataFrame({"row": np.arange(df.height, dtype=np.int64)}).join(lists, on="row", how="left")
    return full["kind"].fill_null([]).cast(pl.List(pl.String)).alias(KIND)


def keep_all(n: int, reason: str) -> FilterResult:
    """A result that keeps every one of n rows."""
    return FilterResult(np.ones(n, dtype=bool), reason, [None] * n)


def drop_rows(n: int, rows: pl.Series | np.ndarray) -> np.ndarray:
    """A keep mask of n rows, False at `rows`."""
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = False
    return mask


def first_detail(n: int, rows: pl.DataFrame, text: pl.Expr) -> list[str | None]:
    """Per row, the first of the given (row, …) rows' sentences."""
    out: list[str | None] = [None] * n
    firsts = rows.group_by("row", maintain_order=True).first().select("row", text.alias("d"))
    for r, d in firsts.iter_rows():
        out[r] = d
    return out
