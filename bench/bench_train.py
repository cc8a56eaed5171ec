"""Training throughput: sftforge's trainer vs TRL's SFTTrainer (default, and with packing), one run, this CPU;
full fine-tuning, and LoRA (sftforge + peft vs TRL + peft).

The same tiny Llama (same config, same seed-initialised weights), the same tokenizer and ChatML
template, the same curated conversations (real Alpaca records from ../shared/datasets), one epoch each,
so every system trains on the same target tokens. TRL runs with `assistant_only_loss=True` in its
messages format (the run tokenizer's template carries `{% generation %}` markers), first in its
default configuration (padded batches, no packing), then with `packing=True` (BFD, padding-free);
`--only trl_fp32 --only trl_packing_fp32` adds both with bf16 and gradient checkpointing off.
sftforge trains on the shards the tokenize stage packed (`pipeline.render.pack.run_tokenize`: encode, then pack).

LoRA (`--only sftforge_lora --only trl_lora ...`, or `--lora` for all LoRA variants): the same
seed-initialised model saved as a local "pre-trained" checkpoint is the base of both; both add peft
adapters with the same rank, alpha, dropout and targets (all-linear: q/k/v/o/gate/up/down_proj),
train on the same conversations and target tokens at the same lr. TRL runs with `peft_config`.
Without TRL installed (`pip install trl`, in the bench extra) its variants are skipped.

Which TRL configuration is best on a CPU depends on its version, printed first. Since TRL 1.15 the
loss always goes through its fused LM head (`trl/kernels/chunked_logprob.py`), which is slow on a CPU,
and packing is padding-free (one flattened sequence, so SDPA attends over the whole batch under a
block mask): there `trl_lora_fp32` (padded batches, fp32) is TRL's fastest CPU configuration, and so
it is with TRL 1.14.2, the last release before the fused head. To measure against another TRL without
installing it, put its wheel's contents first on the path:
`PYTHONPATH=/path/to/unpacked/trl-1.14.2 .venv/bin/python bench/bench_train.py --only sftforge_lora --only trl_lora_fp32`.

Prints target tokens/s of each, the ratios, and the share of computed token slots that are padding.

    .venv/bin/python bench/bench_train.py [--records 1000] [--max-seq-len 1024] [--hidden 256 --layers 4]
    .venv/bin/python bench/bench_train.py --lora [--lora-r 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "alpaca" / "gumbelsoft-random2000" / "alpaca_data.json"


def curated_alpaca(path: Path, n: int) -> pl.DataFrame:
    """The first n Alpaca records as canonical conversations (user = instruction + input, assistant = output)."""
    rows = []
    for i, r in enumerate(json.loads(path.read_text(encoding="utf-8"))[:n]):
        user = r["instruction"].strip() + (f"\n\n{r['input'].strip()}" if r["input"].strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"].strip()}]
        if not user or not msgs[1]["content"]:
            continue
        cid = hashlib.sha256(json.dumps(msgs).encode()).hexdigest()[:32]
        rows.append({"conversation_id": cid, "origin": f"alpaca:{i}", "source": "alpaca", "tier": "synthetic",
                     "messages": msgs})  # fmt: skip
    return pl.DataFrame(rows)


def build_run_dir(root: Path, records: int, cfg: Any) -> Path:
    """curated/ -> the project's tokenize stage -> shards/, tokenizer/, manifest.json."""
    from pipeline.core.manifest import build_manifest, write_manifest
    from pipeline.core.rundir import claim_run_dir
    from pipeline.render.pack import run_tokenize

    claim_run_dir(root)
    (root / "curated").mkdir(parents=True)
    curated_alpaca(DATA, records).write_parquet(root / "curated" / "part-00000.parquet")
    _, pack = run_tokenize(root, cfg)
    write_manifest(root, build_manifest(root, cfg, {"tokenize": {"train_rows": pack.packing}}))
    return root


def run_config(run_dir: Path, args: argparse.Namespace) -> Any:
    from schemas.config import RunConfig

    return RunConfig.model_validate(
        {
            "name": "bench",
            "output_dir": str(run_dir),
            "sources": [{"name": "alpaca", "path": str(DATA), "tier": "synthetic"}],
            "template": {"name": "chatml"},
            "tokenizer": {"vocab_size": args.vocab},
            "pack": {"max_seq_len": args.max_seq_len, "val_fraction": 0.0, "self_check_sample": 0},
            "model": {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.heads,
                      "intermediate_size": 3 * args.hidden},  # fmt: skip
            "train": {"epochs": 1, "micro_batch_size": args.micro_batch, "lr": 1e-3, "warmup_steps": 5,
                      "save_every": 0, "save_initial_model": False, "device": "cpu"},  # fmt: skip
        }
    )


