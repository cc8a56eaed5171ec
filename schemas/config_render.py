"""Configuration of rendering, tokenizing and packing ([template], [tokenizer], [pack])."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class TemplateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="chatml", description="chatml | llama2 | llama3 | alpaca, or a tokenizer dir / .jinja file")


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path | None = Field(default=None, description="tokenizer.json or HF tokenizer dir; absent: train BPE")
    vocab_size: int = Field(default=8192, ge=256, le=1_000_000)


class PackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_seq_len: int = Field(default=2048, ge=16, le=1_048_576)
