"""Deduplication: exact copies, near copies (MinHash LSH) and, optionally, same-prompt copies.

Rules, in order, each on what the previous left:
- dedup.exact: equal hash (xxh3-128) of the user and assistant turns after NFKC, lower case and
  whitespace collapsing. System prompts are left out: they are a template choice, and the same
  demonstration delivered with another system prompt is still the same demonstration.
- dedup.near: MinHash (pipeline.dedup.minhash) of word n-gram shingles of the normalised turns; LSH bands
  and rows as datasketch chooses them for the threshold (`_optimal_param`), weighted for recall
  (dedup.lsh_weights). Every pair
  that shares a band is a candidate; with `verify` a candidate counts only if its estimated Jaccard
  (share of equal signature values) reaches the threshold, which removes LSH false positives.
  Verified pairs are joined into clusters (connected components, i.e. union-find), so a chain
  A~B~C is one cluster even when A and C are less similar than the threshold.
- dedup.prompt (off by default): equal normalised user turns ("same instruction, different answer").

Which member of a group survives is fixed: the highest tier (expert > crowdsourced > synthetic,
schemas.conversation.TIER_RANK), then the longer assistant text, then the smaller origin string.
Conversations kept by earlier runs (their `dedup_index/`) outrank everything: a copy of one of them
is dropped with dup_of = the earlier run's conversation_id.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import xxhash

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.procpool import pool_map
from pipeline.core.rundir import RunDir, atomic_write_json, atomic_write_parquet
from pipeline.core.textnorm import normalized_turns
from pipeline.dedup.minhash import estimated_jaccard, text_signatures
from schemas.config_curation import DedupConfig
from schemas.conversation import TIER_RANK

INDEX_DIR = "dedup_index"
_SIG_PARALLEL_MIN_ROWS = 20_000


@dataclass
class PriorIndex:
    """What earlier runs kept: exact and prompt hashes, MinHash signatures, their conversation_ids."""

    exact: pl.DataFrame  # exact_hash, conversation_id
    prompt: pl.DataFrame  # prompt_hash, conversation_id
    sig_ids: list[str] = field(default_factory=list)
    signatures: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint32))
    meta: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, num_perm: int = 128) -> PriorIndex:
        return cls(
            exact=pl.DataFrame(schema={"exact_hash": pl.String, "conversation_id": pl.String}),
            prompt=pl.DataFrame(schema={"prompt_hash": pl.String, "conversation_id": pl.String}),
            signatures=np.zeros((0, num_perm), dtype=np.uint32),
        )


@dataclass
class DedupResult:
    kept: pl.DataFrame
    dropped: pl.DataFrame  # input columns + reason, detail, dup_of
    clusters: pl.DataFrame
    stats: dict
    index: PriorIndex  # prior + what this run kept


def _index_meta(cfg: DedupConfig) -> dict:
    return {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed, "scheme": cfg.scheme, "hash": cfg.hash}


def load_prior(paths: list[Path], cfg: DedupConfig) -> PriorIndex:
    """Read and merge earlier runs' indexes (a dedup_index/ dir or a run dir that holds one)."""
    prior = PriorIndex.empty(cfg.num_perm)
    for p in paths:
        d = Path(p)
        if (d / INDEX_DIR).is_dir():
            d = d / INDEX_DIR
        if not (d / "meta.json").is_file():
            raise FileNotFoundError(
                f"dedup.prior_indexes: {p} holds no dedup index (expected {d / 'meta.json'}); point it at an "
                f"earlier run directory or its {INDEX_DIR}/ folder"
            )
        meta = json.loads((d / "meta.json").read_text())
        if meta != _index_meta(cfg):
            raise ValueError(
                f"dedup.prior_indexes: {d} was built with {meta}, this run uses {_index_meta(cfg)}; "
                "signatures are comparable only with equal ngram, num_perm, seed, scheme and hash"
            )
        sig = pl.read_parquet(d / "signatures.parquet")
        prior = PriorIndex(
            exact=pl.concat([prior.exact, pl.read_parquet(d / "exact.parquet")]).unique(maintain_order=True),
            prompt=pl.concat([prior.prompt, pl.read_parquet(d / "prompt.parquet")]).unique(maintain_order=True),
            sig_ids=prior.sig_ids + sig["conversation_id"].to_list(),
            signatures=np.vstack([prior.signatures, np.stack(sig["sig"].to_numpy()).astype(np.uint32)])
            if sig.height
            else prior.signatures,
            meta=meta,
        )
    return prior


