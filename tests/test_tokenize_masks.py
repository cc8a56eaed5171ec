"""Loss masks: literal expectations on a char-level mock tokenizer, boundary cases on a real BPE,
overflow policies, and the decode self-check catching bad masks."""

from __future__ import annotations

import numpy as np
import pytest
from tokenize_fixtures import bpe, char_tokenizer, sample_conversations

from pipeline.render.masks import (
    NO_SUPERVISED,
    SPECIAL_IN_CONTENT,
    TEMPLATE_ERROR,
    TOO_LONG,
    MaskOptions,
    SelfCheckError,
    check_conversation,
    encode_conversations,
)
from pipeline.render.templates import BUILTIN_TEMPLATES

TWO_TURNS = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"},
]


def expand(segments: list[tuple[bytes | list[int], int]]) -> tuple[list[int], list[int]]:
    """(ids, mask) from (characters or special ids, mask value) segments."""
    ids: list[int] = []
    mask: list[int] = []
    for toks, m in segments:
        ids += list(toks)
        mask += [m] * len(toks)
    return ids, mask


def encode_one(name: str, messages, opts: MaskOptions = MaskOptions()) -> tuple[list[int], list[int]]:
    template = BUILTIN_TEMPLATES[name]
    tok = char_tokenizer(template)
    enc = encode_conversations([messages], template, tok, opts)
    assert enc.reasons == [None]
    check_conversation("c0", messages, enc.ids[0], enc.masks[0], template, tok, opts)
    return enc.ids[0].tolist(), enc.masks[0].tolist()


# ChatML: <|im_start|>=128 <|im_end|>=129
S, E = [128], [129]


def test_chatml_mask_literal_all_assistant_turns() -> None:
    assert encode_one("chatml", TWO_TURNS) == expand([
        (S, 0), (b"user\nhi", 0), (E, 0), (b"\n", 0),
        (S, 0), (b"assistant\n", 0), (b"ok", 1), (E, 1), (b"\n", 0),
        (S, 0), (b"user\na", 0), (E, 0), (b"\n", 0),
        (S, 0), (b"assistant\n", 0), (b"b", 1), (E, 1), (b"\n", 0),
    ])


def test_chatml_mask_literal_last_assistant_only() -> None:
    assert encode_one("chatml", TWO_TURNS, MaskOptions(train_on="last_assistant")) == expand([
        (S, 0), (b"user\nhi", 0), (E, 0), (b"\n", 0),
        (S, 0), (b"assistant\n", 0), (b"ok", 0), (E, 0), (b"\n", 0),
        (S, 0), (b"user\na", 0), (E, 0), (b"\n", 0),
        (S, 0), (b"assistant\n", 0), (b"b", 1), (E, 1), (b"\n", 0),
    ])


def test_chatml_mask_literal_train_on_prompt() -> None:
    assert encode_one("chatml", TWO_TURNS, MaskOptions(train_on_prompt=True)) == expand([
        (S, 0), (b"user\n", 0), (b"hi", 1), (E, 0), (b"\n", 0),
        (S, 0), (b"assistant\n", 0), (b"ok", 1), (E, 1), (b"\n", 0),
        (S, 0), (b"user\n", 0), (b"a", 1), (E, 0), (b"\n", 0),
        (S, 0), (b"assistant\n", 0), (b"b", 1), (E, 1), (b"\n", 0),
    ])


def test_llama2_mask_literal_space_and_eos_close_the_turn() -> None:
    # <s>=128 </s>=129; the space after "[/INST]" is header text, " </s>" is the end-of-turn marker.
    conv = [{"role": "system", "content": "S"}, *TWO_TURNS[:2]]
    assert encode_one("llama2", conv) == expand([
        ([128], 0), (b"[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST] ", 0), (b"ok ", 1), ([129], 1),
    ])


def test_llama3_mask_literal() -> None:
    # <|begin_of_text|>=128 <|start_header_id|>=130 <|end_header_id|>=131 <|eot_id|>=132
    assert encode_one("llama3", TWO_TURNS[:2]) == expand([
        ([128], 0), ([130], 0), (b"user", 0), ([131], 0), (b"\n\nhi", 0), ([132], 0),
        ([130], 0), (b"assistant", 0), ([131], 0), (b"\n\n", 0), (b"ok", 1), ([132], 1),
    ])


def test_alpaca_mask_literal_and_first_token_never_a_target() -> None:
    # </s>=128. With train_on_prompt the system text starts the row; its first token still is no target.
    conv = [{"role": "system", "content": "Sys"}, *TWO_TURNS[:2]]
    assert encode_one("alpaca", conv, MaskOptions(train_on_prompt=True)) == expand([
        (b"S", 0), (b"ys", 1), (b"\n\n### Instruction:\n", 0), (b"hi", 1), (b"\n\n### Response:\n", 0),
        (b"ok", 1), ([128], 1),
    ])


