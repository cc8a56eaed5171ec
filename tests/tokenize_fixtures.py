"""Helpers for the render/tokenize/pack tests: a char-level mock tokenizer whose ids can be written
literally, a byte-level BPE trained in the test, and run directories holding a curated part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models

from pipeline.ingest.canonical import from_records
from pipeline.render.templates import ChatTemplate
from pipeline.render.tokenizer import train_bpe
from schemas.config import RunConfig
from schemas.conversation import conversation_id

#: Id of the template's special token k in the mock tokenizer: 128 + k (characters map to ord(c)).
SPECIAL_BASE = 128


def char_tokenizer(template: ChatTemplate) -> Tokenizer:
    """One token per ASCII character, id = ord(c); the template's special tokens are whole tokens with
    ids 128, 129, ... in the template's order (added tokens are numbered after the 128-entry vocab)."""
    vocab = {chr(c): c for c in range(128)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges and no pre-tokenizer: characters
    tok.decoder = decoders.Fuse()  # decode = the characters joined, no spaces between tokens
    tok.add_special_tokens(list(template.special_tokens))
    assert [tok.token_to_id(t) for t in template.special_tokens] == [
        SPECIAL_BASE + k for k in range(len(template.special_tokens))
    ]
    return tok


def bpe(template: ChatTemplate, extra: list[str] | None = None, vocab_size: int = 600) -> Tokenizer:
    """A small byte-level BPE trained on text that makes the merges the boundary tests need."""
    texts = [
        " Hello world. Hello there, hello!", "\n\nHi", " ### Response:\nHello", "[/INST] Sure",
        "ok </s> ok </s>", "The answer is 42.\n\nThanks", "héllo wörld 😀 日本語 テスト", "  spaced  out  ", "x\n\n\n\n\ny",
        *(extra or []),
    ] * 20
    return train_bpe(texts, template, vocab_size=vocab_size, min_frequency=2)


def record(i: int, messages: list[dict[str, str]], source: str = "src", tier: str = "expert",
           **extra: Any) -> dict[str, Any]:
    return {"conversation_id": conversation_id(messages), "origin": f"{source}:{i}", "source": source,
            "tier": tier, "messages": messages, **extra}


def make_run(tmp: Path, records: list[dict[str, Any]], *, repeat: list[int] | None = None, **sections: Any
             ) -> tuple[Path, RunConfig]:
    """A run dir with curated/part-00000.parquet from records, and a RunConfig for it."""
    import polars as pl

    from pipeline.core.rundir import claim_run_dir

    run_dir = claim_run_dir(tmp).root  # a run directory sftforge made: stages may replace their outputs
    (run_dir / "curated").mkdir(parents=True, exist_ok=True)
    df = from_records(records)
    if repeat is not None:
        df = df.with_columns(pl.Series("repeat", repeat, dtype=pl.Int32))
    df.write_parquet(run_dir / "curated" / "part-00000.parquet")
    cfg = RunConfig.model_validate({
        "name": "t", "output_dir": str(run_dir),
        "sources": [{"name": "src", "path": "unused.jsonl", "tier": "expert"}],
        **sections,
    })
    return run_dir, cfg


def sample_conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Varied conversations: optional system, 1-3 exchanges, Unicode, numbers, newlines."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "Hello", "world", "ünï", "😀", "日本", "42", "x\ny", "end.", "  two"]
    out = []
    for _ in range(n):
        msgs = []
        if rng.random() < 0.4:
            msgs.append({"role": "system", "content": " ".join(rng.choices(words, k=rng.randint(1, 5)))})
        for _ in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 12)))})
            msgs.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))})
        out.append(msgs)
    return out
