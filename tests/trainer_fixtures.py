"""Tiny run directories for the trainer tests: a BPE tokenizer trained in the test, ChatML-rendered
conversations packed into shards with the CONTRACTS.md columns, a manifest and curated metadata.

Deliberately independent of the shards stage (pipeline.render.pack), so the trainer is tested against
the contract, not against one implementation of it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from schemas.config import RunConfig

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SHARD_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.uint8())),
        ("seq_lens", pa.list_(pa.int32())),
        ("conversation_ids", pa.list_(pa.string())),
    ]
)


def make_conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Arithmetic Q/A pairs of varied lengths: learnable by a tiny model in a few steps."""
    rng = random.Random(seed)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    out = []
    for i in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        pad = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 12)))
        q = f"What is {words[a]} plus {words[b]}? {pad}".strip()
        ans = f"{words[a]} plus {words[b]} is {a + b}." + (" Indeed." * rng.randrange(0, 3))
        src, tier = (("alpaca", "synthetic") if i % 3 else ("dolly", "crowdsourced"))
        out.append(
            {
                "conversation_id": hashlib.sha256(f"{i}:{q}".encode()).hexdigest()[:16],
                "source": src,
                "tier": tier,
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}],
            }
        )
    return out


def train_tokenizer(texts: list[str], vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def render(tok: Tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """ChatML ids and loss mask: assistant content and its <|im_end|> are targets, nothing else."""
    ids: list[int] = []
    mask: list[int] = []
    end = tok.token_to_id("<|im_end|>")
    nl = tok.encode("\n").ids
    for m in messages:
        head = [tok.token_to_id("<|im_start|>"), *tok.encode(f"{m['role']}\n").ids]
        body = tok.encode(m["content"]).ids
        target = 1 if m["role"] == "assistant" else 0
        ids += head + body + [end] + nl
        mask += [0] * len(head) + [target] * (len(body) + 1) + [0] * len(nl)
    return ids, mask


def pack(samples: list[tuple[list[int], list[int], str]], max_len: int) -> list[dict[str, list]]:
    """Greedy first-fit packing in the given order; every row <= max_len."""
    rows: list[dict[str, list]] = []
    for ids, mask, cid in samples:
        ids, mask = ids[:max_len], mask[:max_len]
        for r in rows:
            if len(r["input_ids"]) + len(ids) <= max_len:
                break
        else:
            r = {"input_ids": [], "loss_mask": [], "seq_lens": [], "conversation_ids": []}
            rows.append(r)
        r["input_ids"] += ids
        r["loss_mask"] += mask
        r["seq_lens"].append(len(ids))
        r["conversation_ids"].append(cid)
    return rows


def write_shard(path: Path, rows: list[dict[str, list]], row_group_size: int = 4) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path, row_group_size=row_group_size)
    return {"rows": len(rows), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def make_run_dir(
    root: Path,
    n_train: int = 48,
    n_val: int = 12,
    max_len: int = 64,
    packed: bool = True,
    seed: int = 0,
) -> Path:
    """A complete (manifest.json included) run directory under `root`."""
    convs = make_conversations(n_train + n_val, seed)
    texts = [m["content"] for c in convs for m in c["messages"]] + ["user\n", "assistant\n"]
    tok = train_tokenizer(texts)
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|pad|>",
                    "tokenizer_class": "PreTrainedTokenizerFast"})  # fmt: skip
    )
    entries = []
    for split, part in (("train", convs[:n_train]), ("val", convs[n_train:])):
        samples = [(*render(tok, c["messages"]), c["conversation_id"]) for c in part]
        rows = (
            pack(samples, max_len)
            if packed
            else [
                {"input_ids": i[:max_len], "loss_mask": m[:max_len], "seq_lens": [len(i[:max_len])],
                 "conversation_ids": [c]}
                for i, m, c in samples
            ]  # fmt: skip
        )
        rel = f"shards/{split}-00000.parquet"
        info = write_shard(root / rel, rows)
        entries.append({"path": rel, "split": split, **info})
    curated = root / "curated"
    curated.mkdir(exist_ok=True)
    pl.DataFrame(convs).write_parquet(curated / "part-00000.parquet")
    (root / "manifest.json").write_text(json.dumps({"schema_version": 1, "shards": entries}))
    return root


def tiny_config(run_dir: Path, **train: Any) -> RunConfig:
    """A RunConfig with a 1-layer, 32-wide Llama and the given [train] overrides."""
    t = {"max_steps": 4, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "save_every": 0, "eval_every": 0,
         "save_initial_model": False, "device": "cpu", "num_threads": 1}  # fmt: skip
    t.update(train)
    return RunConfig.model_validate(
        {
            "name": "t",
            "output_dir": str(run_dir),
            "sources": [{"name": "alpaca", "path": "x.jsonl", "tier": "synthetic"}],
            "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
            "train": t,
        }
    )