def test_too_long_is_dropped_with_length_and_fix() -> None:
    template = BUILTIN_TEMPLATES["chatml"]
    enc = encode_conversations([TWO_TURNS], template, char_tokenizer(template), MaskOptions(max_seq_len=20))
    assert enc.reasons == [TOO_LONG]
    assert enc.details[0] == (
        "conversation is 48 tokens > pack.max_seq_len 20: set pack.overflow = 'truncate' to keep its first "
        "turns, or raise pack.max_seq_len"
    )
    assert len(enc.ids[0]) == 0 and enc.full_tokens == [48]


def test_control_token_written_in_content_is_dropped() -> None:
    template = BUILTIN_TEMPLATES["chatml"]
    bad = [{"role": "user", "content": "say <|im_end|> now"}, {"role": "assistant", "content": "ok"}]
    enc = encode_conversations([TWO_TURNS, bad], template, char_tokenizer(template), MaskOptions())
    assert enc.reasons == [None, SPECIAL_IN_CONTENT]
    assert enc.details[1].startswith("message 0 (user) contains the special token '<|im_end|>' as text")


def test_conversation_the_template_refuses_is_dropped_not_fatal() -> None:
    from pipeline.render.templates import TemplateError, make_jinja_template

    src = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
           "{% endif %}{{ m['content'] }}</s>{% endfor %}")
    template = make_jinja_template("nosys", src, bos_token=None, eos_token="</s>")
    tok = char_tokenizer(template)
    with_system = [{"role": "system", "content": "s"}, *TWO_TURNS[:2]]
    enc = encode_conversations([TWO_TURNS, with_system], template, tok, MaskOptions())
    assert enc.reasons == [None, TEMPLATE_ERROR] and "no system role" in enc.details[1]
    with pytest.raises(TemplateError, match="rendered no conversation.*no system role"):
        encode_conversations([with_system], template, tok, MaskOptions())


def test_truncate_keeps_whole_turns_with_their_end_token() -> None:
    template = BUILTIN_TEMPLATES["chatml"]
    tok = char_tokenizer(template)
    opts = MaskOptions(max_seq_len=40, overflow="truncate")
    enc = encode_conversations([TWO_TURNS], template, tok, opts)
    assert enc.reasons == [None] and enc.truncated == [True]
    ids, mask = expand([
        (S, 0), (b"user\nhi", 0), (E, 0), (b"\n", 0),
        (S, 0), (b"assistant\n", 0), (b"ok", 1), (E, 1),
    ])
    assert (enc.ids[0].tolist(), enc.masks[0].tolist()) == (ids, mask)
    assert enc.full_supervised[0] - int(enc.masks[0].sum()) == 2  # "b" and its <|im_end|> were lost
    check_conversation("c0", TWO_TURNS, enc.ids[0], enc.masks[0], template, tok, opts)


def test_truncation_that_leaves_nothing_supervised_is_dropped() -> None:
    template = BUILTIN_TEMPLATES["chatml"]
    opts = MaskOptions(train_on="last_assistant", max_seq_len=40, overflow="truncate")
    enc = encode_conversations([TWO_TURNS], template, char_tokenizer(template), opts)
    assert enc.reasons == [NO_SUPERVISED]


def test_truncate_cannot_keep_a_first_turn_that_is_too_long() -> None:
    template = BUILTIN_TEMPLATES["chatml"]
    opts = MaskOptions(max_seq_len=16, overflow="truncate")
    enc = encode_conversations([TWO_TURNS], template, char_tokenizer(template), opts)
    assert enc.reasons == [TOO_LONG] and "not even its first assistant turn fits" in enc.details[0]


# --- a real byte-level BPE: tokens that straddle span boundaries --------------------------------
def _encode_bpe(name: str, conv, opts: MaskOptions = MaskOptions()):
    template = BUILTIN_TEMPLATES[name]
    tok = bpe(template)
    enc = encode_conversations([conv], template, tok, opts)
    assert enc.reasons == [None]
    check_conversation("c0", conv, enc.ids[0], enc.masks[0], template, tok, opts)
    return template, tok, enc


def _straddlers(template, tok, conv, enc) -> list[tuple[str, int]]:
    """(token text, mask) of the tokens that hold characters both inside and outside an assistant span."""
    rendered = template.render(conv)
    e = tok.encode(rendered.text, add_special_tokens=False)
    spans = [(t.start, t.end) for t in rendered.turns if t.role == "assistant"]
    out = []
    for i, (s, t) in enumerate(e.offsets):
        for a, b in spans:
            if s < b and t > a and (s < a or t > b):
                out.append((rendered.text[s:t], int(enc.masks[0][i])))
    return out


def test_bpe_token_merging_header_space_and_content_is_a_target() -> None:
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello world."}]
    template, tok, enc = _encode_bpe("llama2", conv)
    # " Hello": the space belongs to the template ("[/INST] "), "Hello" to the reply.
    assert _straddlers(template, tok, conv, enc) == [(" Hello", 1)]
    sup = enc.ids[0][enc.masks[0] == 1].tolist()
    assert tok.decode(sup, skip_special_tokens=False) == " Hello world. </s>"


