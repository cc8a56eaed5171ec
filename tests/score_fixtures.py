"""A tiny local reference model for the scoring tests: a byte-level BPE trained in the test, the
built-in ChatML template as its chat_template, and a seeded Llama sized to it (nothing downloaded)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tokenize_fixtures import bpe, record

from pipeline.core.rundir import claim_run_dir
from pipeline.ingest.canonical import from_records
from schemas.config import RunConfig

WORDS = ["red", "blue", "green", "cat", "dog", "fish", "sun", "moon", "tree", "rock", "milk", "bread"]


def copy_conversations(n: int, seed: int = 0, words: int = 6) -> list[list[dict[str, str]]]:
    """Single-turn conversations whose answer repeats the question's words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        out.append([{"role": "user", "content": text}, {"role": "assistant", "content": text}])
    return out


def make_reference(path: Path, texts: list[str] | None = None, hidden: int = 32, layers: int = 2, seed: int = 0,
                   arch: str = "llama") -> Path:
    """A tiny "pre-trained" checkpoint with its tokenizer and chat template in `path`."""
    import torch
    from transformers import (
        GraniteConfig,
        GraniteForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    from pipeline.render.templates import BUILTIN_TEMPLATES

    chatml = BUILTIN_TEMPLATES["chatml"]
    tok = bpe(chatml, extra=(texts or []) + [" ".join(WORDS)] * 5 + ["user\n", "assistant\n", "system\n"])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                 chat_template=chatml.jinja)  # fmt: skip
    hf.save_pretrained(path)
    dims = {"vocab_size": len(hf), "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 512, "eos_token_id": hf.eos_token_id}  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**dims)) if arch == "llama" else GraniteForCausalLM(GraniteConfig(**dims))
    model.save_pretrained(path)
    return path


def quality_run(tmp: Path, convs: list[list[dict[str, str]]], sources: list[tuple[str, str]] | None = None,
                **sections: Any) -> tuple[Path, RunConfig, list[Path]]:
    """A run dir with one quality-stage part holding `convs` (sources/tiers cycled), its RunConfig."""
    run_dir = claim_run_dir(tmp).root
    sources = sources or [("src", "expert")]
    recs = [record(i, c, source=sources[i % len(sources)][0], tier=sources[i % len(sources)][1])
            for i, c in enumerate(convs)]  # fmt: skip
    part = run_dir / "work" / "quality" / "part-00000.parquet"
    part.parent.mkdir(parents=True, exist_ok=True)
    from_records(recs).write_parquet(part)
    cfg = RunConfig.model_validate({
        "name": "t", "output_dir": str(run_dir),
        "sources": [{"name": s, "path": "unused.jsonl", "tier": t} for s, t in dict(sources).items()],
        **sections,
    })  # fmt: skip
    return run_dir, cfg, [part]


def train_copy_model(model_dir: Path, cfg: RunConfig, steps: int = 300, seed: int = 0) -> None:
    """Teach the reference model to repeat the question (full-sequence LM loss on rendered copy
    conversations), and, as pre-training would, plain text (a start token and words): enough for IFD
    to tell a copied answer from an unrelated one."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.score.reference import reference_pairs

    convs = copy_conversations(256, seed=seed + 100)
    pairs = reference_pairs(convs, model_dir, cfg)
    seqs = [torch.tensor(np.asarray(i, dtype=np.int64)) for i in pairs.ids]
    seqs += [torch.tensor(pairs.alone(i)[0]) for i in range(0, len(pairs.ids), 3)]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(seqs), (16,), generator=g).tolist()
        batch = torch.nn.utils.rnn.pad_sequence([seqs[i] for i in idx], batch_first=True, padding_value=0)
        attn = torch.nn.utils.rnn.pad_sequence([torch.ones_like(seqs[i]) for i in idx], batch_first=True)
        labels = batch.masked_fill(attn == 0, -100)
        loss = model(input_ids=batch, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(model_dir)