class CountingCollator:
    """Wraps TRL's collator to count the token slots it computes, the real tokens and the targets."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.slots, self.tokens, self.targets, self.batches = inner, 0, 0, 0, 0

    def __call__(self, examples: list[dict]) -> dict:
        out = self.inner(examples)
        self.batches += 1
        self.slots += out["input_ids"].numel()
        if "attention_mask" in out:
            self.tokens += int(out["attention_mask"].sum())
        else:  # padding-free: one flattened sequence, nothing padded
            self.tokens += out["input_ids"].numel()
        # TRL's labels are not shifted (the model shifts): a label != -100 is one trained target
        self.targets += int((out["labels"] != -100).sum())
        return out


def lora_setup(run_dir: Path, cfg: Any, args: argparse.Namespace, out: Path) -> Any:
    """The config of the LoRA variants: the full fine-tuning model, seed-initialised and saved as the
    local base both sides load, with adapters of rank --lora-r on every linear projection of the blocks."""
    from schemas.config_train import LoraConfig, ModelConfig
    from trainer.model import build_model, load_tokenizer, save_hf

    tok = load_tokenizer(run_dir / "tokenizer")
    model = build_model(cfg.model, tok, max_seq_len=cfg.pack.max_seq_len, attn="sdpa", seed=cfg.seed)
    save_hf(model, tok, out)
    lora = LoraConfig(enabled=True, r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0, target_modules="all-linear")
    # model_copy: no validation, so the run's tokenizer and template stay those the shards were made with
    return cfg.model_copy(update={"model": ModelConfig(path=out), "lora": lora})


def peft_config_of(cfg: Any) -> Any:
    """The same adapters as sftforge's [lora], for TRL."""
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      bias="none", task_type="CAUSAL_LM")  # fmt: skip


