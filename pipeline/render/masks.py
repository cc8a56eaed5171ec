"""Render, tokenize and mask whole conversations: ids and loss mask from ONE tokenization.

Each conversation is rendered once by its template (text + character spans of every turn), the whole
text is tokenized once (`encode_batch`, batched), and the loss mask is derived from the character
spans through the token offsets. Prompt and response are never tokenized apart.

Targets (mask = 1), as docs/CONTRACTS.md states: the tokens carrying assistant content and the end-of-turn
marker closing each assistant turn; with `train_on = "last_assistant"` only the last assistant turn;
with `train_on_prompt` also the system and user contents. The first token of a conversation is never
a target (nothing precedes it to predict it from).

Straddling tokens (written down once, here, and tested): a token is a target if ANY of its characters
lies inside a target span. So a token that merges a header's last character with the first character
of an assistant reply (e.g. " Hello" after "[/INST]", or "\\n\\n" + "Hi") is a target: the model must
produce the reply's characters, and this is the same rule as transformers'
`return_assistant_tokens_mask`. Such a token can only carry template text besides the target
characters (a role header or separator) never system or user content; the decode self-check
(`check_conversation`) verifies exactly that for every checked conversation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tokenizers import Encoding, Tokenizer

from pipeline.render.reasoning import split_think, training_examples
from pipeline.render.templates import ChatTemplate, Messages, Rendered, TemplateError, Turn

TOO_LONG = "tokenize.too_long"
NO_SUPERVISED = "tokenize.no_supervised_tokens"
SPECIAL_IN_CONTENT = "tokenize.special_token_in_content"
TEMPLATE_ERROR = "tokenize.template_error"


@dataclass(frozen=True)
class MaskOptions:
    """Which turns are targets, and what happens to conversations longer than a row."""

    train_on: str = "all_assistant"
    train_on_prompt: bool = False
    max_seq_len: int | None = None
    overflow: str = "drop"
    reasoning: str = "split"  # pipeline.render.reasoning


@dataclass
class Encoded:
    """Per-conversation results of `encode_conversations` (lists aligned with the input)."""

    ids: list[np.ndarray] = field(default_factory=list)  # int32; empty when dropped
    masks: list[np.ndarray] = field(default_factory=list)  # uint8; empty when dropped
    reasons: list[str | None] = field(default_factory=list)  # None = kept, else a ledger reason code
    details: list[str | None] = field(default_factory=list)  # the ledger sentence for a drop
    full_tokens: list[int] = field(default_factory=list)  # rendered length before truncation
    full_supervised: list[int] = field(default_factory=list)  # targets before truncation
    truncated: list[bool] = field(default_factory=list)
    #: lengths of the training examples concatenated in `ids` (one, unless template.reasoning = "split"
    #: cut the conversation into several); each is a packed segment of its own
    segments: list[list[int]] = field(default_factory=list)
    #: how the texts were encoded: tiktoken on the same byte-level vocabulary, or tokenizers and why
    encoder: str = ""


def special_token_pattern(tok: Tokenizer) -> re.Pattern[str] | None:
    """A regex matching any special (control) token of the tokenizer written as text."""
    specials = sorted((t.content for t in tok.get_added_tokens_decoder().values() if t.special), key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in specials)) if specials else None


def target_turns(turns: Sequence[Turn], opts: MaskOptions) -> list[Turn]:
    """The turns whose spans are targets under `opts`."""
    assistants = [t for t in turns if t.role == "assistant"]
    if opts.train_on == "last_assistant":
        assistants = assistants[-1:]
    chosen = set(assistants)
    if opts.train_on_prompt:
        chosen.update(t for t in turns if t.role != "assistant")
    return [t for t in turns if t in chosen and t.end > t.start]


def token_range(enc: Encoding, start: int, end: int, n: int) -> tuple[int, int] | None:
    """[first, last+1) of the tokens that overlap characters [start, end); None if no token does."""
    first = None
    for c in range(start, end):  # a char not covered by any token (normaliser removed it) is skipped
        first = enc.char_to_token(c)
        if first is not None:
            break
    if first is None:
        return None
    last = first
    for c in range(end - 1, start - 1, -1):
        t = enc.char_to_token(c)
        if t is not None:
            last = t
            break
    # char_to_token gives the FIRST token holding a character; a character split into several byte
    # tokens (byte-level BPE) is held by all of them, so walk on to the last one that overlaps.
    while last + 1 < n:
        chars = enc.token_to_chars(last + 1)
        if chars is None or chars[0] >= end:
            break
        last += 1
    return first, last + 1


class Spans(Protocol):
    """One encoded text: its ids, and the tokens [first, last+1) overlapping characters [start, end)."""

    ids: np.ndarray

    def range(self, start: int, end: int) -> tuple[int, int] | None: ...


class TokenSpans:
    """Spans from the tokenizers' offsets."""

    def __init__(self, enc: Encoding) -> None:
        self.enc = enc
        self.ids = np.asarray(enc.ids, dtype=np.int32)

    def range(self, start: int, end: int) -> tuple[int, int] | None:
        return token_range(self.enc, start, end, len(self.ids))


