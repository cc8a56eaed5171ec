"""Chat templates: render a conversation to text AND the character spans of every turn.

A template returns `Rendered(text, turns)`. Each turn is `(role, start, end, message)`: for an
assistant turn `text[start:end]` is everything the model generates after the template's assistant
header, through the end-of-turn marker that closes the turn (reasoning, content, tool calls, and
ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`, Llama 2 ` </s>`, Alpaca `</s>`); for a system, user or
tool turn it is the content alone. Role headers and separators lie outside every span.

Messages are the canonical form (docs/CONTRACTS.md): role, content, reasoning, tool_calls (arguments a
JSON string), tool_call_id, name; `tools` is the conversation's JSON list of function schemas. They are
handed to every template as transformers' `apply_chat_template(messages, tools=...)` hands them
(`template_messages`, `template_tools`): keys whose value is None are left out, tool calls become
`{"type": "function", "function": {"name", "arguments": <dict>}}`, reasoning is `reasoning_content`.

Built-in templates each have ONE definition that is served: a Jinja template with `{% generation %}`
markers, saved as `chat_template` with the tokenizer. A plain-Python renderer of the same template is
the fast path of the encode stage; a property test proves it renders the same text and spans as the
Jinja on random conversations (tools, calls, reasoning, any role order), and the decode self-check
of every run re-renders through the served Jinja (`ChatTemplate.served`).

Any Hugging Face chat template (a tokenizer dir's `tokenizer_config.json` or a `.jinja` file) renders
in `jinja2.sandbox.ImmutableSandboxedEnvironment` with the globals transformers provides. Its spans:
- assistant turns: the template's `{% generation %}` blocks when it has them (transformers'
  `return_assistant_tokens_mask` semantics); otherwise from where the generation prompt ends
  (`messages[:i]` rendered with `add_generation_prompt=True` is a prefix of the whole rendering) to
  the end-of-turn marker that follows, found once by rendering a probe conversation and reading what
  the template writes right after an assistant content (`<end_of_turn>`, `<|end|>`, `<|im_end|>`,
  `<|eot_id|>`...; the eos token only when nothing else is found);
- system, user and tool turns: their contents, wrapped in private-use sentinel characters while
  rendering and located afterwards. A template that transforms contents (trims, splits `<think>`)
  gets no such spans; only the assistant spans decide the mask.
Any error while rendering one conversation is a `TemplateError`: that conversation is dropped
(`tokenize.template_error`, with the message), never the run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

#: Private-use characters that mark message contents and generation blocks while rendering Jinja.
_OPEN, _CLOSE, _GEN_OPEN, _GEN_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_SENTINELS = _OPEN + _CLOSE + _GEN_OPEN + _GEN_CLOSE
_SENTINEL_RE = re.compile(f"[{_SENTINELS}]")
#: an opening content marker carries the message's index as a supplementary private-use character, so
#: a template that moves a content (Llama 2's system prompt) still gives it to the right message
_ID_BASE = 0xF0000
_MARK_RE = re.compile(f"{_OPEN}[\U000F0000-\U000FFFFD]?|[{_CLOSE}{_GEN_OPEN}{_GEN_CLOSE}]")

Messages = Sequence[dict[str, Any]]


class TemplateError(ValueError):
    """A template that cannot be used, or a conversation it cannot render; the message says why."""


class Turn(NamedTuple):
    role: str
    start: int
    end: int
    message: int = -1  # index of the message in the rendered conversation


class Rendered(NamedTuple):
    text: str
    turns: list[Turn]


# --- the canonical form, as chat templates read it -------------------------------------------
def _arguments(raw: object) -> object:
    """A tool call's arguments as templates expect them: the dict its JSON string holds (Qwen2.5 and
    Llama 3.1 write `arguments | tojson`; a string there would be quoted twice)."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw if raw is not None else {}


