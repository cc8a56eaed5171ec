"""Model-based selection: scoring throughput, and the proxy ablation on real data.

1. Scoring throughput (conversations/s, this CPU): a tiny Llama reference model (a BPE tokenizer
   trained on the texts, ChatML, seeded weights) scores real Alpaca conversations — each one twice,
   with and without its prompt — through the score stage (packed forwards, varlen attention, head-only
   loss), side by side with the direct transformers loop a user would write (one padded-free forward
   per sequence, full logits, cross-entropy on the targets). Same ids, same numbers; the ratio is printed.

2. The ablation on the real files of ../shared/datasets: expert = alpaca-cleaned (1,000), crowdsourced
   = oasst1 en-validation (its trees), synthetic = Alpaca random 2,000. Run A curates them with no
   selection; a tiny Llama trained on run A's shards for `--ref-steps` steps is the reference model
   (a proxy trained on the pool itself: no weights can be downloaded). Run B selects the top half of each
   source's tokens by IFD (IFD > 1 dropped), run C the top half by the heuristic score; both run the
   proxy ablation: the same small model trained at equal tokens on the selection, a random subset and
   each tier, validation loss per source and tier on the same held-out conversations.

    PREFECT_HOME=$(mktemp -d) DO_NOT_TRACK=1 .venv/bin/python bench/bench_select.py [--out /tmp/bench_select]
        [--score-records 400] [--ref-steps 200] [--max-tokens 150000] [--skip-ablation] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SOURCES = [
    ("expert", "alpaca-cleaned/alpaca_data_cleaned_1000.json", "alpaca", "expert"),
    ("oasst", "oasst1/en-validation.jsonl", "oasst", "crowdsourced"),
    ("alpaca", "alpaca/gumbelsoft-random2000/alpaca_data.json", "alpaca", "synthetic"),
]


# ----------------------------------------------------------------------------- 1. throughput


def alpaca_frame(n: int) -> pl.DataFrame:
    from pipeline.ingest.canonical import from_records
    from schemas.conversation import conversation_id

    recs = json.loads((DATASETS / SOURCES[2][1]).read_text(encoding="utf-8"))[:n]
    rows = []
    for i, r in enumerate(recs):
        user = r["instruction"].strip() + (f"\n\n{r['input'].strip()}" if r["input"].strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"].strip()}]
        if user and msgs[1]["content"]:
            rows.append({"conversation_id": conversation_id(msgs), "origin": f"alpaca:{i}", "source": "alpaca",
                         "tier": "synthetic", "messages": msgs})  # fmt: skip
    return from_records(rows)


def tiny_reference(out: Path, texts: list[str], hidden: int, layers: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from pipeline.render.templates import BUILTIN_TEMPLATES
    from pipeline.render.tokenizer import train_bpe

    chatml = BUILTIN_TEMPLATES["chatml"]
    tok = train_bpe(texts, chatml, vocab_size=8192, min_frequency=2)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                 chat_template=chatml.jinja)  # fmt: skip
    hf.save_pretrained(out)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(hf), hidden_size=hidden, intermediate_size=3 * hidden,
                                 num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=2048,
                                 eos_token_id=hf.eos_token_id)).save_pretrained(out)  # fmt: skip
    return out


def throughput(out: Path, n: int, hidden: int, layers: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.score.reference import reference_pairs
    from pipeline.score.stage import score_conversations
    from schemas.config import RunConfig

    df = alpaca_frame(n)
    texts = [m["content"] for ms in df["messages"].to_list() for m in ms]
    ref = tiny_reference(out / "tiny-ref", texts, hidden, layers)
    cfg = RunConfig.model_validate({"name": "b", "output_dir": str(out / "x"),
                                    "sources": [{"name": "alpaca", "path": "x.json", "tier": "synthetic"}],
                                    "select": {"reference_model": str(ref), "score_max_tokens": 1024}})  # fmt: skip
    score_conversations(df.head(8), ref, cfg)  # warm-up: imports, first forward
    t0 = time.perf_counter()
    scores, _, _ = score_conversations(df, ref, cfg)
    ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = reference_pairs(df["messages"].to_list(), ref, cfg)
    model = AutoModelForCausalLM.from_pretrained(ref).eval()
    direct = []
    with torch.no_grad():
        for i in range(df.height):
            one = []
            for ids, mask in ((pairs.ids[i], pairs.masks[i].astype(bool)), pairs.alone(i)):
                x = torch.tensor(ids, dtype=torch.long)[None]
                t = np.flatnonzero(mask[1:]) + 1
                logits = model(input_ids=x).logits[0]
                one.append(float(torch.nn.functional.cross_entropy(logits[t - 1], x[0, t])))
            direct.append(one[0] / one[1])
    naive = time.perf_counter() - t0
    diff = float(np.nanmax(np.abs(scores["ifd"].to_numpy() - np.array(direct))))
    tokens = int(sum(len(i) for i in pairs.ids))
    return {"conversations": df.height, "tokens_prompted": tokens, "model": f"Llama {layers}x{hidden}, vocab 8192",
            "sftforge_conv_per_s": round(df.height / ours, 1), "direct_transformers_conv_per_s": round(df.height / naive, 1),
            "ratio": round(naive / ours, 2), "max_abs_ifd_difference": diff}  # fmt: skip


# ----------------------------------------------------------------------------- 2. the ablation


def write_toml(path: Path, name: str, out: Path, sections: dict[str, dict[str, Any]]) -> Path:
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else str(v)

    lines = [f'name = "{name}"', f'output_dir = "{out}"', ""]
    for s, p, fmt, tier in SOURCES:
        lines += ["[[sources]]", f'name = "{s}"', f'path = "{DATASETS / p}"', f'format = "{fmt}"', f'tier = "{tier}"', ""]
    for sec, kv in sections.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {val(v)}" for k, v in kv.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def curate_run(config: Path) -> dict[str, Any]:
    from flows.curate import curate

    return curate(config=str(config), overrides=[])


def ablation_table(run_dir: Path) -> dict[str, Any]:
    stats = json.loads((run_dir / "work" / "ablation" / "stats.json").read_text())
    return {"tokens_per_arm": stats["tokens_per_arm"], "steps": stats["steps_per_arm"],
            "untrained": stats["before"]["loss"],
            "arms": {k: {"loss": v["loss"], **{f"tier {t}": x["loss"] for t, x in v["per_tier"].items()},
                         "conversations": v["conversations"], "passes": v["passes"]} for k, v in stats["arms"].items()}}  # fmt: skip


def ablation(out: Path, ref_steps: int, max_tokens: int) -> dict[str, Any]:
    from schemas.config import load_config
    from trainer.fit import train

    base = {"pack": {"max_seq_len": 1024, "overflow": "truncate", "val_fraction": 0.05},
            "model": {"hidden_size": 96, "num_layers": 2, "num_heads": 4}}
    ablate = {"enabled": True, "max_tokens": max_tokens, "batch_tokens": 2048, "epochs": 2, "lr": 5e-3,
              "max_seq_len": 1024, "num_prompts": 2}
    t0 = time.perf_counter()
    a = write_toml(out / "a.toml", "select-a", out / "a", base)
    curate_run(a)
    cfg_a = load_config(a, [f"train.max_steps={ref_steps}", "train.micro_batch_size=1", "train.lr=3e-3",
                            "train.eval_every=0", "train.save_every=0", "train.warmup_steps=10"])  # fmt: skip
    train(out / "a", cfg_a, log=None)
    ref = out / "a" / "model"
    t_ref = time.perf_counter() - t0
    sel = {"enabled": True, "top_fraction": 0.5, "quota_by": "tokens"}
    b = write_toml(out / "b.toml", "select-ifd", out / "b", {**base, "select": {
        **sel, "reference_model": str(ref), "score": "ifd", "ifd_above_one": "drop", "score_batch_tokens": 8192},
        "ablation": ablate})  # fmt: skip
    t1 = time.perf_counter()
    rb = curate_run(b)
    t_b = time.perf_counter() - t1
    c = write_toml(out / "c.toml", "select-heuristic", out / "c", {**base, "select": sel, "ablation": ablate})
    curate_run(c)
    score = json.loads((out / "b" / "work" / "score" / "stats.json").read_text())
    return {"reference": {"trained_steps": ref_steps, "seconds": round(t_ref, 1)},
            "scoring": {k: score[k] for k in ("scored", "unscored", "ifd_above_one", "conversations_per_s", "summary")},
            "run_b_seconds": round(t_b, 1), "kept": rb["counts"],
            "ifd": ablation_table(out / "b"), "heuristic": ablation_table(out / "c")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_select"))
    ap.add_argument("--score-records", type=int, default=400)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ref-steps", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=150_000)
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    report: dict[str, Any] = {}
    if not args.skip_throughput:
        report["throughput"] = throughput(args.out, args.score_records, args.hidden, args.layers)
        print(json.dumps(report["throughput"], indent=1), flush=True)
    if not args.skip_ablation:
        report["ablation"] = ablation(args.out, args.ref_steps, args.max_tokens)
        ab = report["ablation"]
        print(json.dumps({k: v for k, v in ab.items() if k not in ("ifd", "heuristic")}, indent=1))
        for name in ("ifd", "heuristic"):
            t = ab[name]
            print(f"\nselection by {name}: {t['tokens_per_arm']:,} tokens per arm, {t['steps']} steps; "
                  f"untrained val loss {t['untrained']:.4f}")
            print(pl.DataFrame([{"arm": k, **v} for k, v in t["arms"].items()]))
        gap = {n: ab[n]["arms"]["random"]["loss"] - ab[n]["arms"]["selection"]["loss"] for n in ("ifd", "heuristic")}
        print("\nval loss, random - selection (positive: the selection helped):",
              {k: round(v, 4) for k, v in gap.items() if not math.isnan(v)})
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
