"""The tiktoken encoder of pipeline.render.fastbpe gives exactly the tokenizers library's ids, and
is refused for tokenizers where that is not proven."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, pre_tokenizers

from pipeline.render.fastbpe import GPT2_PATTERN, bytes_to_unicode, fast_encoder
from pipeline.render.masks import ByteSpans, TokenSpans
from pipeline.render.templates import load_template
from pipeline.render.tokenizer import train_bpe

SCRIPTS = "abcdefghij KLMNOP 0123456789 éèàüß ñ Ωαβγ жизнь 数据模型 こんにちは 한국어 مرحبا שלום हिन्दी ไทย 🙂👍🏽 \t\n\r  '’s's're:;,.!?-_()[]{}<>/\\|@#$%^&*+=~`\"\u00a0\u2003\u200b"


def _corpus(n: int = 400) -> list[str]:
    rnd = np.random.default_rng(0)
    chars = list(SCRIPTS)
    return ["".join(rnd.choice(chars, size=int(rnd.integers(1, 200)))) for _ in range(n)] + [
        "The quick brown fox's tail isn't there.\n\n  indented  text\twith tabs   \n",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    ]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = _corpus() * 3
    return train_bpe(texts, load_template("chatml", None), vocab_size=1200, min_frequency=2)


def test_trained_tokenizer_is_accepted(tok: Tokenizer) -> None:
    fe, why = fast_encoder(tok)
    assert fe is not None, why


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["<|im_start|>", "<|im_end|>", "\n", " ", "  ", "'s", "'ll"]),
                          st.text(alphabet=st.sampled_from(list(SCRIPTS)), max_size=20),
                          st.text(max_size=10)), max_size=12))
def test_same_ids_and_byte_offsets_as_tokenizers(tok: Tokenizer, pieces: list[str]) -> None:
    text = "".join(pieces)
    fe, _ = fast_encoder(tok)
    assert fe is not None
    ids = fe.encode_batch([text], threads=1)[0]
    enc = tok.encode(text, add_special_tokens=False)
    assert ids.tolist() == enc.ids
    # every character span maps to the same tokens through byte offsets as through the offsets
    fast, ref = ByteSpans(ids, fe.byte_len, text), TokenSpans(enc)
    cuts = sorted({0, len(text), *(np.random.default_rng(len(text)).integers(0, len(text) + 1, 6).tolist())})
    for a in cuts:
        for b in cuts:
            assert fast.range(a, b) == ref.range(a, b), (text, a, b)


_ROLES = ["system", "user", "assistant", "context", "tool"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.lists(st.one_of(st.sampled_from(["<|im_start|>", "<|im_end|>", "\n", " ", "'s"]),
                       st.text(alphabet=st.sampled_from(list(SCRIPTS)), max_size=15)), max_size=8),
    st.lists(st.tuples(st.sampled_from(_ROLES), st.integers(0, 200), st.integers(0, 200)), max_size=6),
), min_size=1, max_size=6),
    st.sampled_from(["all_assistant", "last_assistant"]), st.booleans())
def test_batch_masks_equal_one_text_at_a_time(tok: Tokenizer, examples, train_on: str, on_prompt: bool) -> None:
    """mask_batch (one searchsorted over the batch) gives each text the ids, mask and assistant-turn
    ends that mask_one gives it alone, through byte offsets and through tokenizers' offsets; turns
    may be empty, overlap, or hold multi-byte characters; texts may be empty."""
    from pipeline.render.masks import MaskOptions, mask_batch, mask_one
    from pipeline.render.templates import Rendered, Turn

    fe, _ = fast_encoder(tok)
    assert fe is not None
    opts = MaskOptions(train_on=train_on, train_on_prompt=on_prompt)
    rendered = []
    for pieces, turns in examples:
        text = "".join(pieces)
        spans = [Turn(role, min(a, b, len(text)), min(max(a, b), len(text))) for role, a, b in turns]
        rendered.append(Rendered(text, spans))
    ids = fe.encode_batch([r.text for r in rendered], threads=1)
    got = mask_batch(ids, rendered, fe.byte_len, opts)
    for r, a, (g_ids, g_mask, g_ends) in zip(rendered, ids, got, strict=True):
        for spans in (ByteSpans(a, fe.byte_len, r.text), TokenSpans(tok.encode(r.text, add_special_tokens=False))):
            w_ids, w_mask, w_ends = mask_one(spans, r, opts)
            assert g_ids.tolist() == w_ids.tolist()
            assert g_mask.tolist() == w_mask.tolist(), (r, train_on, on_prompt)
            assert g_ends == w_ends


def test_batch_over_threads_is_in_order(tok: Tokenizer) -> None:
    fe, _ = fast_encoder(tok)
    texts = _corpus(300)
    got = fe.encode_batch(texts, threads=3)
    assert [g.tolist() for g in got] == [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def _edit(tok: Tokenizer, fn) -> Tokenizer:
    data = json.loads(tok.to_str())
    fn(data)
    return Tokenizer.from_str(json.dumps(data))


@pytest.mark.parametrize("change,why", [
    (lambda d: d.__setitem__("normalizer", {"type": "NFC"}), "normalizer"),
    (lambda d: d["pre_tokenizer"].__setitem__("add_prefix_space", True), "pre-tokenizer"),
    (lambda d: d["pre_tokenizer"].__setitem__("use_regex", False), "pre-tokenizer"),
    (lambda d: d["model"].__setitem__("merges", list(reversed(d["model"]["merges"]))), "merge"),
    (lambda d: d["added_tokens"].append({**d["added_tokens"][0], "id": 99999, "content": "<|im_start|>x"}), "prefix"),
    (lambda d: d["added_tokens"][0].__setitem__("lstrip", True), "lstrip"),
])
def test_refused_where_not_proven(tok: Tokenizer, change, why: str) -> None:
    fe, reason = fast_encoder(_edit(tok, change))
    assert fe is None and why in reason


def test_a_token_the_merges_cannot_make_is_refused(tok: Tokenizer) -> None:
    """A vocabulary token no merge makes: tiktoken would produce it, tokenizers never."""
    def add(d: dict) -> None:
        d["model"]["vocab"]["ĠzzqzzqX"] = max(d["model"]["vocab"].values()) + 1

    fe, reason = fast_encoder(_edit(tok, add))
    assert fe is None and "tokenize to itself" in reason


def test_wordpiece_and_unigram_are_refused() -> None:
    from tokenizers import models

    assert fast_encoder(Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))[0] is None


def _pieces_agree(code_points: list[int]) -> list[int]:
    """Code points that Oniguruma (tokenizers' ByteLevel regex) and fancy-regex (tiktoken) put in
    different classes of GPT-2's pattern: each is probed beside letters, digits and punctuation, so
    a letter / number / whitespace / other difference changes where the pieces split."""
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    probes = [f"{w}{chr(c)}{w}" for c in code_points for w in ("qqq", "111", "!!!")]
    hf = [[bytes(u2b[ch] for ch in p) for p, _ in pre.pre_tokenize_str(s)] for s in probes]
    ranks = {bytes([b]): b for b in range(256)}
    for ps in hf:
        for p in ps:
            ranks.setdefault(p, len(ranks))
    enc = tiktoken.Encoding("probe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    got = enc.encode_ordinary_batch(probes, num_threads=1)
    return sorted({ord(s[3]) for s, ps, g in zip(probes, hf, got, strict=True) if [ranks[p] for p in ps] != g})


def test_regex_engines_classify_code_points_alike() -> None:
    """Every code point of the Basic Multilingual Plane and a stride through the others (a full
    sweep of all 1,112,064 took 4 minutes and found none either)."""
    bmp = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    rest = list(range(0x10000, 0x110000, 61))
    assert _pieces_agree(bmp + rest) == []
