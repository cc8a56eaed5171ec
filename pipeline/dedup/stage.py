"""Deduplication: exact copies, near copies (MinHash LSH) and, optionally, same-prompt copies.

Rules, in order, each on what the previous left (`deduplicate`):
- dedup.exact (exact.py): equal hash (xxh3-128) of the user and assistant turns after NFKC, lower
  case and whitespace collapsing. System prompts are left out: they are a template choice, and the
  same demonstration delivered with another system prompt is still the same demonstration. With
  first_exchange, a one-exchange conversation equal to the opening of a longer one is its copy.
- dedup.near (near.py): MinHash (minhash.py) of word n-gram shingles of the normalised turns, LSH
  candidates verified by estimated Jaccard (lsh.py), verified pairs joined into clusters
  (clusters.py); with first_exchange, also a one-exchange conversation near a longer one's opening.
- dedup.prompt (exact.py, off by default): equal normalised user turns ("same instruction,
  different answer").

Which member of a group survives is fixed (clusters.py): the highest tier, then the longer assistant
text, then the smaller origin string. Conversations kept by earlier runs (their `dedup_index/`,
index.py) outrank everything: a copy of one of them is dropped with dup_of = the earlier run's
conversation_id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.parts import read_parts, write_parts
from pipeline.core.rundir import atomic_write_parquet, claim_run_dir
from pipeline.core.stage import StageResult
from pipeline.dedup.clusters import cluster_counts, cluster_table, survivor_rank
from pipeline.dedup.exact import equal_hash_rule, first_exchange_copies
from pipeline.dedup.index import PriorIndex, load_prior, write_index
from pipeline.dedup.keyed import Keyed, key_frame, keyed_parts
from pipeline.dedup.lsh import LshStats
from pipeline.dedup.near import Signed, first_exchange_near, near_rule, sign
from pipeline.dedup.verdicts import Verdicts, dropped_rows
from schemas.config_curation import DedupConfig

REASONS = ("dedup.exact", "dedup.near", "dedup.prompt")


@dataclass(kw_only=True)
class DedupResult(StageResult):
    """What the dedup stage did: besides the common counts, the rules' own figures.

    Fields left None were not computed (the rule or the stage was off)."""

    prior_matches: dict[str, int] | None = None  # rule -> copies of what an earlier run kept
    #: wall seconds of the keys, text hashes and MinHash signatures, computed together (dedup.keyed)
    signature_seconds: float | None = None
    lsh: LshStats | None = None
    clusters: int | None = None
    largest_cluster: int | None = None
    cross_tier_clusters: int | None = None
    enabled: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DedupResult:
        res = super().from_json(data)
        if isinstance(res.lsh, dict):
            res.lsh = LshStats(**res.lsh)
        return res


@dataclass
class DedupSplit:
    """A frame split by `deduplicate`: kept and dropped rows, the clusters, the index for later runs."""

    kept: pl.DataFrame
    dropped: pl.DataFrame  # input columns + reason, detail, dup_of
    clusters: pl.DataFrame  # cluster, conversation_id, origin, source, tier, reason, kept
    index: PriorIndex  # prior + what this run kept
    stats: DedupResult  # parts empty, seconds of this call


def deduplicate(df: pl.DataFrame, cfg: DedupConfig, prior: PriorIndex | None = None, keyed: Keyed | None = None,
                ) -> DedupSplit:
    """Split a canonical frame into kept and dropped rows (see the module docstring for the rules).
    `keyed`: its keys, hashes and signatures, if computed already (dedup.keyed.keyed_parts).

    Pure: the same input and config give the same output, whatever the input order of equal keys.
    """
    t0 = time.perf_counter()
    prior = prior or PriorIndex.empty(cfg.num_perm)
    t_keys = time.perf_counter()
    if keyed is None:
        keyed = key_frame(df, cfg)
    key_seconds = round(time.perf_counter() - t_keys, 3)
    keys = keyed.keys
    rank = survivor_rank(keys)
    exchanges = keys["exchanges"].to_numpy()
    exact_hash, prompt_hash, first_hash = keyed.exact_hash, keyed.prompt_hash, keyed.first_hash
    v = Verdicts.start(df.height)
    prior_matches: dict[str, int] = {}
    if cfg.exact:
        prior_matches["exact"] = equal_hash_rule(v, "dedup.exact", exact_hash, rank, prior.exact, "exact_hash")
        if first_hash is not None:
            first_exchange_copies(v, first_hash, exact_hash, exchanges, rank)
    # Signatures of what is alive now: for the near rules and for the index of later runs.
    sig = np.zeros((df.height, cfg.num_perm), dtype=np.uint32)
    signed: Signed | None = None
    lsh: LshStats | None = None
    if cfg.near or cfg.write_index:
        signed = sign(v, keyed, exchanges, cfg)
        sig = signed.rows
    if cfg.near and signed is not None:
        prior_matches["near"], lsh = near_rule(v, sig, rank, prior, cfg)
        if cfg.first_exchange:
            lsh.first_exchange_matches = first_exchange_near(v, signed, rank, exchanges, cfg)
    if cfg.prompt:
        prior_matches["prompt"] = equal_hash_rule(v, "dedup.prompt", prompt_hash, rank, prior.prompt, "prompt_hash")

    kept_rows = v.alive_rows()
    kept = df[kept_rows]
    dropped = dropped_rows(df, keys, v, cfg)
    clusters = cluster_table(kept, dropped)
    n_clusters, largest, cross_tier = cluster_counts(clusters)
    reasons = dropped["reason"].to_list()
    stats = DedupResult(
        stage="dedup", records_in=df.height, dropped={code: reasons.count(code) for code in REASONS},
        prior_matches=prior_matches, signature_seconds=key_seconds if cfg.near or cfg.write_index else None, lsh=lsh, records_out=int(len(kept_rows)),
        clusters=n_clusters, largest_cluster=largest, cross_tier_clusters=cross_tier,
        seconds=round(time.perf_counter() - t0, 3),
    )
    index = prior.plus(exact_hash.gather(kept_rows), prompt_hash.gather(kept_rows), kept["conversation_id"],
                       sig[kept_rows])
    return DedupSplit(kept=kept, dropped=dropped, clusters=clusters, index=index, stats=stats)


def _switched_off(df: pl.DataFrame) -> DedupSplit:
    """dedup.enabled = false: every row kept."""
    no_drops = df.clear().with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in ("reason", "detail", "dup_of"))
    stats = DedupResult(stage="dedup", records_in=df.height, records_out=df.height, enabled=False)
    return DedupSplit(kept=df, dropped=no_drops, clusters=pl.DataFrame(), index=PriorIndex.empty(), stats=stats)


def run_dedup(in_paths: list[Path], run_dir: Path, cfg: DedupConfig, rows_per_part: int = 50_000) -> DedupResult:
    """Deduplicate canonical parts into work/dedup/part-*.parquet; ledger/dedup.parquet gets a row per
    dropped copy, work/dedup/clusters.parquet the groups, work/dedup/stats.json the counts (returned:
    DedupResult.to_dict, with `seconds` the wall time of the whole stage)."""
    t0 = time.perf_counter()
    rd = claim_run_dir(run_dir)
    out_dir = rd.stage_dir("dedup")
    df = read_parts([Path(p) for p in in_paths])
    if cfg.enabled:
        t_keys = time.perf_counter()
        keyed = keyed_parts([Path(p) for p in in_paths], df, cfg)
        key_seconds = round(time.perf_counter() - t_keys, 3)
        split = deduplicate(df, cfg, load_prior(cfg.prior_indexes, cfg), keyed)
        if split.stats.signature_seconds is not None:
            split.stats.signature_seconds = key_seconds
    else:
        split = _switched_off(df)
    parts = write_parts(split.kept, out_dir, rows_per_part)
    write_ledger_part(run_dir, "dedup", ledger_rows(
        split.dropped, stage="dedup", outcome="dropped", reason=pl.col("reason"), detail=pl.col("detail"),
        dup_of=pl.col("dup_of"),
    ))
    if cfg.enabled:
        atomic_write_parquet(split.clusters, out_dir / "clusters.parquet")
        if cfg.write_index:
            write_index(split.index, rd.dedup_index, cfg)
    result = replace(split.stats, parts=parts, seconds=round(time.perf_counter() - t0, 3))
    result.write(out_dir / "stats.json")
    return result
