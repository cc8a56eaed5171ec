"""Mixture benchmark: cap synthetic sources at 20% of training tokens and upsample expert data x2 on
the labelled corpus, run the whole curation (ingest, dedup, quality, mix, tokenize), then measure
the token shares in the train shards and check the ledger accounts for every record.

Side by side: the share synthetic data would get from the usual alternative, a cap on the number of
conversations (20% of the examples), computed on the same curated conversations; and selection with
diversify (top half per source, no two kept with estimated Jaccard >= 0.8) against the same greedy
walk with datasketch (MinHash per document + MinHashLSH query/insert), on a sample of the mix input.

    .venv/bin/python bench/bench_mix.py [--corpus /tmp/corpus/c200k] [--out /tmp/bench_mix]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import polars as pl

from pipeline.core.ledger import finalize_ledger, read_ledger
from schemas.config import RunConfig

SOURCES = [
    ("expert", "expert/messages.jsonl", "openai", "expert"),
    ("sharegpt", "crowdsourced/sharegpt.json", "sharegpt", "crowdsourced"),
    ("oasst", "crowdsourced/oasst_messages.jsonl", "oasst", "crowdsourced"),
    ("dolly", "crowdsourced/dolly.jsonl", "dolly", "crowdsourced"),
    ("alpaca", "synthetic/alpaca.jsonl", "alpaca", "synthetic"),
]
MAX_SYNTHETIC = 0.20
EXPERT_WEIGHT = 2


def make_config(corpus: Path, out: Path) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "bench-mix",
            "output_dir": str(out),
            "sources": [
                {"name": n, "path": str(corpus / p), "format": f, "tier": t} for n, p, f, t in SOURCES
            ],
            "mix": {
                "tiers": {
                    "synthetic": {"max_share": MAX_SYNTHETIC},
                    "expert": {"weight": EXPERT_WEIGHT},
                }
            },
        }
    )


def timed(label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"  {label:<9} {time.perf_counter() - t0:7.1f} s")
    return result


def curate(cfg: RunConfig, run_dir: Path) -> int:
    """Every curation stage in process (what flows/curate.py chains), returning records read."""
    from pipeline.ingest.stage import ingest_source
    from pipeline.mix.stage import run_mix
    from pipeline.render.encode import run_encode
    from pipeline.render.pack import run_pack

    t0 = time.perf_counter()
    ingest = [ingest_source(s, run_dir).to_json() for s in cfg.sources]
    print(f"  {'ingest':<9} {time.perf_counter() - t0:7.1f} s")
    read = sum(int(s["read"]) for s in ingest)
    parts = [Path(p) for s in ingest for p in s["parts"]]
    from pipeline.dedup.stage import run_dedup
    from pipeline.quality.stage import run_quality

    parts = [Path(p) for p in timed("dedup", run_dedup, parts, run_dir, cfg.dedup)["parts"]]
    parts = [Path(p) for p in timed("quality", run_quality, parts, run_dir, cfg.quality)["parts"]]
    encoded = [Path(p) for p in timed("encode", run_encode, parts, run_dir, cfg).parts]
    mix_stats = timed("mix", run_mix, parts, run_dir, cfg, encoded=encoded)
    timed("pack", run_pack, run_dir, cfg)
    (run_dir / "work" / "bench_mix_stats.json").write_text(json.dumps(mix_stats.after, indent=1))
    return read


def shard_shares(run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Tokens per source and tier in the train shards (segment lengths, joined to curated)."""
    segs = (
        pl.scan_parquet(sorted((run_dir / "shards").glob("train-*.parquet")))
        .select("seq_lens", "conversation_ids")
        .explode("seq_lens", "conversation_ids")
        .rename({"seq_lens": "tokens", "conversation_ids": "conversation_id"})
        .collect()
    )
    meta = (
        pl.scan_parquet(sorted((run_dir / "curated").glob("*.parquet")))
        .select("conversation_id", "source", "tier")
        .unique("conversation_id")
        .collect()
    )
    segs = segs.join(meta, on="conversation_id", how="left")
    total = segs["tokens"].sum()

    def by(col: str) -> pl.DataFrame:
        return (
            segs.group_by(col)
            .agg(pl.len().alias("segments"), pl.col("tokens").sum())
            .with_columns((pl.col("tokens") / total * 100).round(2).alias("share_pct"))
            .sort(col)
        )

    return by("source"), by("tier")


def count_capped_share(run_dir: Path) -> float:
    """Synthetic token share if synthetic were capped at 20% of the examples instead of the tokens
    (same curated conversations, same expert x2): the usual, count-based alternative."""
    mix = json.loads((run_dir / "work" / "mix" / "stats.json").read_text())
    before = mix["before"]["tiers"]
    per_conv = {t: v["tokens"] / max(v["conversations"], 1) for t, v in before.items()}
    examples = {t: v["conversations"] * (EXPERT_WEIGHT if t == "expert" else 1) for t, v in before.items()}
    others = sum(n for t, n in examples.items() if t != "synthetic")
    syn_examples = min(examples.get("synthetic", 0), MAX_SYNTHETIC / (1 - MAX_SYNTHETIC) * others)
    tokens = {t: n * per_conv[t] for t, n in examples.items() if t != "synthetic"}
    tokens["synthetic"] = syn_examples * per_conv.get("synthetic", 0.0)
    return 100 * tokens["synthetic"] / sum(tokens.values())