def template_messages(messages: Messages, arguments_as_string: bool = False) -> list[dict[str, Any]]:
    """Canonical messages -> the dicts a chat template reads, as transformers passes them: keys with a
    None value are absent, tool calls are OpenAI function calls with dict arguments, reasoning is
    `reasoning_content` (and `thinking`, transformers' alias). A template that concatenates
    arguments as text (DeepSeek-V3's) gets the JSON string itself (`arguments_as_string`)."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        reasoning = m.get("reasoning")
        if reasoning:
            d["reasoning_content"] = d["thinking"] = reasoning
        calls = m.get("tool_calls")
        if calls:
            d["tool_calls"] = [
                {**({"id": c["id"]} if c.get("id") is not None else {}), "type": "function",
                 "function": {"name": c.get("name") or "", "arguments": c.get("arguments") or "{}"
                              if arguments_as_string else _arguments(c.get("arguments"))}}
                for c in calls
            ]
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None:
                d[key] = m[key]
        out.append(d)
    return out


def template_tools(tools: object) -> list[dict[str, Any]] | None:
    """The conversation's `tools` (a JSON string, or already a list) as a list of OpenAI function
    schemas `{"type": "function", "function": {...}}`; bare `{name, description, parameters}` objects
    are wrapped. None or an empty list: None."""
    if tools is None:
        return None
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except ValueError as e:
            raise TemplateError(f"the conversation's tools are not valid JSON: {e}") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise TemplateError(f"the conversation's tools are a {type(tools).__name__}, not a list of function schemas")
    out = []
    for t in tools:
        if not isinstance(t, dict):
            raise TemplateError("a tool of the conversation is not a JSON object")
        out.append(t if "function" in t and isinstance(t["function"], dict) else {"type": "function", "function": t})
    return out or None


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template: renders text + turn spans, and knows its special tokens and Jinja source.

    `render_fn` receives template messages (`template_messages`) and the tools list (or None)."""

    name: str
    jinja: str
    special_tokens: tuple[str, ...]
    eos_token: str
    bos_token: str | None = None
    pad_token: str = "<|pad|>"
    render_fn: Callable[..., Rendered] | None = field(default=None, repr=False, compare=False)
    #: the text that closes an assistant turn (the trained end-of-turn marker)
    end_of_turn: str = ""
    #: whether the template writes reasoning at all, and in assistant turns followed by a user turn
    renders_reasoning: bool = False
    renders_past_reasoning: bool = False
    builtin: bool = False
    #: tool-call arguments handed over as the JSON string (else as the dict it holds)
    arguments_as_string: bool = False

    def render(self, messages: Messages, tools: object = None, context: int = 0) -> Rendered:
        """Text and turn spans of one whole conversation (canonical messages, tools JSON or list). The
        assistant turns before message `context` are context only: their spans are given where the
        template allows, not required."""
        assert self.render_fn is not None
        try:
            msgs = template_messages(messages, self.arguments_as_string)
            if self.builtin:
                return self.render_fn(msgs, template_tools(tools))
            return self.render_fn(msgs, template_tools(tools), context)
        except TemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - a bad conversation is dropped with its reason, never the run
            raise TemplateError(f"chat template {self.name!r} failed to render: {type(e).__name__}: {e}") from None

    def served(self) -> ChatTemplate:
        """The template as it is served: the Jinja source rendered by the generic path. For a Hugging
        Face template that is this template; a built-in's Python renderer is checked against it."""
        if not self.builtin:
            return self
        cached = _SERVED.get(self.name)
        if cached is None:
            cached = _SERVED[self.name] = make_jinja_template(
                self.name, self.jinja, bos_token=self.bos_token, eos_token=self.eos_token, pad_token=self.pad_token,
                special_tokens=self.special_tokens,
            )
        return cached

    def tokenizer_config(self) -> dict:
        """The `tokenizer_config.json` entries that make a HF tokenizer render exactly like this template."""
        cfg = {"chat_template": self.jinja, "eos_token": self.eos_token, "pad_token": self.pad_token}
        if self.bos_token:
            cfg["bos_token"] = self.bos_token
        return cfg


_SERVED: dict[str, ChatTemplate] = {}


