"""Benchmark ingestion on the labelled corpus of ../shared/bench/make_corpus.py and check it against truth.jsonl.

    .venv/bin/python bench/bench_ingest.py /tmp/corpus/c200k [--run-dir DIR] [--chunk-rows N] [--datasets DIR]

Each source is ingested in a fresh process (so its peak RSS is its own); the script prints records/s
and peak memory per source, then checks the labels:
- every record labelled `malformed` is quarantined with a reason code;
- no clean record is quarantined (records labelled `empty_response` are reported apart: the canonical
  schema rejects empty turns, so they are quarantined as schema.empty_content by design);
- the ledger plus the kept parts hold every origin of truth.jsonl exactly once, and nothing else;
- Alpaca placeholder inputs ("Noinput", "N/A", …) are read as no input.
Then it times ingestion and a naive baseline on the Alpaca file side by side in this process
(json.loads + the pydantic Conversation model per record + a polars frame from dicts: what one would
write without this reader, which neither streams its output nor keeps the failures) and prints the ratio.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (source name, file in the corpus, tier, line-delimited?)
SOURCES = [
    ("alpaca", "synthetic/alpaca.jsonl", "synthetic", True),
    ("dolly", "crowdsourced/dolly.jsonl", "crowdsourced", True),
    ("sharegpt", "crowdsourced/sharegpt.json", "crowdsourced", False),
    ("oasst", "crowdsourced/oasst_messages.jsonl", "crowdsourced", None),
    ("expert", "expert/messages.jsonl", "expert", True),
]


def _ingest_one(args: tuple[str, str, str, str, int]) -> dict:
    """Runs in a child process: ingest one source, return its stats with seconds and peak RSS."""
    from pipeline.ingest.stage import ingest_source
    from schemas.config_sources import SourceConfig

    name, path, tier, run_dir, chunk_rows = args
    t0 = time.perf_counter()
    stats = ingest_source(SourceConfig(name=name, path=Path(path), tier=tier), Path(run_dir), chunk_rows=chunk_rows).to_json()
    stats["wall_s"] = time.perf_counter() - t0
    stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats


def origin_of(key: str) -> str:
    """truth key "<file>:<n>" -> our origin (1-based line for .jsonl, index for .json, message_id for OASST)."""
    file, n = key.split(":", 1)
    for name, rel, _, line_based in SOURCES:
        if rel == file:
            return f"{name}:{int(n) + 1}" if line_based else f"{name}:{n}"
    raise KeyError(file)


def naive_baseline(path: Path, limit: int) -> tuple[int, float]:
    """What one writes without a streaming reader: json.loads, the pydantic Conversation model, frame from dicts."""
    from typing import Literal

    import polars as pl
    from pydantic import BaseModel, Field

    class Message(BaseModel):  # the model a user would write for the canonical form
        role: Literal["system", "user", "assistant"]
        content: str = Field(min_length=1)

    class Conversation(BaseModel):
        origin: str
        source: str
        tier: Literal["expert", "crowdsourced", "synthetic"]
        messages: list[Message] = Field(min_length=2)

    t0 = time.perf_counter()
    rows, n = [], 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if n > limit:
                n -= 1
                break
            try:
                r = json.loads(line)
                user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
                c = Conversation(origin=f"a:{n}", source="a", tier="synthetic",
                                 messages=[{"role": "user", "content": user},
                                           {"role": "assistant", "content": r["output"]}])
                rows.append(c.model_dump(mode="json"))
            except Exception:  # noqa: BLE001 - the naive reader just skips what fails
                continue
    pl.DataFrame(rows)
    return n, time.perf_counter() - t0


#: Facts stated in ../shared/datasets/README.md, checked against what ingestion makes of the real files:
#: (name, path, format, oasst_paths, expected {read, kept, reasons}).
REAL = [
    ("oasst_val", "oasst1/en-validation.jsonl", "oasst", "best",
     {"read": 191, "kept": 188, "reasons": {"schema.orphan_reply": 3}}),  # 188 roots, 3 orphans
    ("alpaca_head335", "alpaca/rock0421-head335/alpaca_data.json", "alpaca", "best",
     {"read": 335, "kept": 334, "reasons": {"schema.empty_content": 1}}),  # record #284 has an empty output
    ("axolotl_sharegpt", "sharegpt/conversation.missingturns.json", "sharegpt", "best",
     {"read": 1, "kept": 0, "reasons": {"schema.empty_content": 1}}),  # one turn has an empty value
    ("kto", "openai-messages/kto_en_demo.json", "openai", "best", {"read": 300, "kept": 300, "reasons": {}}),
    ("t0_p3", "t0-p3-prompt-completion", "prompt_completion", "best", {"read": 1616, "kept": 1616, "reasons": {}}),
]


def check_real(base: Path, run_dir: Path) -> bool:
    """Ingest real public files and compare with the facts their README states."""
    from pipeline.ingest.stage import ingest_source
    from schemas.config_sources import SourceConfig

    ok = True
    print("\nreal files (../shared/datasets):")
    for name, rel, fmt, mode, want in REAL:
        s = ingest_source(SourceConfig(name=name, path=base / rel, format=fmt, tier="crowdsourced",
                                       oasst_paths=mode), run_dir)
        got = {"read": s.records_in, "kept": s.records_out, "reasons": s.dropped}
        ok &= got == want
        print(f"{'PASS' if got == want else 'FAIL'}  {name}: {got}" + ("" if got == want else f" expected {want}"))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, nargs="?", default=Path("/tmp/corpus/c200k"))
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    ap.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets",
                    help="also check real public files here against their README (skipped if absent)")
    a = ap.parse_args()
    run_dir = a.run_dir or Path(tempfile.mkdtemp(prefix="bench_ingest_"))

    import polars as pl

    from pipeline.core.ledger import read_ledger

    ctx = mp.get_context("spawn")
    results = []
    print(f"{'source':9} {'read':>8} {'kept':>8} {'quar':>6} {'drop':>5} {'sec':>7} {'rec/s':>9} {'MB/s':>6} {'peak MB':>8}")
    for name, rel, tier, _ in SOURCES:
        path = a.corpus / rel
        with ctx.Pool(1) as pool:
            s = pool.apply(_ingest_one, ((name, str(path), tier, str(run_dir), a.chunk_rows),))
        results.append(s)
        mb = path.stat().st_size / 1e6
        print(f"{name:9} {s['read']:8d} {s['kept']:8d} {s['quarantined']:6d} {s['dropped']:5d} {s['wall_s']:7.2f} "
              f"{s['read'] / s['wall_s']:9.0f} {mb / s['wall_s']:6.1f} {s['peak_rss_mb']:8.0f}")
    total = sum(s["read"] for s in results)
    secs = sum(s["wall_s"] for s in results)
    print(f"{'all':9} {total:8d} {'':8} {'':6} {'':5} {secs:7.2f} {total / secs:9.0f}   "
          f"peak RSS max {max(s['peak_rss_mb'] for s in results):.0f} MB")

    # ---- checks against truth.jsonl
    truth = [json.loads(line) for line in (a.corpus / "truth.jsonl").read_text().splitlines()]
    by_origin = {origin_of(t["key"]): t for t in truth}
    ledger = read_ledger(run_dir)
    kept = pl.concat([pl.read_parquet(p, columns=["origin", "messages"]) for s in results for p in s["parts"]])
    origins = ledger["origin"].to_list() + kept["origin"].to_list()
    counts = Counter(origins)
    dupes = [o for o, n in counts.items() if n > 1]
    missing = set(by_origin) - set(counts)
    extra = set(counts) - set(by_origin)
    quarantined = dict(ledger.filter(pl.col("outcome") == "quarantined").select("origin", "reason").iter_rows())
    malformed = [o for o, t in by_origin.items() if "malformed" in t["kinds"]]
    missed = [o for o in malformed if not quarantined.get(o)]
    empty = [o for o, t in by_origin.items() if "empty_response" in t["kinds"]]
    clean_quarantined = [o for o in quarantined if o in by_origin and not
                         {"malformed", "empty_response"} & set(by_origin[o]["kinds"])]
    placeholder = {o for o, t in by_origin.items() if "placeholder_input" in t["kinds"] and o.startswith("alpaca:")}
    ph = kept.filter(pl.col("origin").is_in(list(placeholder)))
    ph_bad = [r for r in ph.iter_rows(named=True)
              if r["messages"][0]["content"].rstrip().lower().endswith(("noinput", "n/a", "none"))]

    checks = {
        "ledger holds every origin once": not dupes and not missing and not extra,
        "every malformed record quarantined with a reason": not missed,
        "no clean record quarantined": not clean_quarantined,
        "placeholder inputs read as no input": not ph_bad and ph.height == len(placeholder),
    }
    print(f"\ntruth: {len(truth)} records, {len(malformed)} malformed, {len(empty)} empty_response; "
          f"ledger+kept: {len(origins)} rows, {len(dupes)} duplicate origins, {len(missing)} missing, {len(extra)} extra")
    print(f"malformed quarantined: {len(malformed) - len(missed)}/{len(malformed)}; reasons: "
          f"{dict(Counter(quarantined[o] for o in malformed if o in quarantined).most_common())}")
    print(f"empty_response quarantined (schema.empty_content): {sum(o in quarantined for o in empty)}/{len(empty)}")
    print(f"clean records quarantined: {len(clean_quarantined)} {clean_quarantined[:5]}")
    print(f"placeholder inputs: {ph.height}/{len(placeholder)} kept, {len(ph_bad)} still carry the placeholder")

    # ---- naive baseline on the same Alpaca file, same process, alternating, best of 3 each
    from pipeline.ingest.stage import ingest_source
    from schemas.config_sources import SourceConfig

    alpaca_path = a.corpus / "synthetic/alpaca.jsonl"
    src = SourceConfig(name="alpaca", path=alpaca_path, tier="synthetic")
    ours = naive = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        n_ours = ingest_source(src, Path(tempfile.mkdtemp(prefix="bench_cmp_")), chunk_rows=a.chunk_rows).records_in
        ours = max(ours, n_ours / (time.perf_counter() - t0))
        n, t = naive_baseline(alpaca_path, limit=n_ours)
        naive = max(naive, n / t)
    print(f"\nalpaca, same process, best of 3: ours {ours:.0f} rec/s vs naive json + pydantic Conversation "
          f"{naive:.0f} rec/s: ratio {ours / naive:.2f}x")
    if a.datasets.is_dir():
        checks["real files match their README"] = check_real(a.datasets, Path(tempfile.mkdtemp(prefix="bench_real_")))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"run dir: {run_dir}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
