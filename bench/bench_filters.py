"""Every quality rule over real public files of different kinds: what each rule drops, per source.

    .venv/bin/python bench/bench_filters.py [--datasets ../shared/datasets] [--corpus /tmp/corpus/c200k]
                                            [--samples 3] [--samples-out FILE] [--no-corpus]

Sources (../shared/datasets, see its README; Dolly is not there): prose (Alpaca x3, Self-Instruct
seeds, T0/P3 prompt-completion tasks, OASST validation trees, ShareGPT dummy, KTO demo split by its
label, AlpacaEval's davinci-003 answers as a single-turn set), code (MBPP, as plain and as fenced
answers), math (AQuA-RAT, GSM8K-style worked solutions, BELLE school math in Chinese), expert-written
(OASST's hand-picked en_100 trees, HuatuoGPT-o1's medical answers), Chinese (BELLE math, OASST zh,
zh Self-Instruct seeds). Each conversation is built as a newcomer would build it from the file.

Prints, per source and rule, the share of records the rule drops (run alone, under the tier
policy the configuration gives) and a few of the dropped records; PII as the share of records whose
text a redaction changes; language with `keep` matching the source (en or zh) and, for the Chinese
sources, how many pass an English-only run; contamination on exact copies of five benchmarks'
prompts, on real overlaps, and on a benchmark's own other split. Then the targets of issue 13 with
PASS/FAIL, the hand labels in bench/filter_labels.jsonl scored against the rules, and, on the labelled
corpus (../shared/bench/make_corpus.py), the recall of each planted defect and the CPU time of the
quality stage (the machine is shared: CPU time, not wall time, is what to compare).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import gzip
import json
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from bench_curation import SOURCES as CORPUS_SOURCES  # the labelled corpus's files, and their origins
from bench_curation import truth_key

from pipeline.ingest.canonical import from_records
from pipeline.quality.batch import Batch, norm_lists
from pipeline.quality.registry import FILTERS
from pipeline.quality.stage import filter_frame
from schemas.config_curation import BenchmarkFile, ContaminationConfig, QualityConfig
from schemas.conversation import conversation_id

BENCH = Path(__file__).resolve().parent
DATASETS = BENCH.parents[1] / "shared" / "datasets"
LABELS = BENCH / "filter_labels.jsonl"
HEURISTIC = ("echo", "length", "repetition", "refusal", "placeholder")
PLACEHOLDER_INPUTS = {"", "noinput", "<noinput>", "n/a", "none", "no input", "null", "nan"}

# --------------------------------------------------------------------------- reading the files


def read_records(path: Path) -> list[dict]:
    """A JSON array, one object, or JSON lines (several files here are JSONL despite a .json name)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            raw = f.read()
    else:
        raw = path.read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        return [json.loads(line) for line in raw.splitlines() if line.strip()]


def conv(origin: str, tier: str, pairs: list[tuple[str, str]], system: str | None = None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        m for u, a in pairs for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})
    ]
    return {"conversation_id": conversation_id(msgs), "origin": origin, "source": origin.split(":")[0],
            "tier": tier, "messages": msgs}


def _joined(instruction: str, extra: str | None) -> str:
    extra = (extra or "").strip()
    return instruction if extra.lower() in PLACEHOLDER_INPUTS else f"{instruction}\n\n{extra}"


def alpaca(name: str, path: str, tier: str = "synthetic") -> Callable[[Path], list[dict]]:
    def load(ds: Path) -> list[dict]:
        out = []
        for i, r in enumerate(read_records(ds / path)):
            pairs = [(q, a) for q, a in r.get("history") or []]
            pairs.append((_joined(r["instruction"], r.get("input")), r["output"]))
            out.append(conv(f"{name}:{i}", tier, pairs))
        return out
    return load


def self_instruct(name: str, path: str) -> Callable[[Path], list[dict]]:
    def load(ds: Path) -> list[dict]:
        return [conv(f"{name}:{i}", "synthetic", [(_joined(r["instruction"], r["instances"][0]["input"]),
                                                    r["instances"][0]["output"])])
                for i, r in enumerate(read_records(ds / path))]
    return load


def t0(ds: Path) -> list[dict]:
    out = []
    for f in sorted((ds / "t0-p3-prompt-completion").glob("*.jsonl")):
        for i, r in enumerate(read_records(f) if f.stat().st_size else []):
            out.append(conv(f"t0-p3:{f.stem[:24]}/{i}", "synthetic",
                            [(r["prompt"], r["completion"].removesuffix("<|endoftext|>"))]))
    return out


