"""Configuration of one input source ([[sources]])."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.conversation import Tier

#: The largest record a reader takes (a .jsonl line, an array element, a parquet row): 16 MiB.
DEFAULT_MAX_RECORD_BYTES = 16 << 20

#: "flan" is prompt_completion read from FLAN's inputs/targets keys (prompt_completion finds them too).
SourceFormat = Literal["alpaca", "dolly", "sharegpt", "openai", "oasst", "prompt_completion", "flan"]


class SourceConfig(BaseModel):
    """A file (or directory of files) of demonstrations in one public format."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="unique; used in origin")
    path: Path = Field(description="a .jsonl, .json (either optionally .gz/.bz2/.xz/.zst) or .parquet file, "
                                   "or a directory of them (each file's format detected on its own)")
    format: SourceFormat | None = Field(default=None, description="read from each file when absent")
    tier: Tier = Field(description="expert | crowdsourced | synthetic")
    license: str | None = Field(default=None, description="kept in curated/ metadata")
    oasst_paths: Literal["best", "all"] = Field(
        default="best", description="OpenAssistant trees: the best-ranked path, or every path"
    )
    prompt_field: str | None = Field(default=None, description="prompt_completion: prompt key override")
    completion_field: str | None = Field(default=None, description="prompt_completion: completion key override")
    strip_suffixes: list[str] = Field(
        default_factory=lambda: ["<|endoftext|>", "</s>"],
        description="prompt_completion: end markers removed from the end of completions",
    )
    max_record_bytes: int = Field(
        default=DEFAULT_MAX_RECORD_BYTES, ge=1 << 10, le=1 << 30,
        description="a larger record (a .jsonl line, an array element, a parquet row) is quarantined as "
                    "schema.too_large, and never held in memory whole",
    )
