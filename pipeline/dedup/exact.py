"""Rules on equal hashes: exact copies (dedup.exact), same prompt (dedup.prompt), and a one-exchange
conversation equal to the first exchange of a longer one (dedup.exact, first_exchange)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.dedup.clusters import group_survivors
from pipeline.dedup.verdicts import Verdicts


def equal_hash_rule(
    v: Verdicts, reason: str, hashes: pl.Series, rank: np.ndarray, prior: pl.DataFrame, hash_col: str
) -> int:
    """Among the rows still alive, drop every one whose hash an earlier run kept (`prior`: hash_col,
    conversation_id), then all but the best-ranked of each group of equal hashes. Returns how many
    matched the earlier runs."""
    idx = v.alive_rows()
    sub = hashes.gather(idx)
    prior_map = dict(zip(prior[hash_col].to_list(), prior["conversation_id"].to_list(), strict=True))
    n_prior = 0
    if prior_map:  # earlier runs first
        for r, h in zip(idx.tolist(), sub.to_list(), strict=True):
            if h in prior_map:
                v.drop(r, reason, prior=prior_map[h])
                n_prior += 1
        idx = v.alive_rows()
        sub = hashes.gather(idx)
    codes = pl.DataFrame({"h": sub}).select(pl.col("h").rank("dense")).to_series().to_numpy()
    leaders = idx[group_survivors(codes.astype(np.int64), rank[idx])]
    for r, lead in zip(idx.tolist(), leaders.tolist(), strict=True):
        if r != lead:
            v.drop(r, reason, copy_of=lead)
    return n_prior


def first_exchange_copies(
    v: Verdicts, first_hash: pl.Series, exact_hash: pl.Series, exchanges: np.ndarray, rank: np.ndarray
) -> None:
    """Drop each alive one-exchange row whose exact hash equals the first-exchange hash of an alive
    longer row, as a copy of the best-ranked such row (which holds everything the copy does)."""
    first = first_hash.to_list()
    full = exact_hash.to_list()
    longer = v.alive_rows(exchanges > 1)
    best: dict[str, int] = {}
    for r in longer[np.argsort(rank[longer])].tolist():
        best.setdefault(first[r], r)
    for r in v.alive_rows(exchanges == 1).tolist():
        k = best.get(full[r])
        if k is not None:
            v.drop(r, "dedup.exact", copy_of=k, opening=True)