def _best_path(node: dict, children: dict[str, list[dict]]) -> list[dict]:
    """The root-to-leaf path taking the best-ranked (lowest rank) live reply at each step."""
    path = [node]
    while True:
        kids = [c for c in children.get(path[-1]["message_id"], []) if not c.get("deleted")
                and c.get("review_result") is not False]
        if not kids:
            return path
        path.append(min(kids, key=lambda c: (c.get("rank") is None, c.get("rank") or 0)))


def _pairs_of(path: list[dict]) -> list[tuple[str, str]]:
    while path and path[-1]["role"] != "assistant":
        path = path[:-1]
    return [(path[i]["text"], path[i + 1]["text"]) for i in range(0, len(path) - 1, 2)]


def oasst_flat(name: str, path: str, tier: str) -> Callable[[Path], list[dict]]:
    def load(ds: Path) -> list[dict]:
        rows = read_records(ds / path)
        children: dict[str, list[dict]] = {}
        for r in rows:
            if r.get("parent_id"):
                children.setdefault(r["parent_id"], []).append(r)
        roots = [r for r in rows if r.get("parent_id") is None and not r.get("deleted")]
        return [conv(f"{name}:{r['message_id']}", tier, p) for r in roots if (p := _pairs_of(_best_path(r, children)))]
    return load


def oasst_nested(name: str, path: str, tier: str) -> Callable[[Path], list[dict]]:
    def load(ds: Path) -> list[dict]:
        out = []
        for root in read_records(ds / path):
            children: dict[str, list[dict]] = {}
            stack = [root]
            while stack:
                n = stack.pop()
                children[n["message_id"]] = n.get("replies") or []
                stack += n.get("replies") or []
            if p := _pairs_of(_best_path(root, children)):
                out.append(conv(f"{name}:{root['message_id']}", tier, p))
        return out
    return load


def sharegpt(ds: Path) -> list[dict]:
    out = []
    for i, r in enumerate(read_records(ds / "sharegpt/dummy_conversation.json")):
        t = r["conversations"]
        out.append(conv(f"sharegpt-dummy:{i}", "crowdsourced", [(t[j]["value"], t[j + 1]["value"])
                                                               for j in range(0, len(t) - 1, 2)]))
    return out


def kto(good: bool) -> Callable[[Path], list[dict]]:
    def load(ds: Path) -> list[dict]:
        out = []
        for i, r in enumerate(read_records(ds / "openai-messages/kto_en_demo.json")):
            m = r["messages"]
            if r["label"] == good:
                out.append(conv(f"kto-{'good' if good else 'bad'}:{i}", "crowdsourced",
                                [(m[j]["content"], m[j + 1]["content"]) for j in range(0, len(m) - 1, 2)]))
        return out
    return load


def alpaca_eval(ds: Path) -> list[dict]:
    return [conv(f"alpaca-eval-davinci:{i}", "synthetic", [(r["instruction"], r["output"])])
            for i, r in enumerate(read_records(ds / "eval/alpaca_eval/model_outputs.json"))]


def mbpp(fenced: bool) -> Callable[[Path], list[dict]]:
    def load(ds: Path) -> list[dict]:
        out = []
        for r in read_records(ds / "code/mbpp.jsonl"):
            prompt = r["text"] + "\nYour code should pass these tests:\n\n" + "\n".join(r["test_list"])
            code = f"```python\n{r['code'].replace(chr(13), '')}\n```" if fenced else r["code"]
            out.append(conv(f"mbpp{'-fenced' if fenced else ''}:{r['task_id']}", "synthetic", [(prompt, code)]))
        return out
    return load


def aqua(ds: Path) -> list[dict]:
    out = []
    for split in ("dev", "test"):
        for i, r in enumerate(read_records(ds / f"math/aqua-rat/{split}.json")):
            out.append(conv(f"aqua-rat:{split}/{i}", "synthetic",
                            [(r["question"] + "\nOptions: " + ", ".join(r["options"]), r["rationale"])]))
    return out


def gsm8k(ds: Path) -> list[dict]:
    return [conv(f"gsm8k-style:{i}", "crowdsourced", [(r["question"], r["answer"])])
            for i, r in enumerate(read_records(ds / "eval/gsm8k/test.jsonl"))]


