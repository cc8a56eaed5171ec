"""Benchmark: sftforge render+tokenize+mask+pack vs TRL's SFTTrainer dataset preparation vs plain
`encode_batch`, same conversations and same tokenizer, in one process run; plus packing efficiency
and the decode self-check on a corpus.

    .venv/bin/python bench/bench_tokenize.py                       # Alpaca files in ../shared/datasets
    .venv/bin/python bench/bench_tokenize.py --corpus RUN_DIR      # + every canonical part under RUN_DIR
                                                                   #   (e.g. an ingested c200k), all templates

TRL side: `SFTTrainer._prepare_dataset` (messages format, assistant_only_loss=True, packing with the
"bfd" strategy, max_length as ours), on a trainer built once around a tiny Llama model; datasets
caching is off so nothing is reused between runs. The TRL tokenizer is the same `tokenizers` object
wrapped in PreTrainedTokenizerFast with our ChatML template (which has {% generation %} markers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.render.masks import MaskOptions, SelfCheckError, check_conversation, encode_conversations  # noqa: E402
from pipeline.render.packing import best_fit_decreasing  # noqa: E402
from pipeline.render.templates import BUILTIN_TEMPLATES  # noqa: E402
from pipeline.render.tokenizer import train_bpe  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ALPACA_FILES = [
    "alpaca/gumbelsoft-random2000/alpaca_data.json",
    "alpaca/rock0421-head335/alpaca_data.json",
    "alpaca-cleaned/alpaca_data_cleaned_1000.json",
]


def alpaca_conversations() -> list[list[dict[str, str]]]:
    """Alpaca records as user/assistant messages (records with an empty output are left out)."""
    out = []
    for rel in ALPACA_FILES:
        for r in json.loads((SHARED / rel).read_text(encoding="utf-8")):
            prompt = r["instruction"].strip() + (("\n\n" + r["input"].strip()) if r["input"].strip() else "")
            if r["output"].strip():
                out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"].strip()}])
    return out


def corpus_conversations(run_dir: Path) -> pl.DataFrame:
    parts = sorted(run_dir.glob("work/ingest/*/part-*.parquet")) or sorted(run_dir.rglob("*.parquet"))
    frames = [pl.read_parquet(p, columns=["conversation_id", "source", "messages"]) for p in parts]
    return pl.concat(frames)


def time_interleaved(fns: dict, repeat: int = 5) -> tuple[dict[str, float], dict[str, float], dict[str, object]]:
    """Best wall time and best CPU time (all threads of the process) of each function over `repeat`
    rounds, the functions taking turns within each round, so load from other processes on a shared
    machine hits all of them alike. CPU time is the steadier figure when the machine is busy."""
    wall = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    results: dict[str, object] = {}
    for _ in range(repeat):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            results[k] = fn()
            wall[k] = min(wall[k], time.perf_counter() - t)
            cpu[k] = min(cpu[k], time.process_time() - c)
    return wall, cpu, results


def sftforge_prepare(convs, template, tok, max_len: int):  # noqa: ANN001, ANN201
    enc = encode_conversations(convs, template, tok, MaskOptions(max_seq_len=max_len), batch_size=4096)
    lengths = np.array([len(i) for i in enc.ids])
    rows = best_fit_decreasing(lengths[lengths > 0], max_len)
    return enc, rows


def trl_prepare(convs, tok, template, max_len: int, num_proc: int | None):  # noqa: ANN001, ANN201
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()
    datasets.disable_progress_bars()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, **template.tokenizer_config())
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    torch.manual_seed(0)
    out = tempfile.mkdtemp()
    args = SFTConfig(output_dir=out, assistant_only_loss=True, packing=True, packing_strategy="bfd",
                     max_length=max_len, dataset_num_proc=num_proc, report_to=[], use_cpu=True)
    ds = datasets.Dataset.from_list([{"messages": c} for c in convs])
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds.select(range(8)), processing_class=hf_tok)

    def run():  # noqa: ANN202
        return trainer._prepare_dataset(ds, hf_tok, args, True, None, "train")

    return run


def compare(convs, max_len: int, trl_num_proc: int | None) -> dict:  # noqa: ANN001
    template = BUILTIN_TEMPLATES["chatml"]
    texts = [template.render(c).text for c in convs]
    tok = train_bpe(texts, template, vocab_size=8192)
    n = len(convs)

    trl_run = trl_prepare(convs, tok, template, max_len, trl_num_proc)
    t, c, res = time_interleaved({
        "ours": lambda: sftforge_prepare(convs, template, tok, max_len),
        "plain": lambda: tok.encode_batch(texts, add_special_tokens=False),
        "plain_ids": lambda: [(e.ids, e.offsets) for e in tok.encode_batch(texts, add_special_tokens=False)],
    }, repeat=7)
    enc, rows = res["ours"]
    t2, c2, res2 = time_interleaved({"trl": trl_run, "ours": lambda: sftforge_prepare(convs, template, tok, max_len)}, 2)
    trl_ds = res2["trl"]
    t["ours"], c["ours"] = min(t["ours"], t2["ours"]), min(c["ours"], c2["ours"])
    t["trl"], c["trl"] = t2["trl"], c2["trl"]
    real = sum(len(i) for i in enc.ids)
    trl_tokens = sum(len(x) for x in trl_ds["input_ids"])
    return {
        "conversations": n,
        "examples_per_s_wall": {k: n / v for k, v in t.items()},
        "examples_per_s_cpu": {k: n / v for k, v in c.items()},
        "ratio_sftforge_over_trl": {"wall": t["trl"] / t["ours"], "cpu": c["trl"] / c["ours"]},
        "sftforge_share_of_plain_encode_batch": {"wall": t["plain"] / t["ours"], "cpu": c["plain"] / c["ours"]},
        "sftforge_share_of_plain_reading_ids_offsets": {
            "wall": t["plain_ids"] / t["ours"], "cpu": c["plain_ids"] / c["ours"]},
        "sftforge_packing_efficiency": real / (len(rows) * max_len),
        "trl_packing_efficiency": trl_tokens / (len(trl_ds) * max_len),
        "sftforge_tokens": real,
        "trl_tokens": trl_tokens,
    }


def corpus_checks(df: pl.DataFrame, max_len: int, templates: list[str]) -> dict:
    """Per template: packing efficiency and the decode self-check of every written conversation."""
    convs = df.get_column("messages").to_list()
    cids = df.get_column("conversation_id").to_list()
    out = {}
    for name in templates:
        template = BUILTIN_TEMPLATES[name]
        t0 = time.perf_counter()
        tok = train_bpe([template.render(c).text for c in convs[:50_000]], template, vocab_size=8192)
        t1 = time.perf_counter()
        opts = MaskOptions(max_seq_len=max_len)
        enc = encode_conversations(convs, template, tok, opts)
        t2 = time.perf_counter()
        lengths = np.array([len(i) for i in enc.ids])
        kept = lengths > 0
        rows = best_fit_decreasing(lengths[kept], max_len)
        t3 = time.perf_counter()
        failures = []
        checked = 0
        for i in np.flatnonzero(kept):
            try:
                check_conversation(cids[i], convs[i], enc.ids[i], enc.masks[i], template, tok, opts)
            except SelfCheckError as e:
                failures.append(str(e)[:300])
            checked += 1
        t4 = time.perf_counter()
        out[name] = {
            "conversations": len(convs), "written": int(kept.sum()),
            "dropped": {r: enc.reasons.count(r) for r in set(enc.reasons) if r},
            "packing_efficiency": float(lengths[kept].sum() / (len(rows) * max_len)), "rows": len(rows),
            "self_check_checked": checked, "self_check_failures": len(failures), "first_failures": failures[:3],
            "seconds": {"train_tokenizer": t1 - t0, "encode_mask": t2 - t1, "pack": t3 - t2, "self_check": t4 - t3},
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--trl-num-proc", type=int, default=None, help="TRL's dataset_num_proc (default: one process)")
    ap.add_argument("--corpus", type=Path, help="a run dir with canonical parts (e.g. work/ingest/*/part-*.parquet)")
    ap.add_argument("--corpus-sample", type=int, default=20_000, help="corpus conversations in the TRL comparison")
    ap.add_argument("--templates", default=",".join(BUILTIN_TEMPLATES))
    ap.add_argument("--skip-trl", action="store_true")
    args = ap.parse_args()

    results: dict = {}
    if not args.skip_trl:
        results["alpaca"] = compare(alpaca_conversations(), args.max_len, args.trl_num_proc)
        print("alpaca", json.dumps(results["alpaca"], indent=1), flush=True)
    if args.corpus:
        df = corpus_conversations(args.corpus)
        if not args.skip_trl:
            sample = df.sample(min(args.corpus_sample, df.height), seed=0).get_column("messages").to_list()
            results["corpus_sample"] = compare(sample, args.max_len, args.trl_num_proc)
            print("corpus_sample", json.dumps(results["corpus_sample"], indent=1), flush=True)
        results["corpus"] = corpus_checks(df, args.max_len, args.templates.split(","))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
