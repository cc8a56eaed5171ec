"""One small transform per source format: a decoded raw record -> a canonical Conversation, or a RecordError.

Each transform validates the record (with its pydantic model in schemas.records where the shape is
fixed), maps speakers to the canonical roles, and `finish` applies the rules every conversation
obeys (schemas.conversation.check_turn_order: optional leading system, user/assistant alternating,
tool results right after a call, ending with the assistant). OpenAssistant rows are not single
records; they are assembled into trees in `pipeline.ingest.oasst`. Self-Instruct tasks hold several
instances; `expand_self_instruct` splits a task into them and each is one record (`EXPANDERS`).

Tool calling and reasoning (the canonical message fields of pipeline.ingest.canonical):
- `tool_calls` entries come as OpenAI's `{id, type, function: {name, arguments}}`, as a flat
  `{name, arguments}` (LLaMA-Factory, glaive), or as OpenAI's legacy `function_call`; `arguments`,
  a JSON string or an object, is stored as compact JSON text (`schema.invalid_tool_call` when it is
  not JSON or the name is missing);
- `tools`, a list or a JSON string of one, is stored as compact JSON text; an empty list is null;
- an assistant turn's `reasoning_content` / `reasoning`, a `reasoning` content part, or a
  `<think>…</think>` block at the start of its content become `reasoning`;
- content given as a list of parts: text parts are joined with a newline; an image, audio, video or
  file part quarantines the record (`schema.unsupported_content_part`) until multimodal data exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from pipeline.ingest.files import RecordError
from schemas.config_sources import SourceConfig
from schemas.conversation import TurnOrderError, canonical_text, check_turn_order
from schemas.records import (
    AlpacaRecord,
    DollyRecord,
    OasstMessage,
    OpenAIRecord,
    PromptCompletionRecord,
    SelfInstructRecord,
    ShareGPTRecord,
)

Messages = list[dict[str, Any]]


@dataclass(slots=True)
class Conversation:
    """What a transform makes of one record. `notes`: adjustments made on the way (counted per
    source in the ingest stats, e.g. `trimmed_trailing_turns`); `unread`: fields inside the record
    (e.g. `messages.refusal`) that carry text the reader does not use."""

    messages: Messages
    category: str | None = None
    original_id: str | None = None
    tools: str | None = None
    notes: Sequence[str] = ()
    unread: Sequence[str] = ()


#: ShareGPT speakers seen in public dumps (FastChat, Vicuna, WizardLM, Bard/Bing exports, LLaMA-Factory,
#: glaive), lower-cased. "function_call" is an assistant turn that calls tools (its value is the call).
SHAREGPT_ROLES: dict[str, str] = {
    "human": "user", "user": "user", "prompter": "user", "question": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant", "gpt-4": "assistant", "gpt4": "assistant",
    "claude": "assistant", "answer": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool", "tool": "tool", "function": "tool", "ipython": "tool",
}
#: OpenAI roles; "developer" is the newer name of the system role, "function" the legacy tool role,
#: "ipython" Llama 3's.
OPENAI_ROLES: dict[str, str] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                                "tool": "tool", "function": "tool", "ipython": "tool"}
#: Alpaca inputs that mean "no input" in public copies (compared stripped and lower-cased).
PLACEHOLDER_INPUTS = frozenset({"", "noinput", "no input", "<noinput>", "<no input>", "n/a", "none", "null", "nan"})
#: Content part types that carry media, not text: the record is quarantined (no multimodal support yet).
MEDIA_PARTS = frozenset({"image", "image_url", "input_image", "video", "video_url", "audio", "input_audio",
                         "audio_url", "file", "input_file"})
#: OpenAI message keys the reader reads (anything else carrying text is counted as not read).
OPENAI_MESSAGE_KEYS = frozenset({"role", "content", "reasoning_content", "reasoning", "tool_calls", "tool_call_id",
                                 "name", "function_call", "refusal"})
_THINK = re.compile(r"\s*<think>(.*?)</think>\s*", re.S)


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
        field_ = ".".join(str(p) for p in e["loc"]) or "record"
        if e["type"] == "missing":
            code = code or "schema.missing_field"
            parts.append(f"field '{field_}' is missing")
        else:
            code = code or "schema.wrong_type"
            got = e.get("input")
            parts.append(f"field '{field_}': {e['msg'].lower()} (got {_type_name(got)} {_short(got)})")
    return RecordError(code or "schema.wrong_type", "; ".join(parts))


def parse(model: type[BaseModel], value: Any) -> Any:
    """Validate a decoded record against its model, or raise RecordError naming the field."""
    if not isinstance(value, dict):
        raise RecordError("schema.wrong_type", f"record: expected a JSON object, got {_type_name(value)}")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise validation_error(e) from None


def _wrong_type(where: str, expected: str, got: Any) -> RecordError:
    return RecordError("schema.wrong_type", f"field '{where}': expected {expected} (got {_type_name(got)} {_short(got)})")


def without_nul(text: str) -> str:
    """Text with every U+0000 removed (decoded from an escaped \\u0000, or inside a parquet string)."""
    return text.replace("\x00", "") if "\x00" in text else text


def has_text(v: Any) -> bool:
    """A string with non-blank text, or a list/dict holding one."""
    if isinstance(v, str):
        return bool(v.strip())
    if isinstance(v, list | tuple):
        return any(has_text(x) for x in v)
    if isinstance(v, dict):
        return any(has_text(x) for x in v.values())
    return False


# ---------------------------------------------------------------------------------------------- finish


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    return canonical_text(without_nul(text)) or None


def finish(messages: Messages, notes: list[str] | None = None) -> Messages:
    """Canonical text per turn and the turn-order rules; raises RecordError with the schema.* code.

    NUL characters are removed first, so a turn that held nothing else is empty. Empty content is
    allowed for an assistant turn that calls tools and for a tool result (a tool may return nothing);
    every other turn needs text. An agent trajectory's trailing tool/user turns are cut (a note
    `trimmed_trailing_turns` is added to `notes`)."""
    out = []
    calls: list[bool] | None = None  # set once a message has more than role and content
    for i, m in enumerate(messages):
        role = m["role"]
        text = canonical_text(without_nul(m["content"] or ""))
        if len(m) == 2:  # the plain (role, content) message: the hot path
            if not text and role != "tool":
                raise RecordError("schema.empty_content", f"turn {i} ({role}): content is empty or whitespace only")
            out.append({"role": role, "content": text})
            if calls is not None:
                calls.append(False)
            continue
        has_calls = bool(m.get("tool_calls"))
        if not text and not (role == "tool" or (role == "assistant" and has_calls)):
            raise RecordError("schema.empty_content", f"turn {i} ({role}): content is empty or whitespace only")
        msg = {"role": role, "content": text}
        if (r := _clean(m.get("reasoning"))) is not None:
            msg["reasoning"] = r
        if has_calls:
            msg["tool_calls"] = m["tool_calls"]
        for k in ("tool_call_id", "name"):
            if (v := m.get(k)) is not None and (v := without_nul(v).strip()):
                msg[k] = v
        out.append(msg)
        if calls is None:
            calls = [False] * i
        calls.append(has_calls)
    try:
        cut = check_turn_order([m["role"] for m in out], calls, trim=True)
    except TurnOrderError as e:
        raise RecordError(e.code, str(e)) from None
    if cut:
        out = out[:-cut]
        if notes is not None:
            notes.append("trimmed_trailing_turns")
    return out


def _require_text(value: str, field_: str) -> str:
    """Named check for the fields a single-turn format needs (finish would only name the turn)."""
    if not canonical_text(without_nul(value)):
        raise RecordError("schema.empty_content", f"field '{field_}' is empty or whitespace only")
    return value


def _user_text(instruction: str, extra: str | None) -> str:
    """Instruction and its input/context joined by a blank line, as Alpaca's own prompt does."""
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra and extra.strip() else instruction


