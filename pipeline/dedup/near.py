"""Near copies (dedup.near): MinHash signatures of the normalised turns, LSH candidates verified by
their estimated Jaccard, clusters of the verified pairs (earlier runs' conversations outrank every
row of this run); and a one-exchange conversation near the first exchange of a longer one."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipeline.dedup.clusters import components, group_survivors
from pipeline.dedup.index import PriorIndex
from pipeline.dedup.keyed import Keyed
from pipeline.dedup.lsh import LshStats, candidate_pairs, verify
from pipeline.dedup.verdicts import Verdicts
from schemas.config_curation import DedupConfig


@dataclass
class Signed:
    """Signatures of the rows alive when signed (zeros for the others), and of the first exchange
    of the `openers`, longer conversations (ascending rows), when the first-exchange rule needs them."""

    rows: np.ndarray  # n x num_perm
    openers: np.ndarray
    opening: np.ndarray  # len(openers) x num_perm

    def opening_of(self, rows: np.ndarray) -> np.ndarray:
        """The first-exchange signatures of some of the openers."""
        return self.opening[np.searchsorted(self.openers, rows)]


def sign(v: Verdicts, keyed: Keyed, exchanges: np.ndarray, cfg: DedupConfig) -> Signed:
    """The signatures of the alive rows (zeros for the others) and, for the first-exchange rule, of
    the openings of the alive longer ones, from every row's (dedup.keyed). The dead rows are zeroed
    in `keyed.sig` itself: a copy of a 200k x 128 matrix costs seconds of fresh memory here."""
    assert keyed.sig is not None, "keyed without signatures"
    rows = keyed.sig
    rows[~v.alive] = 0
    openers = v.alive_rows(exchanges > 1) if cfg.near and cfg.first_exchange else np.zeros(0, dtype=np.int64)
    opening = (keyed.opening_sig[np.searchsorted(keyed.opening_rows, openers)] if len(openers)
               else np.zeros((0, cfg.num_perm), dtype=np.uint32))
    return Signed(rows, openers, opening)


def near_rule(v: Verdicts, sig: np.ndarray, rank: np.ndarray, prior: PriorIndex, cfg: DedupConfig) -> tuple[int, LshStats]:
    """Cluster the alive rows with the earlier runs' signatures and drop all but each cluster's
    survivor (an earlier run's conversation when there is one). Returns how many matched the
    earlier runs, and the LSH pass's numbers."""
    t0 = time.perf_counter()
    idx = v.alive_rows()
    m = len(prior.sig_ids)
    if m:
        both, at = np.vstack([sig[idx], prior.signatures]), None
    else:  # the alive rows of `sig` in place of a copy of them (fresh memory is slow)
        both, at = sig, idx
    ci, cj, lsh = candidate_pairs(both, cfg, at)
    _, ok = verify(both, ci, cj, cfg, at)
    lsh.verified = int(ok.sum())
    lsh.rejected_false_positives = int((~ok).sum())
    comp = components(len(idx) + m, ci[ok], cj[ok])
    # Prior rows outrank every row of this run (the earliest index first).
    both_rank = np.concatenate([rank[idx], -1 - np.arange(m, 0, -1)]) if m else rank[idx]
    leaders = group_survivors(comp.astype(np.int64), both_rank)
    n_prior = 0
    for local, lead in enumerate(leaders[: len(idx)].tolist()):
        if local == lead:
            continue
        a, b = (local, lead) if at is None else (at[local], at[lead])
        jaccard = float((both[a] == both[b]).mean())
        if lead >= len(idx):
            v.drop(int(idx[local]), "dedup.near", prior=prior.sig_ids[lead - len(idx)], jaccard=jaccard)
            n_prior += 1
        else:
            v.drop(int(idx[local]), "dedup.near", copy_of=int(idx[lead]), jaccard=jaccard)
    lsh.seconds = round(time.perf_counter() - t0, 3)
    return n_prior, lsh


def first_exchange_near(
    v: Verdicts, signed: Signed, rank: np.ndarray, exchanges: np.ndarray, cfg: DedupConfig
) -> int | None:
    """Drop each alive one-exchange row whose signature is near the first exchange of an alive
    longer row, as a copy of the best-ranked such row. Returns how many (None: nothing to compare)."""
    singles = v.alive_rows(exchanges == 1)
    longer = v.alive_rows(exchanges > 1)
    if not (len(singles) and len(longer)):
        return None
    both = np.vstack([signed.rows[singles], signed.opening_of(longer)])
    ci, cj, _ = candidate_pairs(both, cfg)
    cross = (ci < len(singles)) & (cj >= len(singles))
    ci, cj = ci[cross], cj[cross]
    est, ok = verify(both, ci, cj, cfg)
    matches = 0
    pairs = zip(ci[ok].tolist(), cj[ok].tolist(), est[ok].tolist(), strict=True)
    for a, b, e in sorted(pairs, key=lambda x: (x[0], rank[longer[x[1] - len(singles)]])):
        r, k = int(singles[a]), int(longer[b - len(singles)])
        if v.alive[r]:
            v.drop(r, "dedup.near", copy_of=k, jaccard=e, opening=True)
            matches += 1
    return matches