def huatuo(ds: Path) -> list[dict]:
    return [conv(f"huatuo-o1:{i}", "expert", [(r["Open-ended Verifiable Question"],
                 f"## Thinking\n\n{r['Complex_CoT']}\n\n## Final Response\n\n{r['Response']}")])
            for i, r in enumerate(read_records(ds / "reasoning/huatuogpt-o1/demo_data.json"))]


#: name -> (kind, clean, keep languages, loader). "clean": a source whose records are good data,
#: on which the heuristic rules should drop (almost) nothing.
SOURCES: dict[str, tuple[str, bool, list[str], Callable[[Path], list[dict]]]] = {
    "alpaca-gumbelsoft": ("prose", True, ["en"], alpaca("alpaca-gumbelsoft", "alpaca/gumbelsoft-random2000/alpaca_data.json")),
    "alpaca-rock335": ("prose", True, ["en"], alpaca("alpaca-rock335", "alpaca/rock0421-head335/alpaca_data.json")),
    "alpaca-cleaned": ("prose", True, ["en"], alpaca("alpaca-cleaned", "alpaca-cleaned/alpaca_data_cleaned_1000.json")),
    "self-instruct": ("prose", True, ["en"], self_instruct("self-instruct", "self-instruct-seeds/seed_tasks.jsonl")),
    "t0-p3": ("prose", True, ["en"], t0),
    "oasst-val": ("prose", True, ["en"], oasst_flat("oasst-val", "oasst1/en-validation.jsonl", "crowdsourced")),
    "sharegpt-dummy": ("prose", True, ["en"], sharegpt),
    "kto-good": ("prose", True, ["en"], kto(True)),
    "kto-bad": ("prose", False, ["en"], kto(False)),
    "alpaca-eval-davinci": ("prose", True, ["en"], alpaca_eval),
    "oasst-en100": ("expert", True, ["en"], oasst_nested("oasst-en100", "oasst1/en_100_message.jsonl", "expert")),
    "huatuo-o1": ("expert", True, ["en"], huatuo),
    "mbpp": ("code", True, ["en"], mbpp(False)),
    "mbpp-fenced": ("code", True, ["en"], mbpp(True)),
    "aqua-rat": ("math", True, ["en"], aqua),
    "gsm8k-style": ("math", True, ["en"], gsm8k),
    "belle-math-zh": ("math", True, ["zh"], alpaca("belle-math-zh", "multilingual/belle-school-math/dev1K.json")),
    "oasst-zh": ("chinese", True, ["zh"], alpaca("oasst-zh", "alpaca-history/oaast_sft_zh.json", "crowdsourced")),
    "self-instruct-zh": ("chinese", True, ["zh"], self_instruct("self-instruct-zh", "self-instruct-seeds/zh_seed_tasks.json")),
}

# --------------------------------------------------------------------------- running the rules