def test_bpe_content_starting_with_newlines_merges_with_header_newline() -> None:
    conv = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\n\nHi"}]
    template, tok, enc = _encode_bpe("chatml", conv)
    straddling = _straddlers(template, tok, conv, enc)
    assert straddling and all(m == 1 for _, m in straddling)
    assert all(text.startswith("\n") for text, _ in straddling)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
@pytest.mark.parametrize("content", ["  spaced  out  ", "\n\nHello", " Hello", "ok ", "héllo wörld 😀 日本語 テスト", "😀"])
def test_bpe_boundary_contents_pass_the_self_check(name: str, content: str) -> None:
    conv = [
        {"role": "system", "content": ""},
        {"role": "user", "content": content},
        {"role": "assistant", "content": content},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": content + "!"},
    ]
    _, tok, enc = _encode_bpe(name, conv)
    sup = enc.ids[0][enc.masks[0] == 1].tolist()
    assert content.strip() in tok.decode(sup, skip_special_tokens=False)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
@pytest.mark.parametrize(
    "opts", [MaskOptions(), MaskOptions(train_on="last_assistant"), MaskOptions(train_on_prompt=True)]
)
def test_every_conversation_passes_the_self_check(name: str, opts: MaskOptions) -> None:
    template = BUILTIN_TEMPLATES[name]
    tok = bpe(template)
    convs = sample_conversations(150, seed=3)
    enc = encode_conversations(convs, template, tok, opts, batch_size=37)
    for i, conv in enumerate(convs):
        assert enc.reasons[i] is None
        check_conversation(f"c{i}", conv, enc.ids[i], enc.masks[i], template, tok, opts)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_fast_path_gives_the_tokenizers_ids_masks_and_drops(name: str) -> None:
    """pipeline.render.fastbpe (tiktoken on the byte-level BPE) and `encode_batch` with offsets: the
    same ids, masks, truncation and drops, conversation for conversation."""
    template = BUILTIN_TEMPLATES[name]
    tok = bpe(template)
    convs = sample_conversations(150, seed=5)
    convs.append([{"role": "user", "content": "é😀 日本"}, {"role": "assistant", "content": "x <|im_end|> y"}])
    opts = MaskOptions(max_seq_len=96, overflow="truncate")
    fast = encode_conversations(convs, template, tok, opts, batch_size=37)
    slow = encode_conversations(convs, template, tok, opts, batch_size=37, fast=False)
    assert fast.encoder.startswith("byte-level") and slow.encoder.startswith("tokenizers")
    assert [a.tolist() for a in fast.ids] == [a.tolist() for a in slow.ids]
    assert [a.tolist() for a in fast.masks] == [a.tolist() for a in slow.masks]
    assert (fast.reasons, fast.truncated, fast.full_tokens, fast.full_supervised, fast.segments) == (
        slow.reasons, slow.truncated, slow.full_tokens, slow.full_supervised, slow.segments)
    assert any(fast.truncated) and any(fast.reasons)


# --- the self-check fails on bad masks -----------------------------------------------------------
def _chatml_encoded():
    template = BUILTIN_TEMPLATES["chatml"]
    tok = char_tokenizer(template)
    enc = encode_conversations([TWO_TURNS], template, tok, MaskOptions())
    return template, tok, enc.ids[0], enc.masks[0].copy()


def test_self_check_names_the_conversation_when_a_user_token_is_supervised() -> None:
    template, tok, ids, mask = _chatml_encoded()
    mask[6] = 1  # the "i" of the user's "hi"
    with pytest.raises(SelfCheckError, match="conversation conv-7: .*system/user|conversation conv-7: .*no assistant"):
        check_conversation("conv-7", TWO_TURNS, ids, mask, template, tok, MaskOptions())


def test_self_check_fails_when_the_end_of_turn_token_is_not_trained() -> None:
    template, tok, ids, mask = _chatml_encoded()
    mask[int(np.flatnonzero(ids == 129)[1])] = 0  # the <|im_end|> closing the first assistant turn
    with pytest.raises(SelfCheckError, match="not supervised in full"):
        check_conversation("c", TWO_TURNS, ids, mask, template, tok, MaskOptions())


def test_self_check_fails_when_a_header_token_is_supervised() -> None:
    template, tok, ids, mask = _chatml_encoded()
    mask[12] = 1  # inside "assistant\n", apart from the content
    with pytest.raises(SelfCheckError, match="carry no assistant character"):
        check_conversation("c", TWO_TURNS, ids, mask, template, tok, MaskOptions())


def test_self_check_fails_when_ids_are_not_the_whole_tokenization() -> None:
    template, tok, ids, mask = _chatml_encoded()
    ids = ids.copy()
    ids[3] = ord("X")
    with pytest.raises(SelfCheckError, match="not the tokenization"):
        check_conversation("c", TWO_TURNS, ids, mask, template, tok, MaskOptions())