class ByteSpans:
    """Spans from a byte-level tokenizer's ids (pipeline.render.fastbpe): token k covers bytes
    [ends[k] - len[k], ends[k]) of the UTF-8 text, and it overlaps a character span exactly when it
    overlaps the span's bytes, the rule `token_range` applies to character offsets."""

    def __init__(self, ids: np.ndarray, byte_len: np.ndarray, text: str) -> None:
        self.ids = ids
        lens = byte_len[ids]
        self.ends = np.cumsum(lens)
        self.starts = self.ends - lens
        self.text = text
        self.ascii = text.isascii()
        total = len(text) if self.ascii else len(text.encode("utf-8"))
        if (int(self.ends[-1]) if len(ids) else 0) != total:
            raise AssertionError(f"byte-level ids cover {int(self.ends[-1]) if len(ids) else 0} bytes of a {total}-byte text")

    def _byte(self, c: int) -> int:
        return c if self.ascii else len(self.text[:c].encode("utf-8"))

    def range(self, start: int, end: int) -> tuple[int, int] | None:
        if end <= start:
            return None
        first = int(np.searchsorted(self.ends, self._byte(start), "right"))
        last = int(np.searchsorted(self.starts, self._byte(end), "left"))
        return (first, last) if first < last else None


def mask_one(spans: Spans, rendered: Rendered, opts: MaskOptions) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """ids, mask, and the token index just after each assistant turn (the truncation boundaries)."""
    ids = spans.ids
    n = len(ids)
    mask = np.zeros(n, dtype=np.uint8)
    ranges: dict[Turn, tuple[int, int] | None] = {}
    for t in target_turns(rendered.turns, opts):
        ranges[t] = r = spans.range(t.start, t.end)
        if r is not None:
            mask[r[0] : r[1]] = 1
    if n:
        mask[0] = 0  # the first token of a segment is never a target
    ends = []
    for t in rendered.turns:
        if t.role == "assistant":
            r = ranges[t] if t in ranges else spans.range(t.start, t.end)
            ends.append(r[1] if r else 0)
    return ids, mask, ends


def _turn_targets(turns: Sequence[Turn], opts: MaskOptions) -> list[bool]:
    """Per turn, whether it is a target: `target_turns` as flags."""
    last = -1
    if opts.train_on == "last_assistant":
        last = max((k for k, t in enumerate(turns) if t.role == "assistant"), default=-1)
    return [t.end > t.start and (
        (t.role == "assistant" and (last < 0 or k == last)) or (opts.train_on_prompt and t.role != "assistant"))
        for k, t in enumerate(turns)]


