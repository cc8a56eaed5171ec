"""What a quality filter is given (a Batch of conversations) and returns (a FilterResult), and the
helpers filters share to build a result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from pipeline.core.textnorm import normalized_turns

#: Hidden column of normalised message texts, aligned with `messages` (see `norm_lists`).
NORM = "_norm"


@dataclass
class Batch:
    """The conversations a filter looks at (`df`, rows 0..n-1) and their turns, one row per turn."""

    df: pl.DataFrame

    @property
    def n(self) -> int:
        return self.df.height

    def turns(self, *roles: str) -> pl.DataFrame:
        """row, turn, role, content, norm (normalised content); only `roles` when given. `norm`
        comes from the hidden column `norm_lists` makes when there is one, else it is computed."""
        if NORM not in self.df.columns:
            t = normalized_turns(self.df)
        else:
            t = (
                self.df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "messages", NORM)
                .explode(["messages", NORM])
                .with_columns(pl.int_range(pl.len()).over("row").alias("turn"))
                .unnest("messages")
                .filter(pl.col("role").is_not_null())
                .rename({NORM: "norm"})
                .select("row", "turn", "role", "content", "norm")
            )
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
