"""Configuration of rendering, tokenizing and packing ([template], [tokenizer], [pack])."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TemplateConfig(BaseModel):
    """Which chat template renders conversations, and which turns are trained on."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        default="chatml",
        description="chatml | llama2 | llama3 | alpaca, or a Hugging Face tokenizer dir (its "
        "tokenizer_config.json chat_template) or a .jinja file",
    )
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        default="all_assistant", description="train on every assistant turn, or on the last one only"
    )
    train_on_prompt: bool = Field(
        default=False, description="also train on system and user contents (off: only assistant turns)"
    )
    reasoning: Literal["split", "keep", "last", "drop"] = Field(
        default="split",
        description="assistant reasoning traces: split = each trained as the template shows it at inference "
        "(a template that drops earlier turns' reasoning, like Qwen3's, gets one example per such turn, cut "
        "after it); keep = every turn's reasoning given to the template, what it writes is trained; last = "
        "only the turns after the last user message keep theirs; drop = none",
    )


class TokenizerConfig(BaseModel):
    """A given tokenizer, or the settings of the embedded byte-level BPE trained on the curated text."""

    model_config = ConfigDict(extra="forbid")
    path: Path | None = Field(default=None, description="tokenizer.json or HF tokenizer dir; absent: train BPE")
    vocab_size: int = Field(default=8192, ge=256, le=1_000_000, description="vocabulary of the trained BPE")
    min_frequency: int = Field(default=2, ge=1, le=1000, description="BPE merges need this many occurrences")
    cache_dir: Path | None = Field(
        default=None,
        description="where trained tokenizers are cached by the hash of their inputs; absent: "
        "<output_dir>/work/encode/cache",
    )
    train_max_chars: int = Field(
        default=32_000_000, ge=10_000, le=100_000_000_000,
        description="the trained BPE learns from at most this many characters of rendered text: every "
        "conversation while they fit, else an even sample of them in conversation_id (hash) order; "
        "BPE merges settle long before (training on 163k conversations took 39 s, on 32 M characters ~8 s)",
    )
    batch_size: int = Field(default=4096, ge=1, le=1_000_000, description="conversations per encode_batch call")
    workers: int = Field(
        default=2, ge=1, le=64,
        description="processes rendering, encoding and masking the conversations (in chunks, in order; "
        "inputs under 5,000 conversations are encoded in the stage's own process)",
    )


class PackConfig(BaseModel):
    """Row length, packing, overflow policy, split and shard layout."""

    model_config = ConfigDict(extra="forbid")
    max_seq_len: int = Field(default=2048, ge=16, le=1_048_576, description="tokens per row")
    packing: bool = Field(default=True, description="best-fit-decreasing packing; off: one conversation per row")
    overflow: Literal["drop", "truncate"] = Field(
        default="drop",
        description="a conversation longer than max_seq_len is dropped (ledger tokenize.too_long) or "
        "truncated after the last whole assistant turn that fits",
    )
    val_fraction: float = Field(
        default=0.02, ge=0.0, lt=1.0, description="share of conversations (by conversation hash) held out"
    )
    rows_per_shard: int = Field(default=16_384, ge=1, le=10_000_000, description="rows per Parquet shard")
    self_check_sample: int = Field(
        default=2000, ge=0, description="conversations decoded back and checked each run (0 = none, all in tests)"
    )
    self_check_all: bool = Field(default=False, description="decode-check every written conversation")