class _Builder:
    """Accumulates text pieces and records spans as it goes (no search, so spans are exact)."""

    __slots__ = ("parts", "pos", "turns")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.turns: list[Turn] = []

    def add(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def span(self, role: str, s: str, index: int) -> None:
        start = self.pos
        self.add(s)
        if s or role == "assistant":
            self.turns.append(Turn(role, start, self.pos, index))

    def done(self) -> Rendered:
        turns = sorted(self.turns, key=lambda t: t.message)
        return Rendered("".join(self.parts), turns)


def _dumps(x: object, indent: int | None = None) -> str:
    """What the templates' `tojson` writes (transformers' filter: json.dumps, ensure_ascii=False)."""
    return json.dumps(x, ensure_ascii=False, indent=indent)


def _assistant_body(m: dict, call: Callable[[dict], str]) -> str:
    """Reasoning, content and tool calls of an assistant turn, as the built-in Jinja writes them."""
    content = m["content"]
    parts = []
    if m.get("reasoning_content"):
        parts.append("<think>\n" + m["reasoning_content"] + "\n</think>\n\n")
    parts.append(content)
    for k, c in enumerate(m.get("tool_calls") or ()):
        if content or k:
            parts.append("\n")
        parts.append(call(c["function"]))
    return "".join(parts)


_THINK_JINJA = (
    "{%- if message.reasoning_content %}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message.content }}"
)


# --- ChatML (tools and calls as Qwen2.5 / Qwen3 write them: Hermes style) ------------------------
_HERMES_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_HERMES_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)


def _hermes_call(f: dict) -> str:
    return '<tool_call>\n{"name": "' + f["name"] + '", "arguments": ' + _dumps(f["arguments"]) + "}\n</tool_call>"


def _render_chatml(messages: list[dict], tools: list[dict] | None) -> Rendered:
    b = _Builder()
    n = len(messages)
    if tools:
        b.add("<|im_start|>system\n")
        if n and messages[0]["role"] == "system":
            b.span("system", messages[0]["content"], 0)
            b.add("\n\n")
        b.add(_HERMES_TOOLS_INTRO + "".join("\n" + _dumps(t) for t in tools) + _HERMES_TOOLS_OUTRO)
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "assistant":
            b.add("<|im_start|>assistant\n")
            b.span(role, _assistant_body(m, _hermes_call) + "<|im_end|>", i)
            b.add("\n")
        elif role == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                b.add("<|im_start|>user")
            b.add("\n<tool_response>\n")
            b.span(role, content, i)
            b.add("\n</tool_response>")
            if i == n - 1 or messages[i + 1]["role"] != "tool":
                b.add("<|im_end|>\n")
        elif not (tools and i == 0 and role == "system"):
            b.add(f"<|im_start|>{role}\n")
            b.span(role, content, i)
            b.add("<|im_end|>\n")
    return b.done()


_CHATML_JINJA = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- " + json.dumps(_HERMES_TOOLS_INTRO) + " }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- " + json.dumps(_HERMES_TOOLS_OUTRO) + " }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}" + _THINK_JINJA +
    "{%- for tool_call in message.tool_calls or [] %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + tool_call.function.name + '\", \"arguments\": ' }}"
    "{{- tool_call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif not (tools and loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# --- Llama 3 (tools and calls as Llama 3.1 writes them: ipython results, JSON calls) -------------
_LLAMA3_TOOLS_INTRO = (
    "Environment: ipython\n\nYou have access to the following functions. To call a function, please respond "
    'with JSON for a function call.Respond in the format {"name": function name, "parameters": dictionary of '
    "argument name and its value}.Do not use variables.\n\n"
)


def _llama3_call(f: dict) -> str:
    return '{"name": "' + f["name"] + '", "parameters": ' + _dumps(f["arguments"]) + "}"