def diversify_side_by_side(run_dir: Path, cfg: RunConfig, sample: int, threshold: float = 0.8) -> None:
    """Time select() with diversify against datasketch's MinHash + MinHashLSH greedy walk."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from pipeline.core.textnorm import normalize, turns_text
    from pipeline.mix.select import priority_order, sample_keys, score_frame, select, source_quotas

    parts = sorted((run_dir / "work" / "quality").glob("part-*.parquet"))
    df = pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
    df = df.filter(pl.Series(sample_keys(df["conversation_id"], 1) < sample / max(df.height, 1)))
    scfg = cfg.select.model_copy(
        update={"enabled": True, "top_fraction": 0.5, "diversify_threshold": threshold}
    )
    scored = score_frame(df, scfg)
    t0 = time.perf_counter()
    ours = select(scored, scfg, cfg.seed)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = df.select(normalize(turns_text(("user", "assistant")))).to_series().to_list()
    n = scfg.shingle_words
    mhs = []
    for text in texts:
        w = text.split()
        grams = [" ".join(w[i : i + n]) for i in range(max(len(w) - n + 1, 1))]
        m = MinHash(num_perm=scfg.num_perm, seed=cfg.seed + 1)
        m.update_batch([g.encode() for g in grams])
        mhs.append(m)
    lsh = MinHashLSH(threshold=threshold, num_perm=scfg.num_perm)
    left = source_quotas(df, scfg)
    sources = df["source"].to_list()
    kept = np.zeros(df.height, dtype=bool)
    for i in priority_order(scored, sample_keys(df["conversation_id"], cfg.seed), by_score=True).tolist():
        if left[sources[i]] <= 0:
            continue
        if any(mhs[i].jaccard(mhs[j]) >= threshold for j in lsh.query(mhs[i])):
            continue
        kept[i] = True
        left[sources[i]] -= 1
        lsh.insert(i, mhs[i])
    t_ds = time.perf_counter() - t0
    print(
        f"\nselect + diversify on {df.height:,} conversations (top half per source, Jaccard >= {threshold}): "
        f"ours {t_ours:.1f} s ({int(ours['_selected'].sum()):,} kept), datasketch MinHash+MinHashLSH "
        f"{t_ds:.1f} s ({int(kept.sum()):,} kept): {t_ds / t_ours:.1f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/corpus/c200k"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_mix"))
    ap.add_argument(
        "--diversify-sample", type=int, default=20_000, help="conversations for the diversify timing"
    )
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    cfg = make_config(args.corpus, args.out)
    print(f"corpus {args.corpus}: synthetic max_share {MAX_SYNTHETIC:.0%}, expert weight x{EXPERT_WEIGHT}")
    read = curate(cfg, args.out)

    by_source, by_tier = shard_shares(args.out)
    mix = json.loads((args.out / "work" / "mix" / "stats.json").read_text())
    print("\ntrain-shard token shares by tier (mix plan -> shards):")
    for tier, segs, tokens, pct in by_tier.iter_rows():
        planned = mix["after"]["tiers"].get(tier, {}).get("share", 0.0) * 100
        print(
            f"  {tier:<13} {segs:>8,} segments {tokens:>12,} tokens  plan {planned:6.2f}%  shards {pct:6.2f}%"
        )
    print("by source:")
    for source, segs, tokens, pct in by_source.iter_rows():
        print(f"  {source:<13} {segs:>8,} segments {tokens:>12,} tokens  {pct:6.2f}%")

    syn = dict(zip(by_tier["tier"], by_tier["share_pct"], strict=True)).get("synthetic", 0.0)
    binding = "mix.capped" in mix["dropped"]
    ok_share = abs(syn - MAX_SYNTHETIC * 100) <= 1.0 if binding else syn <= MAX_SYNTHETIC * 100 + 1.0
    # Every tier's share in the shards within 1 point of the mix plan.
    gaps = {
        t: abs(pct - mix["after"]["tiers"].get(t, {}).get("share", 0.0) * 100)
        for t, pct in zip(by_tier["tier"], by_tier["share_pct"], strict=True)
    }
    ok_plan = max(gaps.values()) <= 1.0
    exp_curated = (
        pl.scan_parquet(sorted((args.out / "curated").glob("*.parquet")))
        .filter(pl.col("tier") == "expert")
        .select(pl.col("repeat").min().alias("lo"), pl.col("repeat").max().alias("hi"))
        .collect()
        .row(0)
    )
    ok_expert = exp_curated == (EXPERT_WEIGHT, EXPERT_WEIGHT)

    counts = finalize_ledger(args.out, read)
    ledger = read_ledger(args.out)
    by_stage = dict(ledger.group_by("stage").len().sort("stage").iter_rows())
    mix_reasons = dict(ledger.filter(pl.col("stage") == "mix").group_by("reason").len().iter_rows())
    print(
        f"\nledger: read {read:,} = {counts} (rows {ledger.height:,}, by stage {by_stage}); mix drops {mix_reasons}"
    )
    print(
        f"count-based cap (20% of examples) would give synthetic {count_capped_share(args.out):.2f}% of tokens"
    )
    print(
        f"\nsynthetic share in train shards {syn:.2f}% (target <= {MAX_SYNTHETIC:.0%}, within 1 point: {ok_share}); "
        f"cap binding: {binding}; largest plan-vs-shard gap {max(gaps.values()):.2f} points; "
        f"expert repeat {exp_curated} (x{EXPERT_WEIGHT}: {ok_expert}); ledger balances: True"
    )
    diversify_side_by_side(args.out, cfg, args.diversify_sample)
    if not (ok_share and ok_expert and ok_plan):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
