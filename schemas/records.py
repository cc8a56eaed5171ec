"""Raw records of each public source format, as read from a file, before they become conversations.

One pydantic model per format. They check presence and type of the fields a reader needs (strict:
no number silently becomes a string) and ignore extra keys, because real dumps carry many (oasst1's
`detoxify`, `emojis`; LLaMA-Factory's `label`). Semantic checks (known role, alternating turns,
non-empty text) happen when the reader turns a record into a canonical conversation, so that each
failure gets its own reason code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_RAW = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)


class AlpacaRecord(BaseModel):
    """Stanford Alpaca: the input (if any) is appended to the instruction."""

    model_config = _RAW
    instruction: str = Field(description="the task")
    input: str | None = Field(default=None, description="optional context; placeholders like 'Noinput' mean none")
    output: str = Field(description="the reference answer")
    system: str | None = Field(default=None, description="optional system prompt (LLaMA-Factory variant)")
    history: list[Any] | None = Field(
        default=None, description="earlier turns as [[query, response], …], before the instruction (LLaMA-Factory)"
    )
    tools: str | list[Any] | None = Field(default=None, description="offered function schemas: a list or its JSON text")
    reasoning: str | None = Field(default=None, description="the reasoning behind output (a mapped column)")


class DollyRecord(BaseModel):
    """Databricks Dolly 15k."""

    model_config = _RAW
    instruction: str = Field(description="the task")
    context: str | None = Field(default=None, description="optional reference text, appended to the instruction")
    response: str = Field(description="the answer")
    category: str | None = Field(default=None, description="open_qa, brainstorming, …")


class ShareGPTTurn(BaseModel):
    """One turn of a ShareGPT conversation; `from` names the speaker (human, gpt, system, …)."""

    model_config = _RAW
    speaker: str = Field(alias="from", description="human | gpt | system or a common variant")
    value: str = Field(description="the turn's text")


class ShareGPTRecord(BaseModel):
    """ShareGPT / Vicuna: `conversations` of `{from, value}`; `id` is kept as original_id."""

    model_config = _RAW
    id: str | int | None = Field(default=None, description="kept as original_id")
    conversations: list[ShareGPTTurn] = Field(description="the turns, in order")
    system: str | None = Field(default=None, description="optional system prompt outside the turns")
    tools: str | list[Any] | None = Field(default=None, description="offered function schemas: a list or its JSON text")


class OpenAIMessage(BaseModel):
    """One chat message in the OpenAI fine-tuning format. The model checks what every message has;
    the reader (pipeline.ingest.formats) reads and checks the rest itself, giving each failure its own
    code: `tool_calls` (`[{id, type: "function", function: {name, arguments}}]`, arguments a JSON
    string or an object; a flat `{name, arguments}` too), legacy `function_call`, `reasoning_content`
    or `reasoning`, `tool_call_id` and `name` on a tool message, `refusal`."""

    model_config = _RAW
    role: str = Field(description="system | developer | user | assistant | tool (function, ipython: tool)")
    content: str | list[dict[str, Any]] | None = Field(
        default=None, description="the text, or a list of parts ({type: text, text} or LLaMA-Factory's "
                                  "{type, value} with text / reasoning / tool_call); null on a turn that only calls"
    )


class OpenAIRecord(BaseModel):
    """OpenAI-style `{"messages": [{role, content, …}, …], "tools": […]}`; an optional `id` is kept."""

    model_config = _RAW
    id: str | int | None = Field(default=None, description="kept as original_id")
    messages: list[OpenAIMessage] = Field(description="the turns, in order")
    tools: str | list[Any] | None = Field(default=None, description="offered function schemas: a list or its JSON text")
    system: str | None = Field(default=None, description="a system prompt outside the messages (a mapped column)")


class SelfInstructInstance(BaseModel):
    """One input/output example of a Self-Instruct task."""

    model_config = _RAW
    input: str | None = Field(default=None, description="the instance's input; empty: none")
    output: str = Field(description="the answer")


class SelfInstructRecord(BaseModel):
    """A Self-Instruct seed task; each instance becomes one conversation (origin `<line>#<index>`)."""

    model_config = _RAW
    id: str | int | None = Field(default=None, description="kept as original_id")
    name: str | None = Field(default=None, description="the task's short name, kept as category")
    instruction: str = Field(description="the task")
    instances: list[Any] = Field(description="[{input, output}, …]")
    is_classification: bool | None = Field(default=None, description="bookkeeping; not read")


class OasstMessage(BaseModel):
    """One row of the flat OpenAssistant oasst1 export; trees are rebuilt from `parent_id`."""

    model_config = ConfigDict(extra="ignore", strict=False, frozen=True)
    message_id: str = Field(min_length=1, strict=True, description="unique id of the message")
    parent_id: str | None = Field(default=None, strict=True, description="null for a tree's root prompt")
    message_tree_id: str | None = Field(default=None, strict=True, description="id of the tree (its root's id)")
    text: str = Field(strict=True, description="the message text")
    role: str = Field(strict=True, description="prompter | assistant")
    deleted: bool | None = Field(default=None, strict=True, description="true: skipped")
    review_result: bool | None = Field(default=None, strict=True, description="false: skipped; null: not reviewed")
    # Float in the Hugging Face parquet export (NaN/null for unranked), int in the JSON one.
    rank: float | None = Field(default=None, ge=0, description="0 = best among siblings; null = unranked")


class PromptCompletionRecord(BaseModel):
    """prompt/completion (OpenAI legacy, T0/P3) or FLAN inputs/targets, after key mapping."""

    model_config = _RAW
    prompt: str = Field(description="the prompt (FLAN: inputs)")
    completion: str = Field(description="the completion (FLAN: targets); end markers are stripped")
