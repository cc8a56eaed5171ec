"""Reasoning traces: with Qwen3's template (which shows reasoning only after the last user turn) and
the built-in chatml (which shows all of it), random reasoning conversations never crash, and the
supervised reasoning is exactly what `template.reasoning` says; `split` packs one segment per
training example; a `<think>` block inside a content (the old KeyError '\\ue000') is rendered."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from render_tool_fixtures import fixture_template, hf_dir, model_tokenizer, tool_conversations
from tokenize_fixtures import make_run, record

from pipeline.render.masks import (
    TEMPLATE_ERROR,
    MaskOptions,
    check_conversation,
    encode_conversations,
    render_examples,
    target_turns,
)
from pipeline.render.reasoning import split_think, training_examples
from pipeline.render.templates import BUILTIN_TEMPLATES


@pytest.fixture(scope="module")
def qwen3():  # noqa: ANN201
    return fixture_template("qwen3"), model_tokenizer("qwen3")


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = ["split", "keep", "last", "drop"]


def _numbered(conv: dict) -> dict:
    """Each reasoning trace made unique ('Thought k.'), so where it is supervised can be told."""
    k = 0
    msgs = []
    for m in conv["messages"]:
        if m.get("reasoning"):
            k += 1
            m = {**m, "reasoning": f"Thought {k}."}
        msgs.append(m)
    return {"messages": msgs, "tools": conv["tools"]}


def _expected(msgs: list[dict], mode: str, template_shows_past: bool) -> list[str]:
    """The reasoning traces that must be trained, once each, in order."""
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    last_user = users[-1] if users else -1
    out = []
    for i, m in enumerate(msgs):
        r = m.get("reasoning")
        if not r or mode == "drop":
            continue
        if mode == "last" and i < last_user:
            continue
        if mode == "keep" and not template_shows_past and i < last_user:
            continue  # not rendered (or the conversation refused)
        out.append(r)
    return out


def _trained_reasoning(template, conv: dict, mode: str) -> list[str]:  # noqa: ANN001
    found = []
    for r in render_examples(template, conv["messages"], conv["tools"], mode):
        for t in target_turns(r.turns, MaskOptions(reasoning=mode)):
            span = r.text[t.start : t.end]
            if span.startswith("<think>\n") and "Thought" in span:
                found.append(span[len("<think>\n") : span.index("\n</think>")])
    return found


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(conv=tool_conversations(reasoning=True))
def test_qwen3_reasoning_is_supervised_as_the_rule_says(qwen3, mode: str, conv: dict) -> None:
    conv = _numbered(conv)
    template, tok = qwen3
    opts = MaskOptions(reasoning=mode)
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    enc = encode_conversations([conv["messages"], plain], template, tok, opts, tools=[conv["tools"], None])
    if enc.reasons[0] == TEMPLATE_ERROR:
        # only `keep` may be refused, and only where an earlier turn's reasoning would be hidden
        assert mode == "keep" and "differently once later turns follow" in enc.details[0]
        return
    assert enc.reasons[0] is None, enc.details
    check_conversation("c", conv["messages"], enc.ids[0], enc.masks[0], template, tok, opts,
                       tools=conv["tools"], segments=enc.segments[0])
    assert _trained_reasoning(template, conv, mode) == _expected(conv["messages"], mode, False)
    # the first token of every segment is never a target
    starts = [sum(enc.segments[0][:k]) for k in range(len(enc.segments[0]))]
    assert all(enc.masks[0][s] == 0 for s in starts)


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(conv=tool_conversations(reasoning=True))
def test_chatml_reasoning_is_supervised_as_the_rule_says(mode: str, conv: dict) -> None:
    conv = _numbered(conv)
    template = BUILTIN_TEMPLATES["chatml"]
    assert len(training_examples(conv["messages"], mode, renders_reasoning=True, renders_past_reasoning=True)) == 1
    assert _trained_reasoning(template, conv, mode) == _expected(conv["messages"], mode, True)


def test_split_cuts_after_each_hidden_reasoning_turn() -> None:
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning": "r1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning": "r2"},
            {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]
    ex = training_examples(msgs, "split", renders_reasoning=True, renders_past_reasoning=False)
    assert [(len(m), first) for m, first in ex] == [(2, 0), (4, 2), (6, 4)]
    rendered = render_examples(fixture_template("qwen3"), msgs, None, "split")
    trained = [[r.text[t.start : t.end] for t in target_turns(r.turns, MaskOptions())] for r in rendered]
    assert trained == [["<think>\nr1\n</think>\n\na1<|im_end|>"], ["<think>\nr2\n</think>\n\na2<|im_end|>"],
                       ["<think>\n\n</think>\n\na3<|im_end|>"]]
    # the earlier turns are context, shown as Qwen3 shows them at inference (reasoning dropped)
    assert "r1" not in rendered[1].text and "<|im_start|>assistant\na1<|im_end|>" in rendered[1].text


def test_think_block_inside_content_no_longer_crashes() -> None:
    """Qwen3's template keeps only the text after </think>; the opening content marker went with the
    rest (KeyError '\\ue000'). The block is now read as the turn's reasoning first."""
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}]
    assert split_think(msgs[1]) == {"role": "assistant", "content": "4", "reasoning": "add"}
    for mode in MODES:
        (r,) = render_examples(fixture_template("qwen3"), msgs, None, mode)
        (t,) = [t for t in r.turns if t.role == "assistant"]
        want = "<think>\nadd\n</think>\n\n4<|im_end|>" if mode != "drop" else "<think>\n\n</think>\n\n4<|im_end|>"
        assert r.text[t.start : t.end] == want


def test_split_conversations_pack_as_several_segments(tmp_path) -> None:
    d = hf_dir(tmp_path, "qwen3")
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning": "r1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning": "r2"}]
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    recs = [record(0, msgs), record(1, plain)]
    run_dir, cfg = make_run(tmp_path / "run", recs, template={"name": str(d)}, tokenizer={"path": str(d)},
                            pack={"max_seq_len": 512, "self_check_all": True, "val_fraction": 0.0})
    from pipeline.render.pack import run_tokenize

    enc, pack = run_tokenize(run_dir, cfg)
    assert enc.self_check == {"checked": 2, "passed": 2}
    assert enc.reasoning == {"mode": "split", "conversations": 1, "training_examples": 2, "not_rendered": 0}
    rows = pl.read_parquet(run_dir / "shards" / "train-00000.parquet")
    cids = [c for r in rows.iter_rows(named=True) for c in r["conversation_ids"]]
    assert sorted(cids) == sorted([recs[0]["conversation_id"]] * 2 + [recs[1]["conversation_id"]])
    for r in rows.iter_rows(named=True):
        starts = [sum(r["seq_lens"][:k]) for k in range(len(r["seq_lens"]))]
        assert all(r["loss_mask"][s] == 0 for s in starts)
    assert pack.packing["train"]["segments"] == 3