def _with_system(system: str | None, messages: Messages) -> Messages:
    return [{"role": "system", "content": system}, *messages] if system and system.strip() else messages


# ---------------------------------------------------------------------------------------------- tools


def json_text(value: Any) -> str:
    """Compact JSON text (UTF-8, keys in their given order)."""
    return orjson.dumps(value, default=str).decode("utf-8")


def tools_text(value: Any, where: str = "tools") -> str | None:
    """The offered tools as compact JSON text of a list, or None (absent or an empty list)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            raise RecordError("schema.invalid_tools", f"field '{where}': not valid JSON ({e})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise _wrong_type(where, "a list of function schemas or its JSON text", value)
    return json_text(value) if value else None


def _arguments(value: Any, where: str) -> str:
    if value is None:
        return "{}"
    if isinstance(value, str):
        try:
            value = orjson.loads(value) if value.strip() else {}
        except orjson.JSONDecodeError as e:
            raise RecordError("schema.invalid_tool_call", f"field '{where}': arguments are not valid JSON ({e})") from None
    return json_text(value)


def tool_call(call: Any, where: str) -> dict[str, str | None]:
    """One call as {id, name, arguments}: from OpenAI's {id, type, function: {name, arguments}}
    or a flat {name, arguments} (LLaMA-Factory, glaive; `parameters` is read as arguments too)."""
    if not isinstance(call, dict):
        raise _wrong_type(where, "a tool call object", call)
    fn = call.get("function", call)
    if not isinstance(fn, dict):
        raise _wrong_type(f"{where}.function", "an object with name and arguments", fn)
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError("schema.invalid_tool_call", f"field '{where}': a tool call needs a function name "
                                                      f"(got {_short(name)})")
    args = fn["arguments"] if "arguments" in fn else fn.get("parameters")
    cid = call.get("id")
    return {"id": None if cid is None or cid == "" else str(cid), "name": name.strip(),
            "arguments": _arguments(args, f"{where}.arguments")}


def tool_calls_from_json(text: str, where: str) -> list[dict]:
    """A LLaMA-Factory / glaive function_call value: JSON {name, arguments} or a list of them."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise RecordError("schema.invalid_tool_call", f"field '{where}': the call is not valid JSON ({e})") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RecordError("schema.invalid_tool_call", f"field '{where}': an empty list of calls")
    return [tool_call(c, f"{where}.{i}" if isinstance(value, list) else where) for i, c in enumerate(calls)]


