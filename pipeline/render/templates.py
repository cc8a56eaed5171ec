"""Chat templates: render a conversation to text AND the character spans of every turn.

A template returns `Rendered(text, turns)`. Each turn is `(role, start, end)`: for an assistant turn
`text[start:end]` is its content followed directly by the template's end-of-turn marker (the text the
model must produce: ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`, Llama 2 ` </s>`, Alpaca `</s>`); for a
system or user turn it is the content alone. Role headers and separators lie outside every span.

Built-in templates render in plain Python (fast, spans known by construction) and each carries a
Jinja equivalent with `{% generation %}` markers, saved as `chat_template` with the tokenizer so the
trained model is served (and can be checked by transformers) with the very same text.

Any Hugging Face chat template (a tokenizer dir's `tokenizer_config.json` or a `.jinja` file) renders
in `jinja2.sandbox.ImmutableSandboxedEnvironment` with the globals transformers provides
(`raise_exception`, `strftime_now`, `tojson`, `namespace`). Its spans are derived so:
- every message content is wrapped in private-use sentinel characters before rendering and located
  afterwards (the sentinels are removed, and the result must equal a plain rendering, else the
  template transforms contents and the run fails naming the template);
- if the template has `{% generation %}` blocks, those blocks are the assistant spans (exactly
  transformers' `return_assistant_tokens_mask` semantics); otherwise an assistant span is the content
  plus the end-of-turn marker that follows it (the eos token, after optional whitespace).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

#: Private-use characters that mark message contents and generation blocks while rendering Jinja.
_OPEN, _CLOSE, _GEN_OPEN, _GEN_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_SENTINELS = _OPEN + _CLOSE + _GEN_OPEN + _GEN_CLOSE

Messages = Sequence[dict[str, str]]


class TemplateError(ValueError):
    """A template that cannot be used, or a conversation it cannot render; the message says why."""


class Turn(NamedTuple):
    role: str
    start: int
    end: int


class Rendered(NamedTuple):
    text: str
    turns: list[Turn]


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template: renders text + turn spans, and knows its special tokens and Jinja source."""

    name: str
    jinja: str
    special_tokens: tuple[str, ...]
    eos_token: str
    bos_token: str | None = None
    pad_token: str = "<|pad|>"
    render_fn: Callable[[Messages], Rendered] | None = field(default=None, repr=False, compare=False)

    def render(self, messages: Messages) -> Rendered:
        """Text and turn spans of one whole conversation."""
        assert self.render_fn is not None
        return self.render_fn(messages)

    def tokenizer_config(self) -> dict:
        """The `tokenizer_config.json` entries that make a HF tokenizer render exactly like this template."""
        cfg = {"chat_template": self.jinja, "eos_token": self.eos_token, "pad_token": self.pad_token}
        if self.bos_token:
            cfg["bos_token"] = self.bos_token
        return cfg


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

    def span(self, role: str, s: str) -> None:
        start = self.pos
        self.add(s)
        self.turns.append(Turn(role, start, self.pos))

    def done(self) -> Rendered:
        return Rendered("".join(self.parts), self.turns)


# --- ChatML ------------------------------------------------------------------------------------
def _render_chatml(messages: Messages) -> Rendered:
    b = _Builder()
    for m in messages:
        role, content = m["role"], m["content"]
        b.add(f"<|im_start|>{role}\n")
        b.span(role, content + "<|im_end|>" if role == "assistant" else content)
        b.add("\n" if role == "assistant" else "<|im_end|>\n")
    return b.done()


_CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# --- Llama 3 -----------------------------------------------------------------------------------
def _render_llama3(messages: Messages) -> Rendered:
    b = _Builder()
    b.add("<|begin_of_text|>")
    for m in messages:
        role, content = m["role"], m["content"]
        b.add(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
        if role == "assistant":
            b.span(role, content + "<|eot_id|>")
        else:
            b.span(role, content)
            b.add("<|eot_id|>")
    return b.done()


_LLAMA3_JINJA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


# --- Llama 2 -----------------------------------------------------------------------------------
def _render_llama2(messages: Messages) -> Rendered:
    # The system prompt sits inside the first [INST] block, as Meta's reference code does.
    b = _Builder()
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    first_user = True
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system":
            continue
        if role == "user":
            b.add("<s>[INST] ")
            if first_user and system is not None:
                b.add("<<SYS>>\n")
                b.span("system", system)
                b.add("\n<</SYS>>\n\n")
            first_user = False
            b.span("user", content)
            b.add(" [/INST]")
        else:
            b.add(" ")
            b.span("assistant", content + " </s>")
    return b.done()


_LLAMA2_JINJA = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = none %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.index0 == 0 and system_message is not none %}"
    "{{ bos_token + '[INST] <<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' }}{% generation %}{{ message['content'] + ' ' + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)


# --- Alpaca ------------------------------------------------------------------------------------
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def _render_alpaca(messages: Messages) -> Rendered:
    # A system message replaces the standard preamble; each further exchange repeats the two headers.
    b = _Builder()
    if messages and messages[0]["role"] == "system":
        b.span("system", messages[0]["content"])
    else:
        b.add(ALPACA_PREAMBLE)
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "user":
            b.add("\n\n### Instruction:\n")
            b.span("user", content)
            b.add("\n\n### Response:\n")
        elif role == "assistant":
            b.span("assistant", content + "</s>")
    return b.done()


