"""LSH over MinHash signatures: banding, candidate pairs, verification.

Bands and rows are datasketch's choice for the threshold (`_optimal_param`), weighted for recall
(dedup.lsh_weights). Every pair of rows that agrees on a whole band is a candidate; with `verify` a
candidate counts only if its estimated Jaccard (share of equal signature values) reaches the
threshold, which removes LSH false positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.dedup.minhash import estimated_jaccard
from schemas.config_curation import DedupConfig

#: Folds a band's values into one 64-bit key (the 64-bit golden ratio, an odd multiplier).
_MULT = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class LshStats:
    """One LSH pass: its bands x rows, candidate pairs, how many verification kept and rejected."""

    bands: int
    rows: int
    candidates: int
    verified: int = 0
    rejected_false_positives: int = 0
    seconds: float = 0.0
    #: one-exchange conversations dropped as near copies of a longer one's opening (None: not run)
    first_exchange_matches: int | None = None


def candidate_pairs(sig: np.ndarray, cfg: DedupConfig, at: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, LshStats]:
    """Candidate pairs (i < j) of rows that agree on all values of at least one LSH band; with `at`,
    of the rows sig[at] (i and j index `at`), as if given that copy."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(cfg.threshold, cfg.num_perm, *cfg.lsh_weights)
    n = sig.shape[0] if at is None else len(at)
    pairs: list[np.ndarray] = []
    for band in range(bands):
        # A collision of two band keys merely adds a candidate, which verification removes.
        cols = sig[:, band * rows : (band + 1) * rows]
        block = (cols if at is None else cols[at]).astype(np.uint64)
        key = np.zeros(n, dtype=np.uint64)
        for c in range(rows):
            key = (key ^ block[:, c]) * _MULT
            key ^= key >> np.uint64(29)
        pairs += _bucket_pairs(key, cfg.max_bucket)
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), LshStats(bands, rows, 0)
    both = np.concatenate(pairs).astype(np.int64)
    # unique (i, j) in (i, j) order, as one int64 each (i * n + j < 2^62 for any n here)
    code = np.unique(both[:, 0] * n + both[:, 1])
    i, j = np.divmod(code, n)
    return i, j, LshStats(bands, rows, int(len(code)))


def _bucket_pairs(key: np.ndarray, max_bucket: int) -> list[np.ndarray]:
    """Pairs (i < j) of rows with equal keys: every pair of a bucket of up to `max_bucket` rows, a
    star around its smallest row for a larger one (a very common band bounds the work). Buckets of
    one size are paired at once (one triu_indices per size, not per bucket)."""
    n = len(key)
    order = pl.Series(key).arg_sort().to_numpy().astype(np.int64)  # polars: parallel, ~5x numpy's
    edge = np.flatnonzero(np.diff(key[order])) + 1
    starts = np.concatenate([[0], edge])
    sizes = np.diff(np.concatenate([starts, [n]]))
    out: list[np.ndarray] = []
    for size in np.unique(sizes[sizes > 1]).tolist():
        at = starts[sizes == size]
        if size <= max_bucket:
            members = np.sort(order[at[:, None] + np.arange(size)], axis=1)
            ii, jj = np.triu_indices(size, k=1)
            out.append(np.stack([members[:, ii].ravel(), members[:, jj].ravel()], axis=1))
        else:
            for s in at.tolist():
                members = np.sort(order[s : s + size])
                out.append(np.stack([np.full(size - 1, members[0]), members[1:]], axis=1))
    return out


def verify(sig: np.ndarray, i: np.ndarray, j: np.ndarray, cfg: DedupConfig, at: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(estimated Jaccard of each pair, whether it counts): with cfg.verify only pairs at or above
    the threshold count, else every candidate does. `at` as in candidate_pairs."""
    est = estimated_jaccard(sig, i, j) if at is None else estimated_jaccard(sig, at[i], at[j])
    ok = est >= cfg.threshold if cfg.verify else np.ones(len(i), dtype=bool)
    return est, ok
