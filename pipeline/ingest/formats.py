"""One small transform per source format: a decoded raw record -> canonical messages, or a RecordError.

Each transform validates the record with its pydantic model (schemas.records), maps speakers to the
canonical roles, and `finish` applies the rules every conversation obeys (non-empty turns, optional
leading system, user/assistant alternating, ending with the assistant). OpenAssistant rows are not
single records; they are assembled into trees in `pipeline.ingest.oasst`.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.ingest.files import RecordError
from schemas.config_sources import SourceConfig
from schemas.conversation import TurnOrderError, canonical_text, check_turn_order
from schemas.records import (
    AlpacaRecord,
    DollyRecord,
    OpenAIRecord,
    PromptCompletionRecord,
    ShareGPTRecord,
)

Messages = list[dict[str, str]]
#: (messages, category, original_id)
Converted = tuple[Messages, str | None, str | None]

#: ShareGPT speakers seen in public dumps (FastChat, Vicuna, WizardLM, Bard/Bing exports), lower-cased.
SHAREGPT_ROLES: dict[str, str] = {
    "human": "user", "user": "user", "prompter": "user", "question": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant", "gpt-4": "assistant", "gpt4": "assistant",
    "claude": "assistant", "answer": "assistant",
    "system": "system",
}
#: OpenAI roles; "developer" is the newer name of the system role.
OPENAI_ROLES: dict[str, str] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Alpaca inputs that mean "no input" in public copies (compared stripped and lower-cased).
PLACEHOLDER_INPUTS = frozenset({"", "noinput", "no input", "<noinput>", "<no input>", "n/a", "none", "null", "nan"})


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null", bool: "boolean", int: "integer",
            float: "number", Decimal: "number"}.get(type(v), type(v).__name__)


def _short(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 1] + "…"


def validation_error(err: ValidationError) -> RecordError:
    """A pydantic error as a RecordError: the first problem picks the code; the message lists all."""
    parts, code = [], None
    for e in err.errors(include_url=False):
        field = ".".join(str(p) for p in e["loc"]) or "record"
        if e["type"] == "missing":
            code = code or "schema.missing_field"
            parts.append(f"field '{field}' is missing")
        else:
            code = code or "schema.wrong_type"
            got = e.get("input")
            parts.append(f"field '{field}': {e['msg'].lower()} (got {_type_name(got)} {_short(got)})")
    return RecordError(code or "schema.wrong_type", "; ".join(parts))


def parse(model: type[BaseModel], value: Any) -> Any:
    """Validate a decoded record against its model, or raise RecordError naming the field."""
    if not isinstance(value, dict):
        raise RecordError("schema.wrong_type", f"record: expected a JSON object, got {_type_name(value)}")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise validation_error(e) from None


def without_nul(text: str) -> str:
    """Text with every U+0000 removed (decoded from an escaped \\u0000, or inside a parquet string)."""
    return text.replace("\x00", "") if "\x00" in text else text


def finish(messages: Messages) -> Messages:
    """Canonical text per turn and the turn-order rules; raises RecordError with the schema.* code.

    NUL characters are removed first, so a turn that held nothing else is empty."""
    out = []
    for i, m in enumerate(messages):
        text = canonical_text(without_nul(m["content"]))
        if not text:
            raise RecordError("schema.empty_content", f"turn {i} ({m['role']}): content is empty or whitespace only")
        out.append({"role": m["role"], "content": text})
    try:
        check_turn_order([m["role"] for m in out])
    except TurnOrderError as e:
        raise RecordError(e.code, str(e)) from None
    return out


def _require_text(value: str, field: str) -> str:
    """Named check for the fields a single-turn format needs (finish would only name the turn)."""
    if not canonical_text(without_nul(value)):
        raise RecordError("schema.empty_content", f"field '{field}' is empty or whitespace only")
    return value


def _user_text(instruction: str, extra: str | None) -> str:
    """Instruction and its input/context joined by a blank line, as Alpaca's own prompt does."""
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra and extra.strip() else instruction


def _with_system(system: str | None, messages: Messages) -> Messages:
    return [{"role": "system", "content": system}, *messages] if system and system.strip() else messages


