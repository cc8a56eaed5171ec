"""The fate of each conversation while the dedup rules run, each on what the previous ones kept: kept
so far, or dropped by a rule as a copy of another row of this run or of an earlier run's conversation;
and, at the end, the dropped rows with their ledger reason, sentence and dup_of."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.dedup.clusters import why_kept
from schemas.config_curation import DedupConfig


@dataclass
class Verdicts:
    """Per row of the input frame. A rule drops rows only through `drop`."""

    alive: np.ndarray  # bool: not dropped (yet)
    parent: np.ndarray  # int64: the row it was dropped for; -1: none (kept, or dropped for prior_of)
    reason: dict[int, str]  # dropped row -> reason code
    prior_of: dict[int, str]  # dropped row -> conversation_id of the earlier run's copy it repeats
    jaccard: dict[int, float]  # near copy -> estimated Jaccard with the row it was dropped for
    opening: dict[int, int]  # one-exchange row -> the longer row whose first exchange it copies

    @classmethod
    def start(cls, n: int) -> Verdicts:
        """Every one of n rows alive."""
        return cls(np.ones(n, dtype=bool), np.full(n, -1, dtype=np.int64), {}, {}, {}, {})

    def alive_rows(self, where: np.ndarray | None = None) -> np.ndarray:
        """Indices of the rows still alive (and `where` true, when given), ascending."""
        return np.flatnonzero(self.alive if where is None else self.alive & where)

    def drop(
        self, row: int, reason: str, *, copy_of: int = -1, prior: str | None = None,
        jaccard: float | None = None, opening: bool = False,
    ) -> None:
        """Drop `row` as a copy of row `copy_of` of this run, or of the earlier run's conversation
        `prior`; `opening`: it copies the first exchange of `copy_of`."""
        self.alive[row] = False
        self.reason[row] = reason
        if prior is not None:
            self.prior_of[row] = prior
        else:
            self.parent[row] = copy_of
        if jaccard is not None:
            self.jaccard[row] = jaccard
        if opening:
            self.opening[row] = copy_of

    def final_of(self, row: int) -> int:
        """The row a dropped row finally stands for: a row dropped for a row that a later rule dropped
        points on to the one finally kept (or to the one that copied an earlier run's conversation)."""
        while self.parent[row] >= 0:
            row = int(self.parent[row])
        return row


def _what(reason: str, jaccard: float, cfg: DedupConfig) -> str:
    if reason == "dedup.exact":
        return "exact copy (same user and assistant turns after NFKC, case and whitespace normalisation)"
    if reason == "dedup.near":
        return f"near copy (estimated Jaccard {jaccard:.2f} on word {cfg.ngram}-grams, threshold {cfg.threshold})"
    return "same prompt (user turns equal after normalisation)"


def dropped_rows(df: pl.DataFrame, keys: pl.DataFrame, v: Verdicts, cfg: DedupConfig) -> pl.DataFrame:
    """The dropped rows of `df` (input columns + reason, detail, dup_of), in input order; dup_of is
    the conversation_id of the kept copy (or of the earlier run's)."""
    cids = df["conversation_id"].to_list()
    origins = df["origin"].to_list()
    tiers = df["tier"].to_list()
    asst = keys["asst_chars"].to_numpy()
    rows = np.flatnonzero(~v.alive)
    reasons: list[str] = []
    details: list[str] = []
    dup_of: list[str] = []
    for r in rows.tolist():
        rule = v.reason[r]
        what = _what(rule, v.jaccard.get(r, 0), cfg)
        k = v.final_of(r)
        if k in v.prior_of:
            dup_of.append(v.prior_of[k])
            details.append(f"{what} of conversation {v.prior_of[k]}, kept by an earlier run")
        else:
            dup_of.append(cids[k])
            if v.opening.get(r) == k:
                details.append(f"{what} of the first exchange of {origins[k]}, a longer conversation that was kept")
            else:
                details.append(f"{what} of {origins[k]}, which was kept: {why_kept(tiers[k], tiers[r], asst[k], asst[r])}")
        reasons.append(rule)
    return df[rows].with_columns(
        pl.Series("reason", reasons, dtype=pl.String),
        pl.Series("detail", details, dtype=pl.String),
        pl.Series("dup_of", dup_of, dtype=pl.String),
    )