_ALPACA_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}{{ '" + ALPACA_PREAMBLE + "' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)

BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate(
        "chatml", _CHATML_JINJA, ("<|im_start|>", "<|im_end|>", "<|pad|>"), "<|im_end|>", None, "<|pad|>",
        _render_chatml,
    ),
    "llama3": ChatTemplate(
        "llama3", _LLAMA3_JINJA,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"),
        "<|eot_id|>", "<|begin_of_text|>", "<|pad|>", _render_llama3,
    ),
    "llama2": ChatTemplate("llama2", _LLAMA2_JINJA, ("<s>", "</s>", "<|pad|>"), "</s>", "<s>", "<|pad|>", _render_llama2),
    "alpaca": ChatTemplate("alpaca", _ALPACA_JINJA, ("</s>", "<|pad|>"), "</s>", None, "<|pad|>", _render_alpaca),
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


def jinja_render_text(source: str, messages: Messages, **kwargs: object) -> str:
    """Render a chat template with our sandbox and no markers (what transformers would produce)."""
    out = bounded_render(_jinja_env().from_string(source), messages=list(messages), **kwargs)
    return re.sub(f"[{_SENTINELS}]", "", out)


def _strip_markers(marked: str) -> tuple[str, list[tuple[str, int]]]:
    """Remove sentinels; return the clean text and (sentinel, position in clean text) events."""
    events: list[tuple[str, int]] = []
    parts: list[str] = []
    pos = 0
    last = 0
    for m in re.finditer(f"[{_SENTINELS}]", marked):
        chunk = marked[last : m.start()]
        parts.append(chunk)
        pos += len(chunk)
        events.append((m.group(), pos))
        last = m.end()
    parts.append(marked[last:])
    return "".join(parts), events


def make_jinja_template(
    name: str, source: str, *, bos_token: str | None, eos_token: str, pad_token: str | None = None,
    special_tokens: Sequence[str] = (),
) -> ChatTemplate:
    """A ChatTemplate from Jinja source (see the module docstring for how its spans are found)."""
    env = _jinja_env()
    try:
        compiled = env.from_string(source)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise TemplateError(f"chat template {name!r} does not parse: {e}") from None
    has_generation = re.search(r"\{%-?\s*generation\s*-?%\}", source) is not None
    # The end marker after an assistant content: optional whitespace, then the eos token.
    end_re = re.compile(r"\s*" + re.escape(eos_token)) if eos_token else None
    extra = {"bos_token": bos_token or "", "eos_token": eos_token, "pad_token": pad_token or ""}

    def render(messages: Messages) -> Rendered:
        for m in messages:
            if any(c in m["content"] for c in _SENTINELS):
                raise TemplateError("a message contains a private-use character U+E000..U+E003 used as a marker")
        marked_msgs = [{"role": m["role"], "content": _OPEN + m["content"] + _CLOSE} for m in messages]
        try:
            marked = bounded_render(compiled, messages=marked_msgs, add_generation_prompt=False, **extra)
            plain = bounded_render(compiled, messages=list(messages), add_generation_prompt=False, **extra)
        except TemplateError:
            raise
        except Exception as e:
            raise TemplateError(f"chat template {name!r} failed to render: {e}") from None
        text, events = _strip_markers(marked)
        plain = re.sub(f"[{_SENTINELS}]", "", plain)
        contents: list[tuple[int, int]] = []
        gens: list[tuple[int, int]] = []
        open_at: dict[str, int] = {}
        for mark, pos in events:
            if mark in (_OPEN, _GEN_OPEN):
                open_at[mark] = pos
            else:
                start = open_at.pop(_OPEN if mark == _CLOSE else _GEN_OPEN)
                (contents if mark == _CLOSE else gens).append((start, pos))
        if text != plain or len(contents) != len(messages) or any(
            text[s:e] != m["content"] for (s, e), m in zip(contents, messages, strict=False)
        ):
            raise TemplateError(
                f"chat template {name!r} changes, drops or reorders message contents, so the spans of "
                "assistant turns cannot be located; add {% generation %} markers around each assistant "
                "content and its end-of-turn token, or use a built-in template"
            )
        turns: list[Turn] = []
        gen_iter = iter(gens)
        for (s, e), m in zip(contents, messages, strict=True):
            if m["role"] != "assistant":
                turns.append(Turn(m["role"], s, e))
            elif has_generation:
                gs, ge = next(gen_iter, (s, e))
                turns.append(Turn("assistant", gs, ge))
            else:
                found = end_re.match(text, e) if end_re else None
                if found is None:
                    raise TemplateError(
                        f"chat template {name!r}: no end-of-turn token {eos_token!r} follows an assistant "
                        "turn; add {% generation %} markers or set the tokenizer's eos_token"
                    )
                turns.append(Turn("assistant", s, found.end()))
        return Rendered(text, turns)

    specials = tuple(dict.fromkeys([*special_tokens, *(t for t in (bos_token, eos_token, pad_token) if t)]))
    return ChatTemplate(name, source, specials, eos_token, bos_token, pad_token or eos_token, render)


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
    if cfg_dir is not None and (cfg_dir / "tokenizer_config.json").exists():
        tok_cfg = json.loads((cfg_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
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
    eos = _token_str(tok_cfg.get("eos_token"))
    if not eos:
        raise TemplateError(
            f"template.name = {name!r}: the end-of-turn token is unknown; give a tokenizer dir whose "
            "tokenizer_config.json sets eos_token (tokenizer.path)"
        )
    added = [
        _token_str(v) for v in (tok_cfg.get("added_tokens_decoder") or {}).values() if isinstance(v, dict)
        and v.get("special")
    ]
    return make_jinja_template(
        str(path), source, bos_token=_token_str(tok_cfg.get("bos_token")), eos_token=eos,
        pad_token=_token_str(tok_cfg.get("pad_token")), special_tokens=[a for a in added if a],
    )