def run_trl(
    run_dir: Path, cfg: Any, conversations: list[list[dict]], packing: bool, out: Path, cpu_tuned: bool = False
) -> dict:
    """One TRL SFTTrainer epoch. SFTConfig's defaults include bf16 autocast and gradient checkpointing,
    slow on a CPU: `cpu_tuned` turns both off (what a user tuning TRL for this CPU would do). With
    `cfg.lora.enabled`, TRL adds the same adapters through `peft_config`."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trainer.model import build_model, load_tokenizer

    tok = load_tokenizer(run_dir / "tokenizer")
    model = build_model(cfg.model, tok, max_seq_len=cfg.pack.max_seq_len, attn="sdpa", seed=cfg.seed)
    ds = Dataset.from_list([{"messages": m} for m in conversations])
    args = SFTConfig(
        output_dir=str(out),
        assistant_only_loss=True,
        packing=packing,
        max_length=cfg.pack.max_seq_len,
        num_train_epochs=1,
        learning_rate=cfg.train.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.train.warmup_steps,
        max_grad_norm=cfg.train.clip,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=cfg.seed,
        disable_tqdm=True,
        **({"bf16": False, "gradient_checkpointing": False} if cpu_tuned else {}),
    )
    peft_config = peft_config_of(cfg) if cfg.lora.enabled else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "target_tokens": counter.targets,
        "tokens": counter.tokens,
        "slots": counter.slots,
        "padding_frac": 1 - counter.tokens / max(1, counter.slots),
        "steps": result.global_step,
        "loss": result.training_loss,
        "batch_size": args.per_device_train_batch_size,
        "target_tokens_per_s": counter.targets / wall,
        "target_tokens_per_cpu_s": counter.targets / cpu,
    }


def run_sftforge(run_dir: Path, cfg: Any) -> dict:
    from trainer.fit import train

    t0, c0 = time.perf_counter(), time.process_time()
    s = train(run_dir, cfg, log=lambda _line: None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "loop_s": s["elapsed_s"],
        "target_tokens": s["target_tokens"],
        "tokens": s["tokens"],
        "padding_frac": s["padding_frac"],
        "steps": s["steps"],
        "loss": s["train_loss"],
        "target_tokens_per_s": s["target_tokens"] / wall,
        "target_tokens_per_cpu_s": s["target_tokens"] / cpu,
    }


def train_conversations(run_dir: Path) -> list[list[dict]]:
    """The messages of every conversation in the train shards (what sftforge trains on), for TRL."""
    import pyarrow.parquet as pq

    ids = [c for p in sorted((run_dir / "shards").glob("train-*.parquet"))
           for row in pq.read_table(p, columns=["conversation_ids"]).column(0).to_pylist() for c in row]  # fmt: skip
    cur = pl.read_parquet(run_dir / "curated" / "part-00000.parquet")
    by_id = dict(zip(cur["conversation_id"].to_list(), cur["messages"].to_list(), strict=True))
    return [by_id[c] for c in ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=4, help="sftforge packed rows per micro-batch")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--lora", action="store_true", help="the LoRA variants (sftforge_lora, trl_lora, trl_lora_packing)")
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    full = ["sftforge", "trl", "trl_packing", "trl_fp32", "trl_packing_fp32"]
    variants = [*full, "sftforge_lora", *(v.replace("trl", "trl_lora", 1) for v in full[1:])]
    ap.add_argument("--only", choices=variants, action="append", help="default: sftforge, trl, trl_packing")
    args = ap.parse_args()
    chosen = args.only or (["trl_lora", "trl_lora_packing", "sftforge_lora"] if args.lora else
                           ["trl", "trl_packing", "sftforge"])  # fmt: skip
    try:
        import trl  # noqa: F401
    except ImportError:
        print("TRL is not installed (pip install trl, or `make bench`): its variants are skipped")
        chosen = [v for v in chosen if v.startswith("sftforge")]
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        run_dir = tmp / "run"
        cfg = run_config(run_dir, args)
        t0 = time.perf_counter()
        build_run_dir(run_dir, args.records, cfg)
        convs = train_conversations(run_dir)
        if any(not v.startswith("sftforge") for v in chosen):
            import peft
            import transformers
            import trl

            print(f"TRL {trl.__version__} ({Path(trl.__file__).parent}), peft {peft.__version__}, "
                  f"transformers {transformers.__version__}, torch {torch.__version__}")  # fmt: skip
        print(f"data: {len(convs)} Alpaca conversations, tokenized+packed in {time.perf_counter() - t0:.1f}s; "
              f"model hidden={args.hidden} layers={args.layers} vocab={args.vocab}, max_seq_len={args.max_seq_len}, "
              f"torch threads={torch.get_num_threads()}")  # fmt: skip
        results: dict[str, dict] = {}
        lora_cfg = lora_setup(run_dir, cfg, args, tmp / "base") if any("lora" in n for n in chosen) else None
        if lora_cfg is not None:
            print(f"LoRA: r={lora_cfg.lora.r} alpha={lora_cfg.lora.alpha:g} on all-linear, base {lora_cfg.model.path}")
        for name in chosen:
            vcfg = lora_cfg if "lora" in name else cfg
            if name.startswith("sftforge"):
                results[name] = run_sftforge(run_dir, vcfg)
            else:
                packing, tuned = "packing" in name, name.endswith("_fp32")
                results[name] = run_trl(run_dir, vcfg, convs, packing, tmp / name, cpu_tuned=tuned)
            r = results[name]
            print(f"{name:12s} target tokens {r['target_tokens']:>9,}  steps {r['steps']:>5}  wall {r['wall_s']:7.1f}s  "
                  f"{r['target_tokens_per_s']:>8,.0f} target tok/s  ({r['target_tokens_per_cpu_s']:,.0f} per CPU-s)  "
                  f"padding {100 * r['padding_frac']:5.1f}%  loss {r['loss']:.3f}", flush=True)  # fmt: skip
        # wall-clock is the goal's measure; per CPU-second is printed too because this machine is
        # shared, and a neighbour's load changes wall time far more than CPU time
        for ours, theirs in (("sftforge", [v for v in variants if v.startswith("trl") and "lora" not in v]),
                             ("sftforge_lora", [v for v in variants if v.startswith("trl_lora")])):  # fmt: skip
            if ours not in results:
                continue
            for key in ("target_tokens_per_s", "target_tokens_per_cpu_s"):
                for name in theirs:
                    if name in results:
                        print(f"{ours} / {name} ({key}): {results[ours][key] / results[name][key]:.2f}x")
        if "sftforge" in results and "sftforge_lora" in results:
            ratio = results["sftforge_lora"]["target_tokens_per_s"] / results["sftforge"]["target_tokens_per_s"]
            print(f"sftforge LoRA / full fine-tuning (target_tokens_per_s): {ratio:.2f}x")
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
