"""Tiny run directories for the trainer tests: a BPE tokenizer trained in the test, ChatML-rendered
conversations packed into shards with the docs/CONTRACTS.md columns, a manifest and curated metadata.

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
                "origin": f"{src}:{i + 1}",
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


def make_base_model(out_dir: Path, run_dir: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A "pre-trained" local checkpoint: a tiny Llama or Qwen2 (untied head, grouped-query attention)
    sized to the run's tokenizer, seeded, saved as a Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from trainer.model import load_tokenizer

    vocab = len(load_tokenizer(run_dir / "tokenizer"))
    dims = {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "tie_word_embeddings": False}  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**dims)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**dims))
    model.save_pretrained(out_dir)
    return out_dir


def lora_config(run_dir: Path, base: Path | None, lora: dict[str, Any] | None = None, **train: Any) -> RunConfig:
    """tiny_config's [train], fine-tuning `base` (None: the from-scratch tiny Llama) with LoRA."""
    data = tiny_config(run_dir, **train).model_dump(mode="json", exclude_unset=True)
    if base is not None:
        data["model"] = {"path": str(base)}
    data["lora"] = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, **(lora or {})}
    return RunConfig.model_validate(data)


#: a Qwen2.5-style template: ChatML with a default system prompt, which the built-in chatml lacks
QWEN_LIKE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_chat_model(path: Path, chat_template: str | None = QWEN_LIKE, hidden: int = 16) -> Path:
    """A local "pre-trained" checkpoint as downloaded ones come: a tiny Granite, its byte-level BPE
    tokenizer.json (any text encodes) and tokenizer_config.json with the chat template (or none).

    Granite, because transformers' AutoTokenizer uses the directory's tokenizer.json as is for it (for
    Qwen2 or Llama it builds the family's own pre-tokenizer, which a real Qwen or Llama tokenizer.json
    has and this BPE trained in the test has not)."""
    from tokenize_fixtures import bpe, sample_conversations
    from transformers import GraniteConfig, GraniteForCausalLM, PreTrainedTokenizerFast

    from pipeline.render.templates import BUILTIN_TEMPLATES

    template = BUILTIN_TEMPLATES["chatml"]  # for its special tokens only
    tok = bpe(template, extra=[m["content"] for c in sample_conversations(50, seed=9) for m in c] + ["system"])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                 chat_template=chat_template)  # fmt: skip
    hf.save_pretrained(path)
    config = GraniteConfig(vocab_size=len(hf), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)  # fmt: skip
    GraniteForCausalLM(config).save_pretrained(path)
    return path


def write_train_config(path: Path, run_dir: Path, sections: str, train: str = "") -> Path:
    """A TOML config training `run_dir` on the CPU with nproc = 2 and a checkpoint every 2 of 4 steps;
    `sections` gives [model] (and [lora]), `train` more [train] lines."""
    path.write_text(
        f'name = "dist"\noutput_dir = "{run_dir}"\n'
        '[[sources]]\nname = "alpaca"\npath = "x.jsonl"\ntier = "synthetic"\n'
        + sections
        + "[train]\nmax_steps = 4\nmicro_batch_size = 2\nlr = 3e-3\nwarmup_steps = 1\nsave_every = 2\n"
        'nproc = 2\ndevice = "cpu"\nnum_threads = 1\n' + train
    )
    return path


def torchrun_trainer(run_dir: Path, config: Path, *extra: str) -> None:
    """`python -m trainer RUN_DIR --config CONFIG` under torchrun with two ranks; fails the test on error."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "trainer", str(run_dir), "--config", str(config), *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def assert_weights_close(a: Path, b: Path, rel: str, tol: float = 1e-5) -> None:
    """The safetensors file `rel` holds the same names and (within `tol`) values under run dirs a and b."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / rel), load_file(b / rel)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=tol, atol=tol)


def assert_same_steps(a: Path, b: Path, steps: int) -> None:
    """Loss and (pre-clip) gradient norm of every step agree: Adam hides a gradient scale error in the
    weights, the norm does not."""
    for key in ("loss", "grad_norm"):
        m1 = [json.loads(x)[key] for x in (a / "train" / "metrics.jsonl").read_text().splitlines()]
        m2 = [json.loads(x)[key] for x in (b / "train" / "metrics.jsonl").read_text().splitlines()]
        assert len(m2) == steps and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(m1, m2, strict=True)), key


def packed_and_alone_losses(module: Any, rows: list, flat: bool) -> tuple[dict, dict]:
    """Per-conversation [loss sum, targets] of `rows` packed as they are, and of each conversation alone."""
    import torch

    from trainer.data import collate
    from trainer.fit import segment_losses

    cpu = torch.device("cpu")
    packed = segment_losses(module, collate(rows, 0, flat=flat), cpu)
    alone: dict[str, list[float]] = {}
    for r in rows:
        start = 0
        for n, cid in zip(r.seq_lens.tolist(), r.conversation_ids, strict=True):
            one = type(r)(r.input_ids[start : start + n], r.loss_mask[start : start + n], r.seq_lens[:1] * 0 + n, [cid])
            alone.update(segment_losses(module, collate([one], 0), cpu))
            start += n
    return packed, alone


def one_and_four_micro_batches(module: Any, model: Any, rows: list, flat: bool) -> tuple[float, dict, float, dict]:
    """(loss, grads) of 8 rows as one micro-batch and as four of 2, normalised by the same step total."""
    from trainer.data import collate
    from trainer.fit import forward_backward

    counts = [collate(rows[i : i + 2], 0).n_targets for i in range(0, 8, 2)]
    assert len(set(counts)) > 1, "fixture must give uneven target counts per micro-batch"
    one = forward_backward(module, [collate(rows, 0, flat=flat)], global_targets=sum(counts))
    g1 = take_grads(model)
    four = forward_backward(
        module, [collate(rows[i : i + 2], 0, flat=flat) for i in range(0, 8, 2)], global_targets=sum(counts)
    )
    return one, g1, four, take_grads(model)


def train_rows(run_dir: Path) -> list:
    """Every row of the run's train shards, in file order."""
    from trainer.data import ShardSet
    from trainer.inputs import read_manifest, shard_paths

    shards = ShardSet(shard_paths(run_dir, read_manifest(run_dir))["train"])
    return [shards.row(u, i) for u in range(len(shards.units)) for i in range(int(shards.unit_rows[u]))]


def take_grads(model: Any) -> dict:
    """The parameters' gradients by name (those that have one), then cleared."""
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out
