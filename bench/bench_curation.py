"""The whole curation front half on a labelled corpus: ingest -> dedup -> quality, timed, with peak
memory and precision/recall against the corpus's truth.jsonl (../shared/bench/make_corpus.py).

    .venv/bin/python bench/bench_curation.py --corpus /tmp/corpus/c200k [--workers 2] [--out DIR]

Prints records/s, seconds per stage, peak RSS (this process and the largest child), and per label:
near duplicates (Jaccard >= 0.85) and exact duplicates found (same cluster as their source), the kept
member of cross-tier clusters being the highest tier, recall of each planted defect, "unique"
records wrongly dropped, and how often the fast language path agrees with plain langdetect on the
full text.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import polars as pl

from pipeline.core.ledger import read_ledger
from pipeline.dedup.stage import run_dedup
from pipeline.ingest.stage import ingest_source
from pipeline.quality.stage import run_quality
from schemas.config_curation import BenchmarkFile, ContaminationConfig, DedupConfig, QualityConfig
from schemas.config_sources import SourceConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
#: source name -> (file in the corpus, tier, locator kind)
SOURCES = {
    "alpaca": ("synthetic/alpaca.jsonl", "synthetic", "line"),
    "sharegpt": ("crowdsourced/sharegpt.json", "crowdsourced", "index"),
    "oasst": ("crowdsourced/oasst_messages.jsonl", "crowdsourced", "root"),
    "dolly": ("crowdsourced/dolly.jsonl", "crowdsourced", "line"),
    "expert": ("expert/messages.jsonl", "expert", "line"),
}
PLANTED = {  # truth kind -> reasons that count as the intended catch
    "empty_response": ("schema.", "ingest.", "quality.empty"),
    "refusal": ("quality.refusal",),
    "repetitive": ("quality.repetition",),
    "non_english": ("quality.language",),
    "pii": ("quality.pii",),
    "contaminated": ("quality.contamination",),
}


def truth_key(origin: str) -> str:
    name, loc = origin.split(":", 1)
    file, _, kind = SOURCES[name]
    if kind == "line":
        return f"{file}:{int(loc) - 1}"
    if kind == "root":
        return f"{file}:{loc.split('/')[0]}"
    return f"{file}:{loc}"


def _ingest(args: tuple[SourceConfig, Path]) -> dict:
    return ingest_source(*args).to_json()


def peak_rss_mb() -> tuple[float, float]:
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _origins_of(paths: list[str], truth: dict, kind: str) -> list[str]:
    origins = pl.concat([pl.read_parquet(p, columns=["origin"]) for p in paths])["origin"].to_list()
    return [o for o in origins if kind in truth.get(truth_key(o), {}).get("kinds", [])]


def language_agreement(paths: list[str], n: int, seed: int = 0, only_origins: set[str] | None = None) -> dict:
    """Labels of pipeline.quality.langid.detect_turns (precheck, truncation, cache) vs plain langdetect on
    the full text, on a random sample of user/assistant turns."""
    from pipeline.quality.langid import detect_text, detect_turns
    from schemas.config_curation import LanguageConfig

    frame = pl.concat([pl.read_parquet(p, columns=["origin", "messages"]) for p in paths])
    if only_origins is not None:
        frame = frame.filter(pl.col("origin").is_in(list(only_origins)))
    turns = (
        frame.explode("messages").unnest("messages")
        .filter(pl.col("role").is_in(["user", "assistant"]))
    )
    rnd = random.Random(seed)
    idx = sorted(rnd.sample(range(turns.height), min(n, turns.height)))
    texts = turns["content"].gather(idx)
    cfg = LanguageConfig()
    ours, letters = detect_turns(texts, cfg)
    t0 = time.perf_counter()
    full = [detect_text(t) for t in texts.to_list()]
    plain_s = time.perf_counter() - t0
    decided = [(a, b) for a, b in zip(ours.to_list(), full, strict=True) if a is not None]
    agree = sum(a == b for a, b in decided)
    en_agree = sum((a == "en") == (b == "en") for a, b in decided)
    return {
        "sample": len(idx), "abstained": len(idx) - len(decided), "decided": len(decided),
        "agreement": round(agree / max(len(decided), 1), 4),
        "agreement_en_vs_not": round(en_agree / max(len(decided), 1), 4),
        "plain_detect_ms_per_turn": round(plain_s / len(idx) * 1e3, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/corpus/c200k"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/sftforge-bench-curation"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lang-sample", type=int, default=2000)
    a = ap.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    sources = [SourceConfig(name=n, path=a.corpus / f, tier=t) for n, (f, t, _) in SOURCES.items()]
    dcfg = DedupConfig(workers=a.workers)
    qcfg = QualityConfig(workers=a.workers, contamination=ContaminationConfig(benchmarks=[
        BenchmarkFile(name="gsm8k", path=SHARED / "datasets/eval/gsm8k/test.jsonl", field="question"),
        BenchmarkFile(name="humaneval", path=SHARED / "datasets/eval/humaneval/HumanEval.jsonl.gz",
                      field="prompt", id_field="task_id"),
    ]))

    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as ex:
        ing = list(ex.map(_ingest, [(s, a.out) for s in sorted(sources, key=lambda s: s.name)]))
    t_ing = time.perf_counter() - t0
    parts = [p for s in ing for p in s["parts"]]
    t1 = time.perf_counter()
    ded = run_dedup(parts, a.out, dcfg)
    t_ded = time.perf_counter() - t1
    t2 = time.perf_counter()
    qua = run_quality(ded.parts, a.out, qcfg)
    t_q = time.perf_counter() - t2
    total = time.perf_counter() - t0
    read = sum(s["read"] for s in ing)
    rss_self, rss_child = peak_rss_mb()
    print(f"records read {read:,}; kept after quality {qua.records_out:,}; load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine slows every stage)")
    print(f"time: ingest {t_ing:.1f}s, dedup {t_ded:.1f}s (signatures {ded.signature_seconds}s), "
          f"quality {t_q:.1f}s; total {total:.1f}s = {read / total:,.0f} records/s (target >= 3,000)")
    print(f"quality seconds per filter (summed over workers): {qua.filter_seconds}")
    print(f"peak RSS: main process {rss_self:,.0f} MB, largest child {rss_child:,.0f} MB (target < 4,096)")
    cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    print(f"CPU time of the run (this process + its workers): {cpu:.1f}s = {read / cpu:,.0f} records per CPU-second; "
          f"on 2 otherwise idle cores at most {2 * read / cpu:,.0f} records/s")

    # --- outcomes per truth key ----------------------------------------------------------------
    truth = {t["key"]: t for t in map(json.loads, (a.corpus / "truth.jsonl").read_text().splitlines())}
    ledger = read_ledger(a.out)
    kept = pl.concat([pl.read_parquet(p, columns=["origin", "conversation_id", "pii_redactions"])
                      for p in qua.parts])
    clusters = pl.read_parquet(a.out / "work/dedup/clusters.parquet")
    dedup_kept = pl.concat([pl.read_parquet(p, columns=["origin", "conversation_id"]) for p in ded.parts])
    reason: dict[str, str] = {}
    for origin, r in ledger.select("origin", "reason").iter_rows():
        reason[truth_key(origin)] = r
    redacted = {truth_key(o) for o, n in kept.select("origin", "pii_redactions").iter_rows() if n > 0}
    # The cluster of each record after dedup: its own conversation_id if dedup kept it, else dup_of.
    cluster: dict[str, str] = {truth_key(o): c for o, c in dedup_kept.iter_rows()}
    for origin, d in ledger.filter(pl.col("stage") == "dedup").select("origin", "dup_of").iter_rows():
        cluster[truth_key(origin)] = d

    def pair_recall(kind: str, min_j: float | None = None) -> tuple[int, int]:
        rows = [t for t in truth.values() if kind in t["kinds"] and (min_j is None or (t["jaccard"] or 0) >= min_j)]
        ok = sum(1 for t in rows if t["key"] in cluster and cluster.get(t["key"]) == cluster.get(t["dup_of"]))
        return ok, len(rows)

    for kind, min_j in (("exact_dup", None), ("near_dup", 0.85), ("near_dup", None)):
        ok, n = pair_recall(kind, min_j)
        label = kind + (f" (jaccard >= {min_j})" if min_j else " (all)")
        print(f"{label}: in their source's cluster {ok:,}/{n:,} = {ok / max(n, 1):.4f}")

    rank = {"expert": 0, "crowdsourced": 1, "synthetic": 2}
    ct = clusters.group_by("cluster").agg(
        pl.col("tier").n_unique().alias("tiers"),
        pl.col("tier").replace_strict(rank).min().alias("best"),
        pl.col("tier").filter(pl.col("kept")).replace_strict(rank).first().alias("kept_tier"),
    ).filter(pl.col("tiers") > 1)
    good = ct.filter(pl.col("kept_tier") == pl.col("best")).height
    print(f"cross-tier clusters whose kept member is the highest tier: {good:,}/{ct.height:,} = "
          f"{good / max(ct.height, 1):.4f}")

    stage_of = {truth_key(o): st for o, st in ledger.select("origin", "stage").iter_rows()}
    for kind, codes in PLANTED.items():
        rows = [t["key"] for t in truth.values() if kind in t["kinds"]]
        right = sum(1 for k in rows if (reason.get(k) or "").startswith(codes) or (kind == "pii" and k in redacted))
        any_ = sum(1 for k in rows if k in reason or (kind == "pii" and k in redacted))
        # Planted records that an earlier stage already removed (e.g. copies of each other, which
        # dedup drops first) never reach the quality filter that targets them.
        reached = [k for k in rows if stage_of.get(k) not in ("ingest", "dedup")]
        right_q = sum(1 for k in reached if (reason.get(k) or "").startswith(codes) or
                      (kind == "pii" and k in redacted))
        print(f"{kind}: removed or redacted by any stage {any_:,}/{len(rows):,} = {any_ / max(len(rows), 1):.4f}; "
              f"caught by its rule {right / max(len(rows), 1):.4f} of all, "
              f"{right_q:,}/{len(reached):,} = {right_q / max(len(reached), 1):.4f} of those reaching quality")

    # Unique records dropped: wrong unless dedup dropped them for a member of their own truth group.
    group: dict[str, str] = {}
    for t in truth.values():
        if t["dup_of"]:
            group[t["key"]] = t["dup_of"]
    kept_origin = {c: truth_key(o) for c, o in clusters.filter(pl.col("kept")).select("cluster", "origin").iter_rows()}
    uniques = [t["key"] for t in truth.values() if t["kinds"] == ["unique"]]
    wrong: dict[str, int] = {}
    for k in uniques:
        r = reason.get(k)
        if r is None:
            continue
        if r.startswith("dedup."):
            survivor = kept_origin.get(cluster.get(k))
            if survivor is not None and group.get(survivor, survivor) == group.get(k, k):
                continue
        wrong[r] = wrong.get(r, 0) + 1
    n_wrong = sum(wrong.values())
    print(f"unique records wrongly dropped: {n_wrong:,}/{len(uniques):,} = {n_wrong / len(uniques):.4%} "
          f"(target <= 0.5%); by reason {dict(sorted(wrong.items(), key=lambda x: -x[1]))}")
    print(f"dedup: {json.dumps({k: ded.to_json()[k] for k in ('dropped', 'clusters', 'largest_cluster', 'lsh')})}")
    print(f"quality dropped: {qua.dropped}; redactions {qua.redactions}; "
          f"contamination hits {qua.contamination_hits}; languages {qua.lang}")
    if a.lang_sample:
        print(f"language, all turns: fast path vs plain detect on full text: {language_agreement(parts, a.lang_sample)}")
        foreign = [truth_key_origin for truth_key_origin in _origins_of(parts, truth, "non_english")]
        print("language, turns of non_english records: "
              f"{language_agreement(parts, a.lang_sample, only_origins=set(foreign))}")


if __name__ == "__main__":
    main()