def mask_batch(ids: list[np.ndarray], rendered: Sequence[Rendered], byte_len: np.ndarray, opts: MaskOptions
               ) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """`mask_one` of many byte-level encodings at once (pipeline.render.fastbpe): the same ids, masks
    and assistant-turn ends, from one searchsorted over the batch's tokens instead of one per turn.

    Token k of the batch covers bytes [ends[k] - len[k], ends[k]) of the texts laid end to end; every
    token has at least one byte, so a span of text j finds only text j's tokens, exactly the tokens
    `ByteSpans.range` finds in text j alone. The masks and ids returned are views of two arrays.
    """
    counts = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
    tok_off = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=tok_off[1:])
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    lens = byte_len[flat]
    ends = np.cumsum(lens)
    starts = ends - lens
    texts = [r.text for r in rendered]
    asc = [t.isascii() for t in texts]
    text_bytes = np.fromiter((len(t) if a else len(t.encode("utf-8")) for t, a in zip(texts, asc, strict=True)),
                             dtype=np.int64, count=len(texts))
    byte_off = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(text_bytes, out=byte_off[1:])
    covered = np.concatenate([[0], ends])[tok_off]
    if not np.array_equal(covered, byte_off):
        j = int(np.flatnonzero(covered != byte_off)[0]) - 1
        raise AssertionError(f"byte-level ids cover {int(covered[j + 1] - covered[j])} bytes of a "
                             f"{int(text_bytes[j])}-byte text")
    qs: list[int] = []
    qe: list[int] = []
    tgt: list[bool] = []
    for j, r in enumerate(rendered):
        off, text = int(byte_off[j]), texts[j]
        tgt += _turn_targets(r.turns, opts)
        if asc[j]:
            for t in r.turns:
                qs.append(off + t.start)
                qe.append(off + t.end)
        else:
            for t in r.turns:
                qs.append(off + len(text[: t.start].encode("utf-8")))
                qe.append(off + len(text[: t.end].encode("utf-8")))
    q0, q1 = np.asarray(qs, dtype=np.int64), np.asarray(qe, dtype=np.int64)
    first = np.searchsorted(ends, q0, "right")
    last = np.searchsorted(starts, q1, "left")
    found = (q1 > q0) & (first < last)
    on = found & np.asarray(tgt, dtype=bool)
    edges = np.zeros(len(flat) + 1, dtype=np.int32)
    np.add.at(edges, first[on], 1)
    np.add.at(edges, last[on], -1)
    mask = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
    mask[tok_off[:-1][counts > 0]] = 0  # the first token of a segment is never a target
    turn_end = np.where(found, last - np.repeat(tok_off[:-1], [len(r.turns) for r in rendered]), 0).tolist()
    out = []
    k = 0
    bounds = tok_off.tolist()
    for j, r in enumerate(rendered):
        a, b = bounds[j], bounds[j + 1]
        out.append((flat[a:b], mask[a:b], [turn_end[k + i] for i, t in enumerate(r.turns) if t.role == "assistant"]))
        k += len(r.turns)
    return out


def _tools_at(tools: Sequence[object] | None, i: int) -> object:
    return tools[i] if tools is not None else None


def _mask_example(
    msgs: Messages, masked: tuple[np.ndarray, np.ndarray, list[int]], opts: MaskOptions,
    specials: re.Pattern[str] | None, limit: int | None,
) -> tuple[np.ndarray, np.ndarray, int, int, bool, str | None, str | None]:
    """ids, mask, full tokens, full targets, truncated, reason, detail of one training example
    (`masked`: its `mask_one`)."""
    ids, mask, ends = masked
    n, sup = len(ids), int(mask.sum())
    reason = detail = None
    truncated = False
    # A control token written as text inside a message would be encoded as the control token
    # itself (an end-of-turn in the middle of a reply): such data cannot be trained on faithfully.
    # one search over all fields first (a NUL is in no special token, so no match spans two fields)
    found = next(
        ((k, m, f) for k, m in enumerate(msgs) for f in (m.get("content"), m.get("reasoning"))
         if f and specials.search(f)), None,
    ) if specials and specials.search("\0".join(f for m in msgs for f in (m.get("content"), m.get("reasoning"))
                                                  if f)) else None
    if found is not None:
        k, m, f = found
        reason = SPECIAL_IN_CONTENT
        detail = (
            f"message {k} ({m['role']}) contains the special token {specials.search(f).group()!r} as text, "
            "which would be encoded as the control token itself: remove or escape it in the source data"
        )
    elif limit is not None and n > limit:
        fits = [e for e in ends if 0 < e <= limit]
        if opts.overflow == "truncate" and fits:
            ids, mask, truncated = ids[: fits[-1]], mask[: fits[-1]], True
        else:
            reason = TOO_LONG
            fix = (
                "not even its first assistant turn fits, so truncation cannot keep it"
                if opts.overflow == "truncate"
                else "set pack.overflow = 'truncate' to keep its first turns, or raise pack.max_seq_len"
            )
            detail = f"conversation is {n:,} tokens > pack.max_seq_len {limit:,}: {fix}"
    return ids, mask, n, sup, truncated, reason, detail