def _render_llama3(messages: list[dict], tools: list[dict] | None) -> Rendered:
    b = _Builder()
    b.add("<|begin_of_text|>")
    if tools:
        b.add("<|start_header_id|>system<|end_header_id|>\n\n" + _LLAMA3_TOOLS_INTRO)
        b.add("".join(_dumps(t, indent=4) + "\n\n" for t in tools))
        if messages and messages[0]["role"] == "system":
            b.span("system", messages[0]["content"], 0)
        b.add("<|eot_id|>")
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "assistant":
            b.add("<|start_header_id|>assistant<|end_header_id|>\n\n")
            b.span(role, _assistant_body(m, _llama3_call) + "<|eot_id|>", i)
        elif role == "tool":
            b.add("<|start_header_id|>ipython<|end_header_id|>\n\n")
            b.span(role, content, i)
            b.add("<|eot_id|>")
        elif not (tools and i == 0 and role == "system"):
            b.add(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
            b.span(role, content, i)
            b.add("<|eot_id|>")
    return b.done()


_LLAMA3_JINJA = (
    "{{- bos_token }}"
    "{%- if tools %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- " + json.dumps(_LLAMA3_TOOLS_INTRO) + " }}"
    "{%- for tool in tools %}{{- tool | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- generation %}" + _THINK_JINJA +
    "{%- for tool_call in message.tool_calls or [] %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '{\"name\": \"' + tool_call.function.name + '\", \"parameters\": ' }}"
    "{{- tool_call.function.arguments | tojson }}{{- '}' }}"
    "{%- endfor %}"
    "{{- '<|eot_id|>' }}{%- endgeneration %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- elif not (tools and loop.first and message['role'] == 'system') %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


# --- Llama 2 -----------------------------------------------------------------------------------
def _no_tools(name: str, m: dict, i: int, first_system_ok: bool) -> None:
    """Llama 2 and Alpaca have no tool format and one system prompt: refuse what they would drop."""
    if m["role"] == "tool" or m.get("tool_calls"):
        raise TemplateError(f"the {name} template renders no tool calls or tool results (message {i})")
    if m["role"] == "system" and not (i == 0 and first_system_ok):
        raise TemplateError(f"the {name} template takes one system message, the first (message {i})")


def _render_llama2(messages: list[dict], tools: list[dict] | None) -> Rendered:
    # The system prompt sits inside the first [INST] block, as Meta's reference code does.
    if tools:
        raise TemplateError("the llama2 template renders no tools")
    b = _Builder()
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    first_user = True
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        _no_tools("llama2", m, i, True)
        if role == "system":
            continue
        if role == "user":
            b.add("<s>[INST] ")
            if first_user and system is not None:
                b.add("<<SYS>>\n")
                b.span("system", system, 0)
                b.add("\n<</SYS>>\n\n")
            first_user = False
            b.span("user", content, i)
            b.add(" [/INST]")
        else:
            b.add(" ")
            b.span("assistant", content + " </s>", i)
    if system is not None and first_user:
        raise TemplateError("the llama2 template puts the system prompt in the first user turn, and there is none")
    return b.done()


_LLAMA2_JINJA = (
    "{%- if tools %}{{- raise_exception('the llama2 template renders no tools') }}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set loop_messages = messages[1:] %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- set system_message = none %}{%- endif %}"
    "{%- set ns = namespace(first_user=true) %}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'tool' or message.tool_calls %}"
    "{{- raise_exception('the llama2 template renders no tool calls or tool results') }}"
    "{%- elif message['role'] == 'user' %}"
    "{%- if ns.first_user and system_message is not none %}"
    "{{- bos_token + '[INST] <<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- set ns.first_user = false %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' }}{%- generation %}{{- message['content'] + ' ' + eos_token }}{%- endgeneration %}"
    "{%- else %}{{- raise_exception('the llama2 template takes one system message, the first') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if system_message is not none and ns.first_user %}"
    "{{- raise_exception('the llama2 template puts the system prompt in the first user turn, and there is none') }}"
    "{%- endif %}"
)


# --- Alpaca ------------------------------------------------------------------------------------
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def _render_alpaca(messages: list[dict], tools: list[dict] | None) -> Rendered:
    # A system message replaces the standard preamble; each further exchange repeats the two headers.
    if tools:
        raise TemplateError("the alpaca template renders no tools")
    b = _Builder()
    if messages and messages[0]["role"] == "system":
        b.span("system", messages[0]["content"], 0)
    else:
        b.add(ALPACA_PREAMBLE)
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        _no_tools("alpaca", m, i, True)
        if role == "user":
            b.add("\n\n### Instruction:\n")
            b.span("user", content, i)
            b.add("\n\n### Response:\n")
        elif role == "assistant":
            b.span("assistant", content + "</s>", i)
    return b.done()


_ALPACA_JINJA = (
    "{%- if tools %}{{- raise_exception('the alpaca template renders no tools') }}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- '" + ALPACA_PREAMBLE + "' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' or message.tool_calls %}"
    "{{- raise_exception('the alpaca template renders no tool calls or tool results') }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{%- elif not loop.first %}{{- raise_exception('the alpaca template takes one system message, the first') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate(
        "chatml", _CHATML_JINJA, ("<|im_start|>", "<|im_end|>", "<|pad|>"), "<|im_end|>", None, "<|pad|>",
        _render_chatml, "<|im_end|>", True, True, True,
    ),
    "llama3": ChatTemplate(
        "llama3", _LLAMA3_JINJA,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"),
        "<|eot_id|>", "<|begin_of_text|>", "<|pad|>", _render_llama3, "<|eot_id|>", True, True, True,
    ),
    "llama2": ChatTemplate(
        "llama2", _LLAMA2_JINJA, ("<s>", "</s>", "<|pad|>"), "</s>", "<s>", "<|pad|>", _render_llama2, " </s>",
        builtin=True,
    ),
    "alpaca": ChatTemplate(
        "alpaca", _ALPACA_JINJA, ("</s>", "<|pad|>"), "</s>", None, "<|pad|>", _render_alpaca, "</s>", builtin=True,
    ),
}


# --- Jinja (any Hugging Face chat_template) ----------------------------------------------------
def _jinja_env():  # noqa: ANN202 - jinja types are imported lazily
    """A sandboxed environment with what transformers' apply_chat_template provides, plus a
    `generation` tag that marks its block with sentinels."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):  # noqa: ANN001, ANN202
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller) -> str:  # noqa: ANN001
            return _GEN_OPEN + caller() + _GEN_CLOSE

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:  # noqa: ANN001
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """The sandbox, plus a bound on what one expression may build: `'x' * 4000000000` or
        `10 ** 10 ** 9` is refused before it is computed (the output and time bounds are in
        `bounded_render`)."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):  # noqa: ANN001, ANN201
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                        raise jinja2.exceptions.SecurityError(
                            f"the template builds a sequence of {len(seq) * n:,} items (limit {MAX_RENDER_CHARS:,})"
                        )
            elif operator == "**" and isinstance(right, int) and abs(right) > 4096:
                raise jinja2.exceptions.SecurityError(f"the template raises to the power {right} (limit 4096)")
            return super().call_binop(context, operator, left, right)

    env = BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


#: bounds on one rendering of one conversation: a template is code from a model repository
MAX_RENDER_CHARS = 32 << 20
MAX_RENDER_SECONDS = 20.0


def bounded_render(compiled, **context: object) -> str:  # noqa: ANN001 - a jinja2.Template
    """Render piece by piece, stopping with a TemplateError past MAX_RENDER_CHARS characters or
    MAX_RENDER_SECONDS seconds (a template looping over ranges it builds itself)."""
    pieces: list[str] = []
    size = 0
    deadline = time.monotonic() + MAX_RENDER_SECONDS
    for n, piece in enumerate(compiled.generate(**context)):
        pieces.append(piece)
        size += len(piece)
        if size > MAX_RENDER_CHARS:
            raise TemplateError(f"the chat template rendered more than {MAX_RENDER_CHARS:,} characters for one conversation")
        if n % 256 == 255 and time.monotonic() > deadline:
            raise TemplateError(f"the chat template took more than {MAX_RENDER_SECONDS:.0f} s for one conversation")
    return "".join(pieces)


def jinja_render_text(source: str, messages: Messages, tools: object = None, **kwargs: object) -> str:
    """Render a chat template with our sandbox and no markers (what transformers would produce)."""
    out = bounded_render(
        _jinja_env().from_string(source), messages=template_messages(messages), tools=template_tools(tools), **kwargs
    )
    return _MARK_RE.sub("", out)


def _strip_markers(marked: str) -> tuple[str, list[tuple[str, int]]]:
    """Remove sentinels; return the clean text and (sentinel, position in clean text) events (an
    opening content marker with its message id: two characters)."""
    events: list[tuple[str, int]] = []
    parts: list[str] = []
    pos = 0
    last = 0
    for m in _MARK_RE.finditer(marked):
        chunk = marked[last : m.start()]
        parts.append(chunk)
        pos += len(chunk)
        events.append((m.group(), pos))
        last = m.end()
    parts.append(marked[last:])
    return "".join(parts), events


def _pairs(events: list[tuple[str, int]], open_mark: str, close_mark: str) -> list[tuple[int, int, int]] | None:
    """(start, end, message id) of every open..close pair of one kind, in order; None when they do not
    nest properly (a template that split or dropped a marked content)."""
    out: list[tuple[int, int, int]] = []
    start = None
    ident = -1
    for mark, pos in events:
        if mark[0] == open_mark:
            if start is not None:
                return None
            start, ident = pos, (ord(mark[1]) - _ID_BASE if len(mark) > 1 else -1)
        elif mark == close_mark:
            if start is None:
                return None
            out.append((start, pos, ident))
            start = None
    return out if start is None else None


#: probe conversations for the end-of-turn marker (some templates refuse system messages, or need one)
_PROBE_ANSWER = "Probe answer one."
_PROBES = (
    [{"role": "user", "content": "Probe question one?"}, {"role": "assistant", "content": _PROBE_ANSWER},
     {"role": "user", "content": "Probe question two?"}, {"role": "assistant", "content": "Probe answer two."}],
    [{"role": "system", "content": "Probe system."}, {"role": "user", "content": "Probe question one?"},
     {"role": "assistant", "content": _PROBE_ANSWER}, {"role": "user", "content": "Probe question two?"},
     {"role": "assistant", "content": "Probe answer two."}],
)
_TAG_RE = re.compile(r"\s*(<[^<>\s]{1,64}>|\[[^\[\]\s]{1,64}\])")


def end_of_turn_marker(compiled, specials: Sequence[str], eos_token: str | None, extra: dict) -> str | None:  # noqa: ANN001
    """What the template writes right after an assistant turn's content: render a probe conversation
    and read the text between the first answer and the next question. The marker is the first
    special token there (after optional whitespace, which belongs to it: Llama 2's ' </s>'), else the
    first tag-like token (`<end_of_turn>`), else the eos token if it follows; None if nothing does."""
    for probe in _PROBES:
        try:
            text = _SENTINEL_RE.sub("", bounded_render(compiled, messages=probe, add_generation_prompt=False, **extra))
        except Exception:  # noqa: BLE001, S112 - this probe's shape is refused; try the next
            continue
        at = text.find(_PROBE_ANSWER)
        nxt = text.find("Probe question two?")
        if at < 0 or nxt < 0:
            continue
        tail = text[at + len(_PROBE_ANSWER) : nxt]
        stripped = tail.lstrip()
        lead = tail[: len(tail) - len(stripped)]
        for s in sorted((s for s in specials if s), key=len, reverse=True):
            if stripped.startswith(s) and s != (extra.get("bos_token") or None):
                return lead + s
        m = _TAG_RE.match(tail)
        if m:
            return m.group(0)
        if eos_token and stripped.startswith(eos_token):
            return lead + eos_token
    return None


def _has_generation_prompt(compiled, extra: dict) -> bool:  # noqa: ANN001
    """Whether `add_generation_prompt=True` appends an assistant header."""
    probe = _PROBES[0][:1]
    try:
        with_prompt = bounded_render(compiled, messages=probe, add_generation_prompt=True, **extra)
        return with_prompt != bounded_render(compiled, messages=probe, add_generation_prompt=False, **extra)
    except Exception:  # noqa: BLE001
        return False


def _arguments_probe(plain: Callable[..., str]) -> bool:
    """Whether the template needs tool-call arguments as a JSON string: it fails on the dict (it
    concatenates them as text, like DeepSeek-V3's) and renders the string."""
    def conv(args: object) -> list[dict]:
        call = {"type": "function", "function": {"name": "probe_tool", "arguments": args}}
        return [{"role": "user", "content": "Probe question one?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "Probe result.", "name": "probe_tool"},
                {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        plain(conv({"q": 1}), None)
        return False
    except Exception:  # noqa: BLE001
        try:
            plain(conv('{"q": 1}'), None)
            return True
        except Exception:  # noqa: BLE001
            return False


def _reasoning_probe(render: Callable[[list[dict], list[dict] | None], str]) -> tuple[bool, bool]:
    """(renders reasoning at all, renders it in an assistant turn that a user turn follows)."""
    conv = [
        {"role": "user", "content": "Probe question one?"},
        {"role": "assistant", "content": _PROBE_ANSWER, "reasoning_content": "Probe thought one.",
         "thinking": "Probe thought one."},
        {"role": "user", "content": "Probe question two?"},
        {"role": "assistant", "content": "Probe answer two.", "reasoning_content": "Probe thought two.",
         "thinking": "Probe thought two."},
    ]
    try:
        text = render(conv, None)
    except Exception:  # noqa: BLE001 - a template that refuses the probe: assume it renders none
        return False, False
    return "Probe thought two." in text, "Probe thought one." in text


def make_jinja_template(
    name: str, source: str, *, bos_token: str | None, eos_token: str | None, pad_token: str | None = None,
    special_tokens: Sequence[str] = (),
) -> ChatTemplate:
    """A ChatTemplate from Jinja source (see the module docstring for how its spans are found)."""
    env = _jinja_env()
    try:
        compiled = env.from_string(source)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise TemplateError(f"chat template {name!r} does not parse: {e}") from None
    has_generation = re.search(r"\{%-?\s*generation\s*-?%\}", source) is not None
    extra = {"bos_token": bos_token or "", "eos_token": eos_token or "", "pad_token": pad_token or ""}
    specials = tuple(dict.fromkeys([*special_tokens, *(t for t in (bos_token, eos_token, pad_token) if t)]))
    end_marker = end_of_turn_marker(compiled, specials, eos_token, extra)
    no_end = (
        f"chat template {name!r}: cannot tell what closes an assistant turn (nothing tag-like, nor the eos "
        f"token {eos_token!r}, follows an assistant content in a probe conversation); add {{% generation %}} "
        "markers around each assistant turn, or set the tokenizer's eos_token"
    )
    end_stripped = (end_marker or "").strip()
    gen_prompt = _has_generation_prompt(compiled, extra)

    def plain(msgs: list[dict], tools: list[dict] | None, gen_prompt: bool = False) -> str:
        return bounded_render(compiled, messages=msgs, tools=tools, add_generation_prompt=gen_prompt, **extra)

    def render(messages: list[dict], tools: list[dict] | None, context: int = 0) -> Rendered:
        for m in messages:
            if _SENTINEL_RE.search(m["content"]) or _SENTINEL_RE.search(m.get("reasoning_content", "")):
                raise TemplateError("a message contains a private-use character U+E000..U+E003 used as a marker")
        # 1. the text (generation blocks marked, nothing else)
        text, gen_events = _strip_markers(plain(messages, tools))
        # 2. content spans of system, user and tool turns (wrapped contents, located afterwards)
        # (assistant contents too, where the template has no generation prompt to end a turn's header)
        wrapped = [i for i, m in enumerate(messages) if m["content"] and (m["role"] != "assistant" or not gen_prompt)]
        marked_msgs = [dict(m) for m in messages]
        for i in wrapped:
            marked_msgs[i]["content"] = _OPEN + chr(_ID_BASE + i) + messages[i]["content"] + _CLOSE
        marked_text, events = _strip_markers(plain(marked_msgs, tools))
        contents = _pairs(events, _OPEN, _CLOSE) if marked_text == text else None
        turns: list[Turn] = []
        content_at: dict[int, int] = {}
        if contents is not None and sorted(i for _, _, i in contents) == wrapped and all(
            text[s:e] == messages[i]["content"] for s, e, i in contents
        ):
            turns += [Turn(messages[i]["role"], s, e, i) for s, e, i in contents if messages[i]["role"] != "assistant"]
            content_at = {i: s for s, _, i in contents}
        # 3. assistant spans
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if has_generation:
            gens = _pairs(gen_events, _GEN_OPEN, _GEN_CLOSE)
            if gens is None or len(gens) != len(assistants):
                raise TemplateError(
                    f"chat template {name!r} wrote {len(gens or [])} {{% generation %}} blocks for "
                    f"{len(assistants)} assistant turns; each assistant turn needs exactly one"
                )
            turns += [Turn("assistant", s, e, i) for (s, e, _), i in zip(gens, assistants, strict=True)]
        else:
            for i in assistants:
                try:
                    turns.append(_assistant_span(i, messages, tools, text, content_at.get(i)))
                except TemplateError:
                    if i >= context:
                        raise
        for t in turns:
            # (a template may trim a content, as Llama 3.1's and Gemma's do: the text is still the data's)
            content = messages[t.message]["content"].strip()
            if t.role == "assistant" and t.message >= context and content and content not in text[t.start : t.end]:
                raise TemplateError(
                    f"chat template {name!r} changes or drops the content of assistant turn {t.message} (it "
                    "trims, rewrites or leaves out text the data holds), so it cannot be trained on as written"
                )
        turns.sort(key=lambda t: t.message)
        return Rendered(text, turns)

    def _assistant_span(i: int, messages: list[dict], tools: list[dict] | None, text: str, at: int | None) -> Turn:
        prompt = _SENTINEL_RE.sub("", plain(messages[:i], tools, gen_prompt=True))
        if not text.startswith(prompt):
            # a generation prompt that forces the start of the reply (DeepSeek-R1's '<think>\n') which the
            # history does not show: the turn starts after the part of the prompt the history shares
            base = _SENTINEL_RE.sub("", plain(messages[:i], tools))
            if prompt.startswith(base) and text.startswith(base):
                k = len(base)
                while k < len(prompt) and k < len(text) and prompt[k] == text[k]:
                    k += 1
                # back to the end of the last tag or line the two share (not into '<think>' vs '<tool...')
                while k > len(base) and prompt[k - 1] not in ">\n":
                    k -= 1
                prompt = text[:k]
        if not text.startswith(prompt):
            raise TemplateError(
                f"chat template {name!r} renders the turns before assistant turn {i} differently once later turns "
                "follow (it drops earlier reasoning, or reads ahead), so what the model sees at that turn is not "
                "in this rendering; template.reasoning = 'split' renders each such turn as at inference"
            )
        start = len(prompt)
        if end_marker is None:
            raise TemplateError(no_end)
        if not gen_prompt:  # no generation prompt: the header ends where the content starts
            if at is None:
                raise TemplateError(
                    f"chat template {name!r} has no generation prompt (add_generation_prompt), so where assistant "
                    f"turn {i} starts cannot be told; add {{% generation %}} markers"
                )
            start = at
        end = text.find(end_stripped, start)
        if end < 0:
            raise TemplateError(f"chat template {name!r}: no end-of-turn {end_stripped!r} closes assistant turn {i}")
        return Turn("assistant", start, end + len(end_stripped), i)

    renders_reasoning, renders_past = _reasoning_probe(lambda m, t: _SENTINEL_RE.sub("", plain(m, t)))
    as_string = _arguments_probe(plain)
    specials = tuple(dict.fromkeys([*specials, *([end_stripped] if _TAG_RE.fullmatch(end_stripped) else [])]))
    return ChatTemplate(
        name, source, specials, eos_token or end_stripped, bos_token, pad_token or eos_token or end_stripped, render,
        end_marker or "", renders_reasoning, renders_past, False, as_string,
    )


def _token_str(value: object) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def load_template(name: str, tokenizer_dir: Path | None = None) -> ChatTemplate:
    """A built-in template by name, or the chat_template of a HF tokenizer dir / a .jinja file.

    For a .jinja file the bos/eos tokens come from `tokenizer_dir`'s tokenizer_config.json if given.
    """
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    path = Path(name)
    if not path.exists():
        raise TemplateError(
            f"template.name = {name!r}: not a built-in ({', '.join(BUILTIN_TEMPLATES)}) and no such "
            "file or directory (give a Hugging Face tokenizer dir or a .jinja file)"
        )
    cfg_dir = path if path.is_dir() else tokenizer_dir
    tok_cfg: dict = {}
    if cfg_dir is not None and (Path(cfg_dir) / "tokenizer_config.json").exists():
        tok_cfg = json.loads((Path(cfg_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
    if path.is_dir():
        source = tok_cfg.get("chat_template")
        if source is None and (path / "chat_template.jinja").exists():
            source = (path / "chat_template.jinja").read_text(encoding="utf-8")
        if isinstance(source, list):  # named templates: take the default one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        if not source:
            raise TemplateError(f"template.name = {name!r}: {path}/tokenizer_config.json has no chat_template")
    else:
        source = path.read_text(encoding="utf-8")
    added = [
        _token_str(v) for v in (tok_cfg.get("added_tokens_decoder") or {}).values() if isinstance(v, dict)
        and v.get("special")
    ]
    return make_jinja_template(
        str(path), source, bos_token=_token_str(tok_cfg.get("bos_token")), eos_token=_token_str(tok_cfg.get("eos_token")),
        pad_token=_token_str(tok_cfg.get("pad_token")), special_tokens=[a for a in added if a],
    )