def write_index(index: PriorIndex, out_dir: Path, cfg: DedupConfig) -> Path:
    """Persist an index (prior + kept) for later runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(index.exact, out_dir / "exact.parquet")
    atomic_write_parquet(index.prompt, out_dir / "prompt.parquet")
    sig = pl.DataFrame(
        {"conversation_id": index.sig_ids, "sig": pl.Series(list(index.signatures), dtype=pl.List(pl.UInt32))}
    ) if len(index.sig_ids) else pl.DataFrame(schema={"conversation_id": pl.String, "sig": pl.List(pl.UInt32)})
    atomic_write_parquet(sig, out_dir / "signatures.parquet")
    atomic_write_json(out_dir / "meta.json", _index_meta(cfg))
    return out_dir


def _hash_texts(texts: pl.Series) -> pl.Series:
    """Stable 128-bit content hash (hex) of each string: persisted indexes compare across runs and
    versions, so polars' own (unstable) hash is not used."""
    return pl.Series([xxhash.xxh3_128_hexdigest(t.encode()) for t in texts.to_list()], dtype=pl.String)


def _signatures(texts: pl.Series, cfg: DedupConfig) -> np.ndarray:
    kw = {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed, "scheme": cfg.scheme, "hash": cfg.hash}
    n = texts.len()
    if cfg.workers <= 1 or n < _SIG_PARALLEL_MIN_ROWS:
        return text_signatures(texts, **kw)
    # Word hashing is a Python call per distinct word and the permutations are heavy numpy work:
    # worth spreading over processes.
    step = max(cfg.batch_rows, -(-n // cfg.workers))
    chunks = [texts.slice(s, step) for s in range(0, n, step)]
    parts = pool_map(_sig_worker, [(c.to_list(), kw) for c in chunks], cfg.workers)
    return np.vstack(parts)


def _sig_worker(args: tuple[list[str], dict]) -> np.ndarray:
    texts, kw = args
    return text_signatures(pl.Series(texts, dtype=pl.String), **kw)


def _lsh_pairs(sig: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Candidate pairs (i < j) of rows that agree on all values of at least one LSH band."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(cfg.threshold, cfg.num_perm, *cfg.lsh_weights)
    n = sig.shape[0]
    pairs: list[np.ndarray] = []
    # A band's values are folded into one 64-bit key (a collision merely adds a candidate, which
    # verification removes).
    mult = np.uint64(0x9E3779B97F4A7C15)
    for band in range(bands):
        block = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = np.zeros(n, dtype=np.uint64)
        for c in range(rows):
            key = (key ^ block[:, c]) * mult
            key ^= key >> np.uint64(29)
        order = np.argsort(key, kind="stable")
        k_sorted = key[order]
        edge = np.flatnonzero(np.diff(k_sorted)) + 1
        starts = np.concatenate([[0], edge])
        ends = np.concatenate([edge, [n]])
        sizes = ends - starts
        multi = sizes > 1
        for s, e in zip(starts[multi], ends[multi], strict=True):
            members = np.sort(order[s:e])
            if len(members) <= cfg.max_bucket:
                ii, jj = np.triu_indices(len(members), k=1)
                pairs.append(np.stack([members[ii], members[jj]], axis=1))
            else:
                pairs.append(np.stack([np.full(len(members) - 1, members[0]), members[1:]], axis=1))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), {"bands": bands, "rows": rows, "candidates": 0}
    allp = np.unique(np.concatenate(pairs).astype(np.int64), axis=0)
    return allp[:, 0], allp[:, 1], {"bands": bands, "rows": rows, "candidates": int(len(allp))}


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected component label of each of n nodes given undirected edges (union-find)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _group_survivors(groups: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row of its group that has the smallest rank (ranks are unique)."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((rank, groups))
    g_sorted = groups[order]
    first = np.concatenate([[True], g_sorted[1:] != g_sorted[:-1]])
    leader_of_group = order[first]
    group_index = np.cumsum(first) - 1
    out = np.empty(len(groups), dtype=np.int64)
    out[order] = leader_of_group[group_index]
    return out


def _why(tier_k: str, tier_d: str, len_k: int, len_d: int) -> str:
    if tier_k != tier_d:
        return f"higher tier ({tier_k} over {tier_d})"
    if len_k != len_d:
        return f"longer assistant text ({len_k} vs {len_d} characters)"
    return "same tier and length, earlier origin"


def _dedup_keys(df: pl.DataFrame) -> pl.DataFrame:
    """Per conversation: tier rank, assistant characters, origin and the normalised texts the rules
    compare (each message is normalised once; system prompts are left out of every text)."""
    role = pl.col("role")
    tagged = pl.concat_str([pl.lit("<"), role, pl.lit("> "), pl.col("norm")])
    ns = normalized_turns(df).filter(role != "system")
    per_row = ns.group_by("row", maintain_order=True).agg(
        tagged.str.join(" ").alias("exact_text"),
        pl.col("norm").filter(role == "user").str.join(" ").alias("prompt_text"),
        pl.col("norm").str.join(" ").alias("near_text"),
        tagged.head(2).str.join(" ").alias("first_text"),
        pl.col("norm").head(2).str.join(" ").alias("first_near"),
        (role == "assistant").sum().alias("exchanges"),
        pl.col("content").filter(role == "assistant").str.len_chars().sum().alias("asst_chars"),
    )
    texts = ["exact_text", "prompt_text", "near_text", "first_text", "first_near"]
    return (
        pl.DataFrame({"row": np.arange(df.height, dtype=np.int64)})
        .join(per_row, on="row", how="left")
        .with_columns(*[pl.col(c).fill_null("") for c in texts], pl.col("exchanges", "asst_chars").fill_null(0))
        .with_columns(
            df["tier"].replace_strict(TIER_RANK, default=len(TIER_RANK)).alias("tier_rank"), df["origin"]
        )
        .with_columns(pl.col("row").cast(pl.UInt32))
    )


def deduplicate(df: pl.DataFrame, cfg: DedupConfig, prior: PriorIndex | None = None) -> DedupResult:
    """Split a canonical frame into kept and dropped rows (see the module docstring for the rules).

    Pure: the same input and config give the same output, whatever the input order of equal keys.
    """
    t0 = time.perf_counter()
    prior = prior or PriorIndex.empty(cfg.num_perm)
    n = df.height
    keys = _dedup_keys(df)
    # rank 0 = the row that wins any group it is in.
    rank = np.empty(n, dtype=np.int64)
    rank[keys.sort(["tier_rank", "asst_chars", "origin"], descending=[False, True, False])["row"].to_numpy()] = (
        np.arange(n)
    )
    exact_hash = _hash_texts(keys["exact_text"])
    prompt_hash = _hash_texts(keys["prompt_text"])
    cids = df["conversation_id"].to_list()
    origins = df["origin"].to_list()
    tiers = df["tier"].to_list()
    asst = keys["asst_chars"].to_numpy()

    parent = np.full(n, -1, dtype=np.int64)  # row this one was dropped for (-1: kept, or see prior_of)
    prior_of: dict[int, str] = {}  # dropped for a conversation of an earlier run
    reason: dict[int, str] = {}
    jacc: dict[int, float] = {}
    alive = np.ones(n, dtype=bool)
    stats: dict = {"input": n, "dropped": {}, "prior_matches": {}}

    def hash_rule(rule: str, hashes: pl.Series, prior_table: pl.DataFrame, hash_col: str) -> None:
        idx = np.flatnonzero(alive)
        sub = hashes.gather(idx)
        # Earlier runs first.
        prior_map = dict(zip(prior_table[hash_col].to_list(), prior_table["conversation_id"].to_list(), strict=True))
        n_prior = 0
        if prior_map:
            for r, h in zip(idx.tolist(), sub.to_list(), strict=True):
                if h in prior_map:
                    prior_of[r], reason[r], alive[r] = prior_map[h], f"dedup.{rule}", False
                    n_prior += 1
            idx = np.flatnonzero(alive)
            sub = hashes.gather(idx)
        codes = pl.DataFrame({"h": sub}).select(pl.col("h").rank("dense")).to_series().to_numpy()
        leaders = idx[_group_survivors(codes.astype(np.int64), rank[idx])]
        for r, lead in zip(idx.tolist(), leaders.tolist(), strict=True):
            if r != lead:
                parent[r], reason[r], alive[r] = lead, f"dedup.{rule}", False
        stats["prior_matches"][rule] = n_prior

    exchanges = keys["exchanges"].to_numpy()
    opening: dict[int, int] = {}  # single-exchange row -> the longer row whose opening it copies
    if cfg.exact:
        hash_rule("exact", exact_hash, prior.exact, "exact_hash")
        if cfg.first_exchange:
            first_hash = _hash_texts(keys["first_text"]).to_list()
            full_hash = exact_hash.to_list()
            best: dict[str, int] = {}
            for r in np.flatnonzero(alive & (exchanges > 1))[np.argsort(rank[alive & (exchanges > 1)])].tolist():
                best.setdefault(first_hash[r], r)
            for r in np.flatnonzero(alive & (exchanges == 1)).tolist():
                k = best.get(full_hash[r])
                if k is not None:
                    parent[r], reason[r], alive[r], opening[r] = k, "dedup.exact", False, k

    sig = np.zeros((n, cfg.num_perm), dtype=np.uint32)
    if cfg.near or cfg.write_index:
        idx = np.flatnonzero(alive)
        # The openings of longer conversations (first_exchange rule) are signed in the same pass.
        openers = np.flatnonzero(alive & (exchanges > 1)) if cfg.near and cfg.first_exchange else idx[:0]
        t_sig = time.perf_counter()
        both_sigs = _signatures(pl.concat([keys["near_text"].gather(idx), keys["first_near"].gather(openers)]), cfg)
        sig[idx] = both_sigs[: len(idx)]
        opening_sig = dict(zip(openers.tolist(), range(len(idx), len(idx) + len(openers)), strict=True))
        stats["signature_seconds"] = round(time.perf_counter() - t_sig, 3)
    if cfg.near:
        idx = np.flatnonzero(alive)
        m = len(prior.sig_ids)
        both = np.vstack([sig[idx], prior.signatures]) if m else sig[idx]
        t_lsh = time.perf_counter()
        ci, cj, lsh = _lsh_pairs(both, cfg)
        est = estimated_jaccard(both, ci, cj)
        ok = est >= cfg.threshold if cfg.verify else np.ones(len(ci), dtype=bool)
        lsh["verified"] = int(ok.sum())
        lsh["rejected_false_positives"] = int((~ok).sum())
        comp = _components(len(idx) + m, ci[ok], cj[ok])
        # Prior rows outrank every row of this run.
        both_rank = np.concatenate([rank[idx], -1 - np.arange(m, 0, -1)]) if m else rank[idx]
        leaders = _group_survivors(comp.astype(np.int64), both_rank)
        n_prior = 0
        for local, lead in enumerate(leaders[: len(idx)].tolist()):
            if local == lead:
                continue
            r = int(idx[local])
            if lead >= len(idx):
                prior_of[r] = prior.sig_ids[lead - len(idx)]
                n_prior += 1
            else:
                parent[r] = int(idx[lead])
            reason[r], alive[r] = "dedup.near", False
            jacc[r] = float((both[local] == both[lead]).mean())
        stats["prior_matches"]["near"] = n_prior
        stats["lsh"] = lsh | {"seconds": round(time.perf_counter() - t_lsh, 3)}

    if cfg.near and cfg.first_exchange:
        singles = np.flatnonzero(alive & (exchanges == 1))
        longer = np.flatnonzero(alive & (exchanges > 1))
        if len(singles) and len(longer):
            first_sig = both_sigs[[opening_sig[r] for r in longer.tolist()]]
            both = np.vstack([sig[singles], first_sig])
            ci, cj, _ = _lsh_pairs(both, cfg)
            cross = (ci < len(singles)) & (cj >= len(singles))
            ci, cj = ci[cross], cj[cross]
            est = estimated_jaccard(both, ci, cj)
            ok = est >= cfg.threshold if cfg.verify else np.ones(len(ci), dtype=bool)
            for a_, b_, e in sorted(zip(ci[ok].tolist(), cj[ok].tolist(), est[ok].tolist(), strict=True),
                                    key=lambda x: (x[0], rank[longer[x[1] - len(singles)]])):
                r, k = int(singles[a_]), int(longer[b_ - len(singles)])
                if alive[r]:
                    parent[r], reason[r], alive[r], opening[r], jacc[r] = k, "dedup.near", False, k, e
            stats["lsh"]["first_exchange_matches"] = int(sum(1 for r in opening if reason[r] == "dedup.near"))

    if cfg.prompt:
        hash_rule("prompt", prompt_hash, prior.prompt, "prompt_hash")

    # A row dropped for a row that a later rule dropped points on to the one finally kept (or to the
    # earlier run's conversation that one copied).
    def final_of(r: int) -> int:
        while parent[r] >= 0:
            r = int(parent[r])
        return r

    kept_rows = np.flatnonzero(alive)
    drop_rows = np.flatnonzero(~alive)
    dup_of: list[str] = []
    details: list[str] = []
    reasons: list[str] = []
    for r in drop_rows.tolist():
        rule = reason[r]
        what = {
            "dedup.exact": "exact copy (same user and assistant turns after NFKC, case and whitespace "
            "normalisation)",
            "dedup.near": f"near copy (estimated Jaccard {jacc.get(r, 0):.2f} on word {cfg.ngram}-grams, "
            f"threshold {cfg.threshold})",
            "dedup.prompt": "same prompt (user turns equal after normalisation)",
        }[rule]
        k = final_of(r)
        if k in prior_of:
            dup_of.append(prior_of[k])
            details.append(f"{what} of conversation {prior_of[k]}, kept by an earlier run")
        else:
            dup_of.append(cids[k])
            if r in opening and opening[r] == k:
                details.append(f"{what} of the first exchange of {origins[k]}, a longer conversation that was kept")
            else:
                details.append(
                    f"{what} of {origins[k]}, which was kept: {_why(tiers[k], tiers[r], asst[k], asst[r])}"
                )
        reasons.append(rule)
    dropped = df[drop_rows].with_columns(
        pl.Series("reason", reasons, dtype=pl.String),
        pl.Series("detail", details, dtype=pl.String),
        pl.Series("dup_of", dup_of, dtype=pl.String),
    )
    kept = df[kept_rows]
    for code in ("dedup.exact", "dedup.near", "dedup.prompt"):
        stats["dropped"][code] = reasons.count(code)
    stats["kept"] = int(len(kept_rows))

    # Clusters: every group with a dropped member, keyed by the kept conversation.
    cl = dropped.select(
        pl.col("dup_of").alias("cluster"), "conversation_id", "origin", "source", "tier", "reason",
        pl.lit(False).alias("kept"),
    )
    leaders_df = kept.filter(pl.col("conversation_id").is_in(cl["cluster"].unique().implode())).select(
        pl.col("conversation_id").alias("cluster"), "conversation_id", "origin", "source", "tier",
        pl.lit(None, dtype=pl.String).alias("reason"), pl.lit(True).alias("kept"),
    )
    clusters = pl.concat([leaders_df, cl]).sort(["cluster", "kept", "origin"], descending=[False, True, False])
    sizes = clusters.group_by("cluster").len()
    stats["clusters"] = sizes.height
    stats["largest_cluster"] = int(sizes["len"].max() or 0)
    stats["cross_tier_clusters"] = int(
        clusters.group_by("cluster").agg(pl.col("tier").n_unique()).filter(pl.col("tier") > 1).height
    )
    stats["seconds"] = round(time.perf_counter() - t0, 3)

    index = PriorIndex(
        exact=pl.concat([prior.exact, pl.DataFrame({"exact_hash": exact_hash.gather(kept_rows),
                                                     "conversation_id": kept["conversation_id"]})]),
        prompt=pl.concat([prior.prompt, pl.DataFrame({"prompt_hash": prompt_hash.gather(kept_rows),
                                                       "conversation_id": kept["conversation_id"]})]),
        sig_ids=prior.sig_ids + kept["conversation_id"].to_list(),
        signatures=np.vstack([prior.signatures, sig[kept_rows]]) if len(prior.sig_ids) else sig[kept_rows],
        meta=_index_meta(cfg),
    )
    return DedupResult(kept=kept, dropped=dropped, clusters=clusters, stats=stats, index=index)


def read_parts(in_paths: list[Path]) -> pl.DataFrame:
    """Concatenate canonical Parquet parts (in the given order)."""
    from pipeline.ingest.canonical import empty_canonical

    frames = [pl.read_parquet(p) for p in in_paths]
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else empty_canonical()


def write_parts(df: pl.DataFrame, out_dir: Path, rows_per_part: int) -> list[str]:
    """Write a frame as part-00000.parquet, … (replacing earlier parts); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    paths = []
    for i, s in enumerate(range(0, max(df.height, 1), rows_per_part)):
        paths.append(str(atomic_write_parquet(df.slice(s, rows_per_part), out_dir / f"part-{i:05d}.parquet")))
    return paths


def run_dedup(in_paths: list[Path], run_dir: Path, cfg: DedupConfig, rows_per_part: int = 50_000) -> dict:
    """Deduplicate canonical parts into work/dedup/part-*.parquet; ledger/dedup.parquet gets a row per
    dropped copy, work/dedup/clusters.parquet the groups, work/dedup/stats.json the counts."""
    rd = RunDir.of(run_dir)
    out_dir = rd.stage_dir("dedup")
    df = read_parts([Path(p) for p in in_paths])
    if not cfg.enabled:
        result = DedupResult(kept=df, dropped=df.clear(), clusters=pl.DataFrame(), stats={"input": df.height,
                             "kept": df.height, "dropped": {}, "enabled": False}, index=PriorIndex.empty())
    else:
        result = deduplicate(df, cfg, load_prior(cfg.prior_indexes, cfg))
    parts = write_parts(result.kept, out_dir, rows_per_part)
    rows = ledger_rows(result.dropped, stage="dedup", outcome="dropped", reason=pl.col("reason"),
                       detail=pl.col("detail"), dup_of=pl.col("dup_of")) if result.dropped.height else \
        ledger_rows(df.clear(), stage="dedup", outcome="dropped", reason=None)
    write_ledger_part(run_dir, "dedup", rows)
    if result.clusters.width:
        atomic_write_parquet(result.clusters, out_dir / "clusters.parquet")
    if cfg.enabled and cfg.write_index:
        write_index(result.index, Path(run_dir) / INDEX_DIR, cfg)
    stats = result.stats | {"parts": parts}
    atomic_write_json(out_dir / "stats.json", stats)
    return stats