def encode_conversations(
    conversations: Sequence[Messages], template: ChatTemplate, tok: Tokenizer, opts: MaskOptions,
    batch_size: int = 4096, rendered: tuple[list[list[Rendered]], list[str | None]] | None = None,
    tools: Sequence[object] | None = None, fast: bool = True, all_failed_raises: bool = True,
) -> Encoded:
    """Render (unless `rendered` = render_all(template, conversations, tools, opts.reasoning) is given),
    tokenize (batched) and mask conversations; apply the overflow policy. `tools[i]` is conversation
    i's tools (JSON string or None). With `fast`, a byte-level BPE tokenizer encodes through
    pipeline.render.fastbpe (the same ids, proven there); any other through `encode_batch`."""
    from pipeline.core.progress import Progress
    from pipeline.render.fastbpe import fast_encoder

    out = Encoded()
    fe, out.encoder = fast_encoder(tok) if fast else (None, "tokenizers (fast path off)")
    if fe is None and fast:
        out.encoder = f"tokenizers ({out.encoder})"
    limit = opts.max_seq_len
    specials = special_token_pattern(tok)
    progress = Progress("encode", total=len(conversations), unit="conversations")
    for b0 in range(0, len(conversations), batch_size):
        progress.update(min(batch_size, len(conversations) - b0))
        batch = conversations[b0 : b0 + batch_size]
        if rendered is None:
            batch_tools = None if tools is None else tools[b0 : b0 + batch_size]
            rendered_batch, errors = render_all(template, batch, batch_tools, opts.reasoning)
        else:
            rendered_batch = rendered[0][b0 : b0 + batch_size]
            errors = rendered[1][b0 : b0 + batch_size]
        flat = [r for rs in rendered_batch for r in rs]
        texts = [r.text for r in flat]
        if fe is not None:
            masked = iter(mask_batch(fe.encode_batch(texts), flat, fe.byte_len, opts))
        else:
            masked = iter([mask_one(TokenSpans(e), r, opts)
                           for e, r in zip(tok.encode_batch(texts, add_special_tokens=False), flat, strict=True)])
        for msgs, rends, error in zip(batch, rendered_batch, errors, strict=True):
            parts = [_mask_example(msgs, next(masked), opts, specials, limit) for _ in rends]
            reason = TEMPLATE_ERROR if error is not None else next((p[5] for p in parts if p[5]), None)
            detail = error if error is not None else next((p[6] for p in parts if p[5]), None)
            truncated = any(p[4] for p in parts)
            kept = [p for p in parts if p[0].size]
            ids = np.concatenate([p[0] for p in kept]) if kept else np.zeros(0, np.int32)
            mask = np.concatenate([p[1] for p in kept]) if kept else np.zeros(0, np.uint8)
            out.full_tokens.append(sum(p[2] for p in parts))
            out.full_supervised.append(sum(p[3] for p in parts))
            if reason is None and not mask.any():
                reason = NO_SUPERVISED
                detail = (
                    "no supervised token is left (truncation removed every trained assistant turn)"
                    if truncated
                    else "the template leaves no assistant token to train on"
                )
            if reason is not None:
                ids, mask, kept = ids[:0], mask[:0], []
            out.ids.append(ids)
            out.masks.append(mask)
            out.reasons.append(reason)
            out.details.append(detail)
            out.truncated.append(truncated)
            out.segments.append([len(p[0]) for p in kept])
    if all_failed_raises and out.reasons and all(r == TEMPLATE_ERROR for r in out.reasons):
        raise TemplateError(f"the template rendered no conversation; the first error: {out.details[0]}")
    return out


def render_examples(template: ChatTemplate, messages: Messages, tools: object = None, reasoning: str = "split"
                    ) -> list[Rendered]:
    """The training examples of one conversation (pipeline.render.reasoning), rendered; the assistant
    turns an example holds only as context carry the role "context" (never targets)."""
    out = []
    for msgs, first in training_examples(
        messages, reasoning, renders_reasoning=template.renders_reasoning,
        renders_past_reasoning=template.renders_past_reasoning,
    ):
        r = template.render(msgs, tools, context=first)
        if first:
            r = Rendered(r.text, [t._replace(role="context") if t.role == "assistant" and t.message < first else t
                                  for t in r.turns])
        out.append(r)
    return out


def render_all(
    template: ChatTemplate, batch: Sequence[Messages], tools: Sequence[object] | None = None, reasoning: str = "split",
) -> tuple[list[list[Rendered]], list[str | None]]:
    """Render a batch: each conversation's training examples. A conversation the template refuses
    (e.g. its raise_exception on a system message, a tool call it cannot write) renders no example
    and an error sentence, so it is dropped, not fatal."""
    rendered: list[list[Rendered]] = []
    errors: list[str | None] = []
    for i, m in enumerate(batch):
        try:
            rendered.append(render_examples(template, m, _tools_at(tools, i), reasoning))
            errors.append(None)
        except TemplateError as e:
            rendered.append([])
            errors.append(str(e))
    return rendered, errors


class SelfCheckError(RuntimeError):
    """Supervised tokens do not decode to the assistant turns, or a prompt character is supervised."""


def _same_text(decoded: str, original: str) -> bool:
    # SentencePiece-style decoders drop the space that starts a decoded piece; byte-level ones are exact.
    return decoded == original or (original.startswith(" ") and decoded == original[1:])