def alpaca(value: Any, source: SourceConfig) -> Converted:
    rec: AlpacaRecord = parse(AlpacaRecord, value)
    extra = None if rec.input is None or rec.input.strip().lower() in PLACEHOLDER_INPUTS else rec.input
    msgs = [{"role": "user", "content": _user_text(_require_text(rec.instruction, "instruction"), extra)},
            {"role": "assistant", "content": _require_text(rec.output, "output")}]
    return finish(_with_system(rec.system, msgs)), None, None


def dolly(value: Any, source: SourceConfig) -> Converted:
    rec: DollyRecord = parse(DollyRecord, value)
    msgs = [{"role": "user", "content": _user_text(_require_text(rec.instruction, "instruction"), rec.context)},
            {"role": "assistant", "content": _require_text(rec.response, "response")}]
    return finish(msgs), rec.category, None


def _map_role(table: dict[str, str], speaker: str, field: str) -> str:
    role = table.get(speaker.strip().lower())
    if role is None:
        known = ", ".join(sorted(table))
        raise RecordError("schema.unknown_role", f"field '{field}': unknown speaker {speaker!r} (expected one of {known})")
    return role


def sharegpt(value: Any, source: SourceConfig) -> Converted:
    rec: ShareGPTRecord = parse(ShareGPTRecord, value)
    msgs = [{"role": _map_role(SHAREGPT_ROLES, t.speaker, f"conversations.{i}.from"), "content": t.value}
            for i, t in enumerate(rec.conversations)]
    return finish(_with_system(rec.system, msgs)), None, None if rec.id is None else str(rec.id)


def openai(value: Any, source: SourceConfig) -> Converted:
    rec: OpenAIRecord = parse(OpenAIRecord, value)
    msgs = [{"role": _map_role(OPENAI_ROLES, m.role, f"messages.{i}.role"), "content": m.content}
            for i, m in enumerate(rec.messages)]
    return finish(msgs), None, None if rec.id is None else str(rec.id)


#: (prompt key, completion key) pairs tried in order when the config names none.
PROMPT_COMPLETION_KEYS = (("prompt", "completion"), ("inputs", "targets"))


def prompt_completion(value: Any, source: SourceConfig) -> Converted:
    if not isinstance(value, dict):
        raise RecordError("schema.wrong_type", f"record: expected a JSON object, got {_type_name(value)}")
    if source.prompt_field or source.completion_field:
        keys = (source.prompt_field or "prompt", source.completion_field or "completion")
    else:
        keys = next((k for k in PROMPT_COMPLETION_KEYS if k[0] in value), PROMPT_COMPLETION_KEYS[0])
    try:
        picked = {name: value[key] for name, key in zip(("prompt", "completion"), keys, strict=True) if key in value}
        rec = PromptCompletionRecord.model_validate(picked)
    except ValidationError as e:
        err = validation_error(e)
        # Name the file's own keys, not the model's.
        err.message = err.message.replace("'prompt'", f"'{keys[0]}'").replace("'completion'", f"'{keys[1]}'")
        raise RecordError(err.code, err.message) from None
    completion = rec.completion.rstrip()
    for marker in source.strip_suffixes:
        if marker and completion.endswith(marker):
            completion = completion[: -len(marker)].rstrip()
    msgs = [{"role": "user", "content": _require_text(rec.prompt, keys[0])},
            {"role": "assistant", "content": _require_text(completion, keys[1])}]
    return finish(msgs), None, None


Transform = Callable[[Any, SourceConfig], Converted]
TRANSFORMS: dict[str, Transform] = {
    "alpaca": alpaca,
    "dolly": dolly,
    "sharegpt": sharegpt,
    "openai": openai,
    "prompt_completion": prompt_completion,
    "flan": prompt_completion,
}


def detect_format(record: Any) -> str | None:
    """The format a decoded record is in, from its keys; None when it matches none."""
    if not isinstance(record, dict):
        return None
    keys = record.keys()
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "message_id" in keys and "parent_id" in keys:
        return "oasst"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "instruction" in keys and "response" in keys:
        return "dolly"
    if any(p in keys and c in keys for p, c in PROMPT_COMPLETION_KEYS):
        return "prompt_completion"
    return None