def split_think(content: str) -> tuple[str | None, str]:
    """(reasoning, rest) when content starts with a <think>…</think> block; (None, content) otherwise.
    An empty block (a non-thinking turn of a reasoning model) gives reasoning None."""
    if "<think>" not in content[:64]:
        return None, content
    m = _THINK.match(content)
    if m is None:
        return None, content
    return (m.group(1).strip() or None), content[m.end():]


def _assistant(content: str, reasoning: str | None = None, calls: list | None = None,
               notes: list[str] | None = None) -> dict:
    """An assistant message; a leading <think> block of the content becomes its reasoning."""
    if reasoning is None and "<think>" in content[:64]:
        reasoning, rest = split_think(content)
        if rest is not content:
            content = rest
            if notes is not None:
                notes.append("think_block")
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning"] = reasoning
    if calls:
        msg["tool_calls"] = calls
    return msg


# ---------------------------------------------------------------------------------------------- alpaca, dolly


def _history(history: list | None) -> Messages:
    out: Messages = []
    for i, pair in enumerate(history or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _wrong_type(f"history.{i}", "a [query, response] pair of strings", pair)
        out += [{"role": "user", "content": _require_text(pair[0], f"history.{i}.0")},
                {"role": "assistant", "content": _require_text(pair[1], f"history.{i}.1")}]
    return out


def alpaca(value: Any, source: SourceConfig) -> Conversation:
    rec: AlpacaRecord = parse(AlpacaRecord, value)
    extra = None if rec.input is None or rec.input.strip().lower() in PLACEHOLDER_INPUTS else rec.input
    notes: list[str] = []
    output = _require_text(rec.output, "output")
    reply = (_assistant(output, rec.reasoning, notes=notes) if rec.reasoning is not None or output.find("<think>", 0, 64) >= 0
             else {"role": "assistant", "content": output})
    msgs = [{"role": "user", "content": _user_text(_require_text(rec.instruction, "instruction"), extra)}, reply]
    if rec.history:
        msgs = _history(rec.history) + msgs
    if rec.system:
        msgs = _with_system(rec.system, msgs)
    return Conversation(finish(msgs, notes), None, None, None if rec.tools is None else tools_text(rec.tools), notes)


def dolly(value: Any, source: SourceConfig) -> Conversation:
    rec: DollyRecord = parse(DollyRecord, value)
    msgs = [{"role": "user", "content": _user_text(_require_text(rec.instruction, "instruction"), rec.context)},
            {"role": "assistant", "content": _require_text(rec.response, "response")}]
    return Conversation(finish(msgs), rec.category)


def expand_self_instruct(value: Any) -> list[tuple[str, Any]]:
    """A Self-Instruct task -> one record per instance, ("#<index>", {instruction, input, output, task}).

    A task that is not valid as a whole (no instruction, `instances` not a list, no instance) raises
    RecordError and is one quarantined record."""
    rec: SelfInstructRecord = parse(SelfInstructRecord, value)
    if not rec.instances:
        raise RecordError("schema.no_instances", "field 'instances': the task has no instance")
    task = {"id": None if rec.id is None else str(rec.id), "name": rec.name}
    return [(f"#{i}", {"instruction": rec.instruction, "instance": inst, "task": task})
            for i, inst in enumerate(rec.instances)]


def self_instruct(value: Any, source: SourceConfig) -> Conversation:
    """One instance of a Self-Instruct task (from `expand_self_instruct`): instruction + input -> output."""
    inst = value["instance"]
    if not isinstance(inst, dict):
        raise _wrong_type("instances.*", "an object with input and output", inst)
    out, inp = inst.get("output"), inst.get("input")
    if out is None:
        raise RecordError("schema.missing_field", "field 'instances.*.output' is missing")
    if not isinstance(out, str):
        raise _wrong_type("instances.*.output", "a string", out)
    if inp is not None and not isinstance(inp, str):
        raise _wrong_type("instances.*.input", "a string", inp)
    extra = None if inp is None or inp.strip().lower() in PLACEHOLDER_INPUTS else inp
    msgs = [{"role": "user", "content": _user_text(_require_text(value["instruction"], "instruction"), extra)},
            {"role": "assistant", "content": _require_text(out, "instances.*.output")}]
    unread = [f"instances.{k}" for k, v in inst.items() if k not in ("input", "output") and has_text(v)]
    return Conversation(finish(msgs), value["task"]["name"], value["task"]["id"], unread=unread)


# ---------------------------------------------------------------------------------------------- sharegpt


def _map_role(table: dict[str, str], speaker: str, field_: str) -> str:
    role = table.get(speaker.strip().lower())
    if role is None:
        known = ", ".join(sorted(table))
        raise RecordError("schema.unknown_role",
                          f"field '{field_}': unknown speaker {speaker!r} (expected one of {known})")
    return role


def _sharegpt_table(source: SourceConfig) -> dict[str, str]:
    tags = source.tags
    if tags is None:
        return SHAREGPT_ROLES
    table = dict(SHAREGPT_ROLES)
    for tag, role in ((tags.user_tag, "user"), (tags.assistant_tag, "assistant"), (tags.observation_tag, "tool"),
                      (tags.function_tag, "function_call"), (tags.system_tag, "system")):
        if tag:
            table[tag.strip().lower()] = role
    return table


def _retag(value: Any, source: SourceConfig) -> Any:
    """A record whose turns use other keys than from/value (tags.role_tag / content_tag), or whose turns
    sit under `messages`, in the ShareGPT shape the model reads."""
    if not isinstance(value, dict):
        return value
    if "conversations" not in value and "messages" in value:
        value = {**value, "conversations": value["messages"]}
        del value["messages"]
    tags = source.tags
    if tags is None or (tags.role_tag in (None, "from") and tags.content_tag in (None, "value")):
        return value
    turns = value.get("conversations")
    if isinstance(turns, list):
        rk, ck = tags.role_tag or "from", tags.content_tag or "value"
        turns = [{("from" if k == rk else "value" if k == ck else k): v for k, v in t.items()}
                 if isinstance(t, dict) else t for t in turns]
        value = {**value, "conversations": turns}
    return value


def sharegpt(value: Any, source: SourceConfig) -> Conversation:
    """ShareGPT turns; a `function_call` turn (JSON {name, arguments} or a list of them) is an assistant
    turn that calls tools, merged into the gpt turn right before it when that one made no call; an
    `observation` turn is a tool result."""
    value = _retag(value, source)
    rec: ShareGPTRecord = parse(ShareGPTRecord, value)
    table = _sharegpt_table(source)
    notes: list[str] = []
    msgs: Messages = []
    for i, t in enumerate(rec.conversations):
        role = table.get(t.speaker) or _map_role(table, t.speaker, f"conversations.{i}.from")
        if role == "function_call":
            calls = tool_calls_from_json(t.value, f"conversations.{i}.value")
            prev = msgs[-1] if msgs else None
            if prev is not None and prev["role"] == "assistant":
                prev["tool_calls"] = [*(prev.get("tool_calls") or []), *calls]
            else:
                msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif role == "assistant" and t.value.find("<think>", 0, 64) >= 0:
            msgs.append(_assistant(t.value, notes=notes))
        else:
            msgs.append({"role": role, "content": t.value})
    system = rec.system
    if system and msgs and msgs[0]["role"] == "system" and system.strip():
        raise RecordError("schema.misplaced_system", "a system prompt both in 'system' and as the first turn")
    if system:
        msgs = _with_system(system, msgs)
    unread = [f"conversations.{k}" for t in value["conversations"] if len(t) > 2
              for k, v in t.items() if k not in ("from", "value") and has_text(v)]
    return Conversation(finish(msgs, notes), None, None if rec.id is None else str(rec.id),
                        None if rec.tools is None else tools_text(rec.tools), notes, unread)


# ---------------------------------------------------------------------------------------------- openai


def _parts(content: list, where: str, role: str) -> tuple[str, str | None, list]:
    """Content given as a list of parts -> (text, reasoning, calls). OpenAI parts are {type, text};
    LLaMA-Factory's v1 parts are {type, value} with type text, reasoning or tool_call."""
    texts, thoughts, calls = [], [], []
    for j, p in enumerate(content):
        w = f"{where}.{j}"
        if isinstance(p, str):
            texts.append(p)
            continue
        if not isinstance(p, dict):
            raise _wrong_type(w, "a content part object", p)
        kind = p.get("type", "text")
        body = p.get("text", p.get("value"))
        if kind in MEDIA_PARTS:
            raise RecordError("schema.unsupported_content_part", f"field '{w}': a content part of type {kind!r}; only "
                                                                 "text is read (multimodal data is not supported yet)")
        if kind in ("text", "input_text", "output_text", "reasoning", "thinking") and not isinstance(body, str):
            raise _wrong_type(f"{w}.text", "a string", body)
        if kind in ("text", "input_text", "output_text"):
            texts.append(body)
        elif kind in ("reasoning", "thinking") and role == "assistant":
            thoughts.append(body)
        elif kind == "tool_call" and role == "assistant":
            calls += (tool_calls_from_json(body, f"{w}.value") if isinstance(body, str)
                      else [tool_call(c, f"{w}.value") for c in (body if isinstance(body, list) else [body])])
        else:
            raise RecordError("schema.unsupported_content_part",
                              f"field '{w}': a {kind!r} part in a {role} turn is not read")
    return "\n".join(texts), ("\n".join(thoughts) if thoughts else None), calls


_PLAIN_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _openai_message(m: Any, i: int, notes: list[str], unread: list[str]) -> dict:
    if type(m) is dict and len(m) == 2 and type(content := m.get("content")) is str:  # the hot path: {role, content}
        role = _PLAIN_OPENAI_ROLES.get(m["role"]) if type(m.get("role")) is str else None
        if role is not None and (role != "assistant" or content.find("<think>", 0, 64) < 0):
            return {"role": role, "content": content}
    w = f"messages.{i}"
    if not isinstance(m, dict):
        raise _wrong_type(w, "a message object", m)
    if "role" not in m:
        raise RecordError("schema.missing_field", f"field '{w}.role' is missing")
    if not isinstance(m["role"], str):
        raise _wrong_type(f"{w}.role", "a string", m["role"])
    role = _map_role(OPENAI_ROLES, m["role"], f"{w}.role")
    calls = m.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise _wrong_type(f"{w}.tool_calls", "a list of calls", calls)
    calls = [tool_call(c, f"{w}.tool_calls.{j}") for j, c in enumerate(calls or [])]
    if (fc := m.get("function_call")) is not None:  # OpenAI's legacy single call
        calls.append(tool_call(fc, f"{w}.function_call"))
    if calls and role != "assistant":
        raise RecordError("schema.wrong_type", f"field '{w}.tool_calls': only an assistant turn calls tools")
    reasoning = m.get("reasoning_content", m.get("reasoning"))
    if reasoning is not None and not isinstance(reasoning, str):
        raise _wrong_type(f"{w}.reasoning_content", "a string", reasoning)
    content = m.get("content")
    refusal = m.get("refusal")
    if content is None and not calls:
        if isinstance(refusal, str) and refusal.strip() and role == "assistant":
            content, refusal = refusal, None
        elif "content" not in m:
            raise RecordError("schema.missing_field", f"field '{w}.content' is missing")
        else:
            raise _wrong_type(f"{w}.content", "a string", content)
    if isinstance(content, list):
        content, part_reasoning, part_calls = _parts(content, f"{w}.content", role)
        reasoning = reasoning if part_reasoning is None else part_reasoning
        calls += part_calls
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise _wrong_type(f"{w}.content", "a string or a list of content parts", content)
    if len(m) > 2 and not m.keys() <= OPENAI_MESSAGE_KEYS:
        unread += [f"messages.{k}" for k, v in m.items() if k not in OPENAI_MESSAGE_KEYS and has_text(v)]
    if refusal is not None and has_text(refusal):  # a refusal next to content: the content is the turn
        unread.append("messages.refusal")
    if role == "assistant":
        msg = _assistant(content, reasoning if reasoning and reasoning.strip() else None, calls, notes)
        if m.get("name") is not None and has_text(m["name"]):
            unread.append("messages.name")
        return msg
    msg = {"role": role, "content": content}
    if role == "tool":
        for k in ("tool_call_id", "name"):
            v = m.get(k)
            if v is not None and not isinstance(v, str | int):
                raise _wrong_type(f"{w}.{k}", "a string", v)
            if v is not None:
                msg[k] = str(v)
    elif m.get("name") is not None and has_text(m["name"]):
        unread.append("messages.name")
    if reasoning is not None and has_text(reasoning):
        unread.append("messages.reasoning_content")
    return msg


def openai(value: Any, source: SourceConfig) -> Conversation:
    rec: OpenAIRecord = parse(OpenAIRecord, value)
    notes: list[str] = []
    unread: list[str] = []
    # The model checked the types; the raw dicts are read, to tell absent from null and see every key.
    msgs = [_openai_message(m, i, notes, unread) for i, m in enumerate(value["messages"])]
    if rec.system is not None and not (msgs and msgs[0]["role"] == "system"):
        msgs = _with_system(rec.system, msgs)
    return Conversation(finish(msgs, notes), None, None if rec.id is None else str(rec.id),
                        None if rec.tools is None else tools_text(rec.tools), notes,
                        sorted(set(unread)) if unread else unread)


# ---------------------------------------------------------------------------------------------- prompt/completion

#: (prompt key, completion key) pairs tried in order when the config names none.
PROMPT_COMPLETION_KEYS = (("prompt", "completion"), ("inputs", "targets"))


def prompt_completion(value: Any, source: SourceConfig) -> Conversation:
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
    return Conversation(finish(msgs))


Transform = Callable[[Any, SourceConfig], Conversation]
TRANSFORMS: dict[str, Transform] = {
    "alpaca": alpaca,
    "dolly": dolly,
    "sharegpt": sharegpt,
    "openai": openai,
    "prompt_completion": prompt_completion,
    "flan": prompt_completion,
    "self_instruct": self_instruct,
}
#: The record model of each format (what its reader reads at the top level).
RECORD_MODELS: dict[str, type[BaseModel]] = {
    "alpaca": AlpacaRecord, "dolly": DollyRecord, "sharegpt": ShareGPTRecord, "openai": OpenAIRecord,
    "oasst": OasstMessage, "prompt_completion": PromptCompletionRecord, "flan": PromptCompletionRecord,
    "self_instruct": SelfInstructRecord,
}
#: Formats whose record holds several conversations: record -> [(locator suffix, unit record), …].
EXPANDERS: dict[str, Callable[[Any], list[tuple[str, Any]]]] = {"self_instruct": expand_self_instruct}


def detect_format(record: Any) -> str | None:
    """The format a decoded record is in, from its keys; None when it matches none."""
    if not isinstance(record, dict):
        return None
    keys = record.keys()
    if "messages" in keys:
        first = record["messages"][0] if isinstance(record["messages"], list) and record["messages"] else None
        if isinstance(first, dict) and "from" in first and "role" not in first:
            return "sharegpt"
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "message_id" in keys and "parent_id" in keys:
        return "oasst"
    if "instruction" in keys and "instances" in keys:
        return "self_instruct"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "instruction" in keys and "response" in keys:
        return "dolly"
    if any(p in keys and c in keys for p, c in PROMPT_COMPLETION_KEYS):
        return "prompt_completion"
    return None


# ---------------------------------------------------------------------------------------------- fields not read

#: Top-level keys that hold bookkeeping, not conversation text: never counted as not read.
METADATA_KEYS = frozenset({"id", "uuid", "idx", "index", "lang", "language", "locale", "source", "dataset",
                           "license", "split", "url", "created_at", "created_date", "updated_at", "timestamp", "date",
                           "model", "model_name", "type", "tree_state"})
#: Per format, keys its reader does not use that are bookkeeping too (oasst1's emoji and label names).
FORMAT_METADATA: dict[str, frozenset[str]] = {"oasst": frozenset({"emojis", "labels", "detoxify"})}
_EXTRA_READ: dict[str, frozenset[str]] = {
    "prompt_completion": frozenset({"prompt", "completion", "inputs", "targets"}),
    "flan": frozenset({"prompt", "completion", "inputs", "targets"}),
    "sharegpt": frozenset({"messages"}),
}


def fields_read(fmt: str, model: type[BaseModel] | None) -> frozenset[str]:
    """The top-level keys the reader of `fmt` reads (its record model's fields and aliases), and the
    bookkeeping keys that are never counted as not read."""
    names = set(METADATA_KEYS) | FORMAT_METADATA.get(fmt, frozenset()) | _EXTRA_READ.get(fmt, frozenset())
    if model is not None:
        names |= set(model.model_fields)
        names |= {f.alias for f in model.model_fields.values() if f.alias}
    return frozenset(names)


def unread_keys(value: Any, known: frozenset[str]) -> list[str]:
    """Top-level keys of a record outside `known` that carry text (a string, or a list/dict holding
    one); a key named `…_id` is bookkeeping. Cheap when there is none: one set difference."""
    if not isinstance(value, dict) or value.keys() <= known:
        return []
    return [k for k, v in value.items() if k not in known and not k.endswith("_id") and has_text(v)]


def remap(value: Any, renames: dict[str, str]) -> tuple[Any, list[str]]:
    """A record with its keys renamed by a column mapping ({file key: key the reader reads}), and the
    file's own keys that a renamed one replaced and that carry text (so they are counted as not read)."""
    if not isinstance(value, dict) or not renames:
        return value, []
    out: dict[str, Any] = {}
    targets = set(renames.values())
    lost = []
    for k, v in value.items():
        if k in renames:
            out[renames[k]] = v
        elif k in targets:
            if has_text(v):
                lost.append(k)
        else:
            out[k] = v
    return out, lost
