"""Configuration of one input source ([[sources]])."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.conversation import Tier

#: The largest record a reader takes (a .jsonl line, an array element, a parquet row): 16 MiB.
DEFAULT_MAX_RECORD_BYTES = 16 << 20

#: "flan" is prompt_completion read from FLAN's inputs/targets keys (prompt_completion finds them too).
SourceFormat = Literal["alpaca", "dolly", "sharegpt", "openai", "oasst", "prompt_completion", "flan", "self_instruct"]


class ColumnMap(BaseModel):
    """Which key of a record holds what, like LLaMA-Factory's dataset_info.json `columns`: each value
    names the file's key; the reader then reads it as the named part."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(default=None, description="alpaca: the instruction (default key `instruction`)")
    query: str | None = Field(default=None, description="alpaca: the input joined to the prompt (default `input`)")
    response: str | None = Field(default=None, description="alpaca: the answer (default `output`)")
    history: str | None = Field(default=None, description="alpaca: earlier [query, response] pairs (default `history`)")
    reasoning: str | None = Field(default=None, description="alpaca: the answer's reasoning trace (no default)")
    messages: str | None = Field(default=None, description="openai / sharegpt: the turns (default `messages` / "
                                                           "`conversations`)")
    system: str | None = Field(default=None, description="the system prompt (default `system`)")
    tools: str | None = Field(default=None, description="the offered function schemas (default `tools`)")

    def renames(self) -> dict[str, str]:
        """{file key: the key the reader reads}, for the keys that differ."""
        target = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "reasoning": "reasoning", "messages": "messages", "system": "system", "tools": "tools"}
        return {key: target[part] for part, key in self.model_dump().items() if key and key != target[part]}


class TagMap(BaseModel):
    """ShareGPT turn keys and speaker names, like LLaMA-Factory's dataset_info.json `tags`; a speaker
    tag adds to the speakers known by default (human, gpt, function_call, observation, system, …)."""

    model_config = ConfigDict(extra="forbid")
    role_tag: str | None = Field(default=None, description="the key naming the speaker (default `from`)")
    content_tag: str | None = Field(default=None, description="the key holding the text (default `value`)")
    user_tag: str | None = Field(default=None, description="the user's speaker name")
    assistant_tag: str | None = Field(default=None, description="the assistant's speaker name")
    observation_tag: str | None = Field(default=None, description="a tool result's speaker name")
    function_tag: str | None = Field(default=None, description="an assistant tool call's speaker name")
    system_tag: str | None = Field(default=None, description="the system prompt's speaker name")


class SourceConfig(BaseModel):
    """A file (or directory of files) of demonstrations in one public format."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="unique; used in origin")
    path: Path = Field(description="a .jsonl, .json (either optionally .gz/.bz2/.xz/.zst) or .parquet file, "
                                   "or a directory of them (each file's format detected on its own), or a "
                                   "LLaMA-Factory dataset_info.json (or a directory holding one): every dataset it "
                                   "lists with a local file")
    format: SourceFormat | None = Field(default=None, description="read from each file when absent")
    columns: ColumnMap | None = Field(
        default=None, description="which record key holds what (prompt, query, response, history, reasoning, "
                                  "messages, system, tools), as LLaMA-Factory's dataset_info.json `columns`"
    )
    tags: TagMap | None = Field(
        default=None, description="sharegpt: turn keys and speaker names, as LLaMA-Factory's dataset_info.json `tags`"
    )
    strict_fields: bool = Field(
        default=False, description="quarantine a record holding text in a field the reader does not read "
                                   "(schema.unread_field) instead of counting it in the ingest stats",
    )
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

    @model_validator(mode="after")
    def _mapping_fits_the_format(self) -> SourceConfig:
        """`columns` and `tags` only name what the source's format reads."""
        if self.tags is not None and self.format not in (None, "sharegpt"):
            raise ValueError(f"tags: only a sharegpt source has tags (format is {self.format!r})")
        if self.columns is not None and self.format is not None:
            single = {"prompt", "query", "response", "history", "reasoning"}
            given = {k for k, v in self.columns.model_dump().items() if v}
            allowed = {"alpaca": single | {"system", "tools"}, "sharegpt": {"messages", "system", "tools"},
                       "openai": {"messages", "system", "tools"}}.get(self.format, set())
            if given - allowed:
                raise ValueError(f"columns: {', '.join(sorted(given - allowed))} not read by format {self.format!r}"
                                 + (f" (it reads {', '.join(sorted(allowed))})" if allowed else ""))
        return self