def with_norm(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(norm_lists(df))


def user_text(msgs: list[dict]) -> str:
    return " | ".join(m["content"] for m in msgs if m["role"] == "user")


def assistant_text(msgs: list[dict]) -> str:
    return " | ".join(m["content"] for m in msgs if m["role"] == "assistant")


def short(s: str, n: int = 150) -> str:
    s = " ".join((s or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def rule_config(base: QualityConfig, rule: str, keep: list[str] | None = None) -> QualityConfig | None:
    """The configuration that runs one rule alone (None when this version has no such rule)."""
    if rule not in FILTERS:
        return None
    upd: dict[str, Any] = {"filters": [rule], "workers": 1}
    if keep is not None:
        upd["language"] = base.language.model_copy(update={"keep": keep})
    return base.model_copy(update=upd)


def run_rule(df: pl.DataFrame, base: QualityConfig, rule: str, keep: list[str] | None = None) -> dict | None:
    """One rule alone on a source, under the tier policy of the configuration: dropped rows (with
    detail) and, for PII, the rows whose text changed."""
    cfg = rule_config(base, rule, keep)
    if cfg is None:
        return None
    t0 = time.process_time()
    res = filter_frame(df, cfg)
    secs = time.process_time() - t0
    dropped = {o: d for o, d in res.dropped.select("origin", "detail").iter_rows()}
    changed: dict[str, str] = {}
    if rule == "pii" and res.kept.height:
        after = res.kept.select("origin", "messages", "pii_redactions").filter(pl.col("pii_redactions") > 0)
        before = dict(df.select("origin", "messages").iter_rows())
        for origin, msgs, _ in after.iter_rows():
            old = [m["content"] for m in before[origin]]
            new = [m["content"] for m in msgs]
            diffs = [(a, b) for a, b in zip(old, new, strict=False) if a != b]
            if diffs:
                changed[origin] = diff_snippet(*diffs[0])
    raw = None
    if rule in FILTERS and rule != "pii":
        fr = FILTERS[rule](Batch(with_norm(df)), cfg)
        raw = int((~fr.keep).sum())
    return {"dropped": dropped, "changed": changed, "raw": raw, "cpu": secs, "kept": res.kept}


def diff_snippet(a: str, b: str, ctx: int = 40) -> str:
    """The first difference of two texts, before -> after, with some context."""
    op = next(o for o in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if o[0] != "equal")
    _, i1, i2, j1, j2 = op
    return f"…{a[max(0, i1 - ctx):i2 + ctx]}… -> …{b[max(0, j1 - ctx):j2 + ctx]}…".replace("\n", " ")


# --------------------------------------------------------------------------- contamination


def benchmark_files(ds: Path, tmp: Path) -> dict[str, BenchmarkFile]:
    """The five benchmarks as BenchmarkFiles (MMLU's 57 CSVs and MT-bench's turns flattened to one file)."""
    tmp.mkdir(parents=True, exist_ok=True)
    mmlu_rows = []
    for split in ("test", "dev"):
        rows = []
        for f in sorted((ds / f"eval/mmlu/{split}").glob("*.csv")):
            with open(f, newline="", encoding="utf-8") as fh:
                for i, r in enumerate(csv.DictReader(fh)):
                    choices = "\n".join(f"{'ABCD'[j]}. {r[f'choice{j}']}" for j in range(4))
                    rows.append({"id": f"{f.stem}/{i}", "question": r["question"],
                                 "with_choices": f"{r['question']}\n{choices}"})
        pl.DataFrame(rows).write_parquet(tmp / f"mmlu_{split}.parquet")
        mmlu_rows.append(len(rows))
    mt = [{"id": f"{r['question_id']}/{t}", "turn": x} for r in read_records(ds / "eval/mt_bench/question.jsonl")
          for t, x in enumerate(r["turns"])]
    pl.DataFrame(mt).write_parquet(tmp / "mt_bench.parquet")
    return {
        "gsm8k": BenchmarkFile(name="gsm8k", path=ds / "eval/gsm8k/test.jsonl", field="question"),
        "humaneval": BenchmarkFile(name="humaneval", path=ds / "eval/humaneval/HumanEval.jsonl.gz", field="prompt",
                                   id_field="task_id"),
        "mmlu": BenchmarkFile(name="mmlu", path=tmp / "mmlu_test.parquet", field="question", id_field="id"),
        "mt_bench": BenchmarkFile(name="mt_bench", path=tmp / "mt_bench.parquet", field="turn", id_field="id"),
        "alpaca_eval": BenchmarkFile(name="alpaca_eval", path=ds / "eval/alpaca_eval/model_outputs.json",
                                     field="instruction"),
    }


def contamination_section(ds: Path, tmp: Path, frames: dict[str, pl.DataFrame], base: QualityConfig) -> dict:
    from pipeline.quality.contamination import read_benchmark

    benches = benchmark_files(ds, tmp)
    out: dict[str, Any] = {}
    print("\n== contamination ==")
    cfg_all = base.model_copy(update={"filters": ["contamination"], "workers": 1,
                                      "contamination": base.contamination.model_copy(
                                          update={"benchmarks": list(benches.values())})})
    # 1. exact copies of each benchmark's prompts, as the user turn of a conversation
    print("exact copies of benchmark prompts caught (a conversation whose user turn is the prompt):")
    for name, b in benches.items():
        items = read_benchmark(b)
        df = from_records([conv(f"copy-{name}:{i}", "synthetic", [(t, "Here is my answer.")])
                           for i, t in enumerate(items["text"].to_list()) if t and t.strip()])
        cfg = cfg_all.model_copy(update={"contamination": cfg_all.contamination.model_copy(update={"benchmarks": [b]})})
        res = filter_frame(df, cfg)
        words = items["text"].fill_null("").str.count_matches(r"\w+")
        short_ = int((words < base.contamination.ngram).sum())
        missed = res.kept["messages"].to_list()
        out[f"copies.{name}"] = res.dropped.height / max(df.height, 1)
        print(f"  {name:<12} {res.dropped.height:>6}/{df.height:<6} = {res.dropped.height / max(df.height, 1):7.2%}"
              f"   ({short_} of its prompts are under {base.contamination.ngram} words)"
              + (f"; e.g. missed: {short(missed[0][0]['content'], 90)!r}" if missed else ""))
    # 2. real overlap, a benchmark's own other split, unrelated sources
    checks = [("oasst-val", "AlpacaEval's 188 oasst prompts are the roots of this file: 188 expected"),
              ("aqua-rat", "no overlap with any of the five"),
              ("alpaca-gumbelsoft", "no overlap expected"), ("alpaca-cleaned", "no overlap expected"),
              ("alpaca-rock335", "no overlap expected"), ("self-instruct", "no overlap expected"),
              ("t0-p3", "no overlap expected"), ("mbpp", "a different code benchmark"),
              ("oasst-en100", "6 roots are in en-validation (so maybe in AlpacaEval)")]
    print("real sources against all five benchmarks (every hit listed below is read by hand):")
    for src, note in checks:
        df = frames[src]
        res = filter_frame(df, cfg_all)
        out[f"hits.{src}"] = res.dropped.height
        print(f"  {src:<20} {res.dropped.height:>5} hits of {df.height:<6} ({note})")
        for o, d in res.dropped.select("origin", "detail").head(4).iter_rows():
            print(f"      {o}: {short(d, 120)}")
    # MMLU's dev split as a training set would hold it: each question with its four choices.
    mdev = read_benchmark(BenchmarkFile(name="mmlu_dev", path=tmp / "mmlu_dev.parquet", field="with_choices",
                                        id_field="id"))
    df = from_records([conv(f"mmlu-dev:{i}", "synthetic", [(t, "The answer is B.")])
                       for i, t in zip(mdev["item"].to_list(), mdev["text"].to_list(), strict=True)])
    cfg = cfg_all.model_copy(update={"contamination": cfg_all.contamination.model_copy(
        update={"benchmarks": [benches["mmlu"]]})})
    res = filter_frame(df, cfg)
    out["hits.mmlu-dev"] = res.dropped.height
    print(f"  MMLU dev questions vs MMLU test (a benchmark's own training split): {res.dropped.height} of {df.height}")
    test_text = dict(read_benchmark(benches["mmlu"]).select("item", "text").iter_rows())
    for o, d, msgs in res.dropped.select("origin", "detail", "messages").iter_rows():
        item = d.rsplit("item ", 1)[-1].split(" ")[0] if d else ""
        print(f"      {o}: {short(msgs[0]['content'], 90)!r}\n        ~ test {item}: {short(test_text.get(item, '?'), 90)!r}")
    # 3. contamination behind other failures: checked on every record, or only on what the others kept?
    both = pl.concat([frames["oasst-val"], frames["gsm8k-style"]])
    full = filter_frame(both, cfg_all.model_copy(update={"filters": list(base.filters)}))
    alone = filter_frame(both, cfg_all)
    n_full = full.dropped.filter(pl.col("reason") == "quality.contamination").height
    out["reported_share"] = n_full / max(alone.dropped.height, 1)
    print(f"  contaminated records (oasst-val + gsm8k-style vs all five) found by the rule alone {alone.dropped.height}; "
          f"reported as quality.contamination in the full run {n_full}")
    return out


# --------------------------------------------------------------------------- the labelled corpus

PLANTED = {"empty_response": "quality.empty", "refusal": "quality.refusal", "repetitive": "quality.repetition",
           "non_english": "quality.language", "pii": "quality.pii", "contaminated": "quality.contamination",
           "too_long": "quality.length"}


def _ingest(args: tuple) -> dict:
    from pipeline.ingest.stage import ingest_source

    return ingest_source(*args).to_json()


def corpus_section(corpus: Path, ds: Path, cache: Path, workers: int) -> dict:
    """Ingest the labelled corpus once (cached), run the whole quality stage on it, score the planted
    defects against truth.jsonl and measure the stage's CPU time."""
    from pipeline.core.ledger import read_ledger
    from pipeline.core.procpool import pool_map
    from pipeline.quality.stage import run_quality
    from schemas.config_sources import SourceConfig

    print(f"\n== labelled corpus {corpus} ==")
    done = cache / "ingest.json"
    if not done.exists():
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        sources = [SourceConfig(name=n, path=corpus / f, tier=t) for n, (f, t, _) in CORPUS_SOURCES.items()]
        stats = pool_map(_ingest, [(s, cache) for s in sources], workers)
        done.write_text(json.dumps([p for s in stats for p in s["parts"]]))
    parts = [Path(p) for p in json.loads(done.read_text())]
    run = cache.parent / (cache.name + "-quality")
    if run.exists():
        shutil.rmtree(run)
    qcfg = QualityConfig(workers=workers, contamination=ContaminationConfig(benchmarks=[
        BenchmarkFile(name="gsm8k", path=ds / "eval/gsm8k/test.jsonl", field="question"),
        BenchmarkFile(name="humaneval", path=ds / "eval/humaneval/HumanEval.jsonl.gz", field="prompt",
                      id_field="task_id"),
    ]))
    before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t0 = time.perf_counter()
    res = run_quality(parts, run, qcfg)
    wall = time.perf_counter() - t0
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum((a.ru_utime + a.ru_stime) - (b.ru_utime + b.ru_stime) for a, b in zip(after, before, strict=True))
    n_in = res.records_in
    print(f"quality stage: {n_in:,} records in, {res.records_out:,} out; CPU {cpu:.1f} s "
          f"({n_in / cpu:,.0f} records per CPU-second), wall {wall:.1f} s with {workers} workers")
    print(f"  seconds per filter (summed over workers): {res.filter_seconds}")
    truth = {t["key"]: t for t in map(json.loads, (corpus / "truth.jsonl").read_text().splitlines())}
    ledger = pl.concat([read_ledger(cache), read_ledger(run)])  # ingest's rows, then quality's
    reason = {truth_key(o): r for o, r in ledger.select("origin", "reason").iter_rows()}
    kept = pl.concat([pl.read_parquet(p) for p in res.parts])
    redacted = {truth_key(o) for o, n in kept.select("origin", "pii_redactions").iter_rows() if n > 0}
    flagged: dict[str, list[str]] = {}
    if "quality_flags" in kept.columns:
        for o, fl in kept.select("origin", "quality_flags").iter_rows():
            if fl:
                flagged[truth_key(o)] = list(fl)
    reached = {truth_key(o) for o in pl.concat([pl.read_parquet(p, columns=["origin"]) for p in parts])["origin"]}
    out: dict[str, Any] = {"cpu": cpu, "records_per_cpu_s": n_in / cpu}
    print(f"  {'planted defect':<16}{'records':>9}{'dropped by its rule':>22}{'caught (dropped or flagged)':>30}")
    for kind, code in PLANTED.items():
        # An empty reply never reaches quality: ingest quarantines it (schema.empty_content).
        rows = [k for k, t in truth.items() if kind in t["kinds"] and (k in reached or kind == "empty_response")]
        rule = code.split(".", 1)[1]

        def right(k: str, code: str = code, kind: str = kind) -> bool:
            r = reason.get(k) or ""
            return r == code or (kind == "pii" and k in redacted) or (
                kind == "empty_response" and r.startswith(("schema.", "ingest.")))

        dropped = sum(1 for k in rows if right(k))
        caught = sum(1 for k in rows if right(k) or rule in flagged.get(k, []))
        out[f"recall.{kind}"] = caught / max(len(rows), 1)
        print(f"  {kind:<16}{len(rows):>9}{dropped / max(len(rows), 1):>22.4f}{caught / max(len(rows), 1):>30.4f}")
    uniques = [k for k, t in truth.items() if t["kinds"] == ["unique"] and k in reached]
    wrong: dict[str, int] = {}
    for k in uniques:
        if k in reason:
            wrong[reason[k]] = wrong.get(reason[k], 0) + 1
    n_wrong = sum(wrong.values())
    out["unique_dropped"] = n_wrong / max(len(uniques), 1)
    print(f"  unique records dropped by quality: {n_wrong:,}/{len(uniques):,} = {n_wrong / max(len(uniques), 1):.3%} "
          f"{dict(sorted(wrong.items(), key=lambda x: -x[1]))}")
    return out


# --------------------------------------------------------------------------- hand labels


def labels_section(frames: dict[str, pl.DataFrame], base: QualityConfig) -> None:
    """Score the rules on the hand-labelled records of bench/filter_labels.jsonl."""
    if not LABELS.exists():
        return
    labels = [json.loads(x) for x in LABELS.read_text().splitlines() if x.strip() and not x.startswith("//")]
    print(f"\n== hand labels ({len(labels)} records, {LABELS.name}; how they were made: filter_labels.md) ==")
    by_rule: dict[str, list[dict]] = {}
    for lab in labels:
        by_rule.setdefault(lab["rule"], []).append(lab)
    print(f"  {'rule':<14}{'labelled':>9}{'defects':>9}{'caught':>8}{'good':>7}{'dropped':>9}")
    for rule, labs in sorted(by_rule.items()):
        origins = {lab["origin"] for lab in labs}
        srcs = {o.split(":")[0] for o in origins}
        df = pl.concat([frames[s] for s in srcs if s in frames]).filter(pl.col("origin").is_in(list(origins)))
        keep = {lab["origin"]: SOURCES[lab["origin"].split(":")[0]][2] for lab in labs}
        hit: set[str] = set()
        for lang in {tuple(v) for v in keep.values()}:
            sub = df.filter(pl.col("origin").is_in([o for o, v in keep.items() if tuple(v) == lang]))
            r = run_rule(sub, base, rule, list(lang))
            if r is None:
                continue
            hit |= set(r["dropped"]) | set(r["changed"])
        defects = [lab for lab in labs if lab["label"] == "defect"]
        good = [lab for lab in labs if lab["label"] == "ok"]
        c = sum(lab["origin"] in hit for lab in defects)
        d = sum(lab["origin"] in hit for lab in good)
        print(f"  {rule:<14}{len(labs):>9}{len(defects):>9}{c:>8}{len(good):>7}{d:>9}")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/corpus/c200k"))
    ap.add_argument("--no-corpus", action="store_true", help="skip the labelled corpus (recall and CPU time)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/sftforge-bench-filters/ingest"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=3, help="dropped records shown per source and rule")
    ap.add_argument("--samples-out", type=Path, default=None, help="every dropped record as JSONL (for labelling)")
    a = ap.parse_args()
    ds = a.datasets
    base = QualityConfig(workers=1)
    rules = [r for r in (*HEURISTIC, "language", "pii") if r in FILTERS]
    missing = [r for r in (*HEURISTIC, "language", "pii") if r not in FILTERS]
    frames = {name: from_records(load(ds)) for name, (_, _, _, load) in SOURCES.items()}
    print(f"sources: {', '.join(f'{n} {df.height}' for n, df in frames.items())}")
    print("rules: " + ", ".join(rules) + (f" (not in this version: {', '.join(missing)})" if missing else ""))
    table: dict[tuple[str, str], dict] = {}
    samples_out = open(a.samples_out, "w") if a.samples_out else None  # noqa: SIM115
    cpu: dict[str, float] = {}
    for name, df in frames.items():
        kind, clean, keep, _ = SOURCES[name]
        msgs = dict(df.select("origin", "messages").iter_rows())
        for rule in rules:
            r = run_rule(df, base, rule, keep if rule == "language" else None)
            if r is None:
                continue
            cpu[rule] = cpu.get(rule, 0.0) + r["cpu"]
            hits = r["changed"] if rule == "pii" else r["dropped"]
            table[(name, rule)] = {"n": len(hits), "share": len(hits) / max(df.height, 1), "raw": r["raw"],
                                   "hits": hits}
            for o, d in hits.items():
                if samples_out:
                    samples_out.write(json.dumps({"source": name, "kind": kind, "rule": rule, "origin": o, "detail": d,
                                                  "user": user_text(msgs[o])[:600],
                                                  "assistant": assistant_text(msgs[o])[:1200]}, ensure_ascii=False) + "\n")
        if "language" in rules and keep != ["en"]:
            # Records written in Chinese (Han letters the majority of all letters) must not pass an
            # English-only run, however short (the conversations that are in English may).
            han = df.select(pl.col("messages").list.eval(pl.element().struct.field("content")).list.join(" ")
                            .alias("t")).select(pl.col("t").str.count_matches(r"\p{Han}").alias("h"),
                                                pl.col("t").str.count_matches(r"\p{L}").alias("l"))
            zh = df.filter(pl.Series((han["h"] >= 0.5 * han["l"]) & (han["l"] > 0)))
            r = run_rule(zh, base, "language", ["en"])
            table[(name, "en-only")] = {"n": zh.height - len(r["dropped"]), "of": zh.height,
                                        "share": 1 - len(r["dropped"]) / max(zh.height, 1), "raw": None,
                                        "hits": {o: "passed" for o in r["kept"]["origin"].to_list()}}
    if samples_out:
        samples_out.close()

    print("\n== share of records each rule drops, run alone (PII: share of records a redaction changes) ==")
    print("   raw = the rule's own verdict before the tier policy, where it differs")
    head = f"{'source':<21}{'kind':<8}{'n':>6} " + "".join(f"{r:>12}" for r in rules)
    print(head)
    for name, df in frames.items():
        kind = SOURCES[name][0]
        cells = []
        for rule in rules:
            c = table.get((name, rule))
            cell = f"{c['share']:.1%}" if c else "-"
            if c and c["raw"] is not None and c["raw"] != c["n"]:
                cell = f"{c['share']:.1%}/{c['raw'] / df.height:.0%}raw"
            cells.append(f"{cell:>12}")
        print(f"{name:<21}{kind:<8}{df.height:>6} " + "".join(cells))
    for name in frames:
        if (name, "en-only") in table:
            c = table[(name, "en-only")]
            print(f"  {name}: {c['n']} of its {c['of']} Chinese-script records ({c['share']:.1%}) pass an "
                  "English-only run (language.keep = ['en'])")
    print(f"CPU seconds per rule over all sources: { {k: round(v, 2) for k, v in cpu.items()} }")

    if a.samples:
        print(f"\n== samples of what each rule dropped (up to {a.samples} per source and rule) ==")
        for name, df in frames.items():
            msgs = dict(df.select("origin", "messages").iter_rows())
            for rule in rules:
                c = table.get((name, rule))
                if not c or not c["n"]:
                    continue
                print(f"-- {name} / {rule}: {c['n']} ({c['share']:.1%})")
                for o, d in list(c["hits"].items())[: a.samples]:
                    text = d if rule == "pii" else f"{d} | A: {short(assistant_text(msgs[o]), 110)!r}"
                    print(f"   {o}: {short(text, 260)}")

    cont = contamination_section(ds, Path("/tmp/sftforge-bench-filters/bench"), frames, base)
    labels_section(frames, base)
    corpus = None
    if not a.no_corpus and (a.corpus / "truth.jsonl").exists():
        corpus = corpus_section(a.corpus, ds, a.cache, a.workers)

    print("\n== targets (issue 13) ==")
    results: list[tuple[str, bool]] = []
    for name in frames:
        kind, clean, _, _ = SOURCES[name]
        if not clean:
            continue
        for rule in HEURISTIC:
            c = table.get((name, rule))
            if c:
                results.append((f"{rule} drops <= 1% of {name}: {c['share']:.2%}", c["share"] <= 0.01))
        c = table.get((name, "language"))
        if c and kind in ("code", "math"):
            results.append((f"language drops <= 0.5% of {name}: {c['share']:.2%}", c["share"] <= 0.005))
        c = table.get((name, "pii"))
        if c:
            results.append((f"PII changes <= 0.5% of {name}: {c['share']:.2%}", c["share"] <= 0.005))
        c = table.get((name, "en-only"))
        if c:
            results.append((f"Chinese-script records of {name} passing an English-only run: {c['share']:.2%} "
                            "(<= 0.5%)", c["share"] <= 0.005))
    for k, v in cont.items():
        if k.startswith("copies."):
            results.append((f"exact copies of {k[7:]} prompts caught: {v:.2%}", v >= 0.999))
    results.append((f"oasst-val roots found in AlpacaEval: {cont['hits.oasst-val']} (188 expected)",
                    cont["hits.oasst-val"] >= 188))
    results.append((f"contaminated records reported as quality.contamination: {cont['reported_share']:.1%}",
                    cont["reported_share"] >= 0.999))
    if corpus:
        for k, v in corpus.items():
            if k.startswith("recall."):
                results.append((f"planted {k[7:]} caught: {v:.4f} (>= 0.95)", v >= 0.95))
    for text, ok in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    print(f"  {sum(ok for _, ok in results)}/{len(results)} targets met")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