def check_conversation(
    conversation_id: str, messages: Messages, ids: np.ndarray, mask: np.ndarray, template: ChatTemplate,
    tok: Tokenizer, opts: MaskOptions, enc: Encoding | None = None, *, tools: object = None,
    segments: Sequence[int] | None = None,
) -> None:
    """Decode self-check of one written conversation against the template that will be SERVED (a
    built-in's Jinja, not its Python fast path); raises SelfCheckError naming it.

    Per training example (`segments`: their lengths in `ids`; one if None):
    - the ids are the tokenization of the served rendering (a prefix, if truncated);
    - each run of supervised tokens decodes exactly to the text its offsets cover, and that text is
      target spans (an assistant turn's output + end-of-turn marker) plus, at most, template text at
      its edges from straddling tokens, never a character of a non-target turn's content;
    - every target span inside the written tokens is supervised in full; the first token is not.
    """
    def fail(why: str) -> None:
        raise SelfCheckError(f"self-check failed for conversation {conversation_id}: {why}")

    served = template.served()
    try:
        examples = render_examples(served, messages, tools, opts.reasoning)
    except TemplateError as e:
        fail(f"the served template {served.name!r} refuses it: {e}")
    segs = list(segments) if segments is not None else [len(ids)]
    if len(segs) != len(examples) or sum(segs) != len(ids):
        fail(f"{len(segs)} written segments ({sum(segs)} tokens) for {len(examples)} training examples")
    contents = {(split_think(m).get("content") or "").strip() for m in messages if m["role"] == "assistant"}
    off = 0
    for rendered, n in zip(examples, segs, strict=True):
        # an encoding made by the caller is of the fast path's text: only trusted for a served template
        e = enc if enc is not None and len(examples) == 1 and served is template else None
        if e is None:
            e = tok.encode(rendered.text, add_special_tokens=False)
        _check_example(fail, rendered, ids[off : off + n], mask[off : off + n], e, tok, opts, contents)
        off += n


def _check_example(fail: Callable[[str], None], rendered: Rendered, ids: np.ndarray, mask: np.ndarray,
                   enc: Encoding, tok: Tokenizer, opts: MaskOptions, contents: set[str]) -> None:
    n = len(ids)
    if list(enc.ids[:n]) != ids.tolist():
        fail("the written ids are not the tokenization of the rendered conversation")
    if n and mask[0]:
        fail("the first token is a target")
    offsets = enc.offsets[:n]
    text = rendered.text
    written_end = offsets[-1][1] if n else 0
    targets = [t for t in target_turns(rendered.turns, opts) if t.end <= written_end]
    is_target = np.zeros(len(text) + 1, dtype=bool)
    for t in targets:
        is_target[t.start : t.end] = True
    forbidden = np.zeros(len(text) + 1, dtype=bool)
    for t in rendered.turns:
        if t not in targets:
            forbidden[t.start : t.end] = True
    covered = np.zeros(len(text) + 1, dtype=bool)
    if n:  # the first token is never a target, even where a target span starts the text
        covered[offsets[0][0] : offsets[0][1]] = True
    sup = np.flatnonzero(mask)
    runs = np.split(sup, np.flatnonzero(np.diff(sup) != 1) + 1) if len(sup) else []
    for run in runs:
        a, b = int(run[0]), int(run[-1]) + 1
        cs, ce = offsets[a][0], max(o[1] for o in offsets[a:b])
        # Decode from the first byte token of the run's first character (only the forced-off first
        # token of a row can hold an earlier byte of it), so a character is never decoded from half.
        d0 = a
        while d0 > 0 and offsets[d0 - 1][1] > cs:
            d0 -= 1
        decoded = tok.decode(ids[d0:b].tolist(), skip_special_tokens=False)
        if not _same_text(decoded, text[cs:ce]):
            fail(f"supervised tokens {a}..{b - 1} decode to {decoded!r}, but the text there is {text[cs:ce]!r}")
        if not is_target[cs:ce].any():
            fail(f"supervised tokens {a}..{b - 1} ({text[cs:ce]!r}) carry no assistant character")
        if (forbidden[cs:ce] & ~is_target[cs:ce]).any():
            fail(f"supervised tokens {a}..{b - 1} ({text[cs:ce]!r}) carry system/user (non-target) characters")
        covered[cs:ce] = True
    for t in targets:
        if not covered[t.start : t.end].all():
            fail(f"the {t.role} turn {text[t.start:t.end]!r} is not supervised in full")
    for t in targets:
        if t.role == "assistant" and not any(c in text[t.start : t.end] for c in contents):
            fail(f"the supervised span {text[t.start:t.end]!r} holds no assistant content")
