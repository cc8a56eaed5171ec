"""Tool calls through chat templates: the built-in chatml writes tools, calls and results as Qwen2.5's
template does; ids and masks of random tool-calling conversations, through the built-in chatml and
through Qwen2.5's real template, equal transformers' `return_assistant_tokens_mask` on a
`{% generation %}` copy; calls are always targets, tool results never; end-of-turn markers are read
from the templates of Gemma, Phi-3, Qwen2.5 and Llama 3.1; a conversation a template fails on is
dropped with its reason, never the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from render_tool_fixtures import MODELS, fixture_template, hf_dir, model_tokenizer, source, tool_conversations
from tokenize_fixtures import sample_conversations

from pipeline.render.masks import (
    TEMPLATE_ERROR,
    MaskOptions,
    check_conversation,
    encode_conversations,
    render_examples,
)
from pipeline.render.templates import (
    BUILTIN_TEMPLATES,
    load_template,
    make_jinja_template,
    template_messages,
    template_tools,
)

transformers = pytest.importorskip("transformers")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WEATHER = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "reasoning": None,
     "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]},
    {"role": "tool", "content": "18C sunny", "tool_call_id": "c1", "name": "get_weather"},
    {"role": "assistant", "content": "It is 18C and sunny."},
]
WEATHER_TOOLS = json.dumps([{"name": "get_weather", "description": "Weather of a city",
                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])


def test_canonical_form_is_passed_as_transformers_passes_it() -> None:
    msgs = template_messages(WEATHER)
    assert msgs[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert msgs[3] == {"role": "tool", "content": "18C sunny", "tool_call_id": "c1", "name": "get_weather"}
    assert "tool_calls" not in msgs[4] and "reasoning_content" not in msgs[4]  # None keys are left out
    # bare {name, description, parameters} schemas are wrapped as OpenAI function tools
    assert template_tools(WEATHER_TOOLS) == [{"type": "function", "function": json.loads(WEATHER_TOOLS)[0]}]
    assert template_tools(None) is None and template_tools("[]") is None


def test_chatml_writes_tools_calls_and_results_hermes_style() -> None:
    r = BUILTIN_TEMPLATES["chatml"].render(WEATHER, WEATHER_TOOLS)
    assert r.text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\n")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in r.text
    assert ("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"
            "\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18C sunny\n</tool_response><|im_end|>\n") in r.text
    spans = {t.role: r.text[t.start : t.end] for t in r.turns if t.role != "assistant"}
    assert spans == {"system": "Be brief.", "user": "Weather in Paris?", "tool": "18C sunny"}
    assert [r.text[t.start : t.end] for t in r.turns if t.role == "assistant"] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 18C and sunny.<|im_end|>",
    ]
    # Qwen2.5's own template writes exactly this (it only adds a default system prompt when none is given)
    assert fixture_template("qwen2_5").render(WEATHER, WEATHER_TOOLS).text == r.text


def test_llama3_writes_calls_and_results_as_llama3_1() -> None:
    ours = BUILTIN_TEMPLATES["llama3"].render(WEATHER, WEATHER_TOOLS)
    real = fixture_template("llama3_1").render(WEATHER, WEATHER_TOOLS)
    assert "Environment: ipython" in ours.text and "<|start_header_id|>ipython<|end_header_id|>\n\n18C sunny<|eot_id|>" in ours.text
    span = [ours.text[t.start : t.end] for t in ours.turns if t.role == "assistant"]
    assert span == [real.text[t.start : t.end] for t in real.turns if t.role == "assistant"] == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is 18C and sunny.<|eot_id|>"]


@SETTINGS
@given(tool_conversations(system=True))
def test_chatml_renders_tool_conversations_as_qwen2_5(conv) -> None:
    ours = BUILTIN_TEMPLATES["chatml"].render(conv["messages"], conv["tools"])
    assert fixture_template("qwen2_5").render(conv["messages"], conv["tools"]).text == ours.text


def _hf_tokenizer(tok, template_source: str, eos: str, bos: str | None = None):  # noqa: ANN202
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos,
                                                chat_template=template_source)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):  # noqa: ANN201
    d = hf_dir(tmp_path_factory.mktemp("qwen"), "qwen2_5")
    template = load_template(str(d))
    from pipeline.render.tokenizer import load_tokenizer

    tok = load_tokenizer(d)
    return template, tok, _hf_tokenizer(tok, source("qwen2_5_generation"), MODELS["qwen2_5"]["eos"])


@pytest.fixture(scope="module")
def chatml():  # noqa: ANN201
    template = BUILTIN_TEMPLATES["chatml"]
    tok = model_tokenizer("qwen2_5")
    tok.add_special_tokens(["<|pad|>"])
    return template, tok, _hf_tokenizer(tok, template.jinja, template.eos_token)


def _assert_equal_to_transformers(template, tok, hf, conv) -> None:  # noqa: ANN001
    enc = encode_conversations([conv["messages"]], template, tok, MaskOptions(), tools=[conv["tools"]])
    assert enc.reasons == [None], enc.details
    out = hf.apply_chat_template(template_messages(conv["messages"]), tools=template_tools(conv["tools"]),
                                 tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert enc.ids[0].tolist() == list(out["input_ids"])
    want = list(out["assistant_masks"])
    want[0] = 0  # the first token of a segment is never a target (transformers does not know that rule)
    assert enc.masks[0].tolist() == want
    check_conversation("c", conv["messages"], enc.ids[0], enc.masks[0], template, tok, MaskOptions(),
                       tools=conv["tools"], segments=enc.segments[0])
    # tool results are never targets, calls always are
    (rendered,) = render_examples(template, conv["messages"], conv["tools"])
    e = tok.encode(rendered.text, add_special_tokens=False)
    sup = np.zeros(len(rendered.text) + 1, dtype=bool)
    for k in np.flatnonzero(enc.masks[0]):
        a, b = e.offsets[k]
        sup[a:b] = True
    for t in rendered.turns:
        if t.role == "tool":
            assert not sup[t.start : t.end].any(), rendered.text[t.start : t.end]
        if t.role == "assistant":
            assert sup[t.start : t.end].all()
    for m in conv["messages"]:
        for c in m.get("tool_calls") or ():
            call = '"name": "' + c["name"] + '", "arguments": ' + json.dumps(json.loads(c["arguments"]), ensure_ascii=False)
            at = rendered.text.find(call)
            assert at >= 0 and sup[at : at + len(call)].all()


@SETTINGS
@given(conv=tool_conversations())
def test_builtin_chatml_equals_transformers_on_tool_conversations(chatml, conv) -> None:
    _assert_equal_to_transformers(*chatml, conv)


@SETTINGS
@given(conv=tool_conversations())
def test_qwen2_5_template_equals_transformers_on_its_generation_copy(qwen, conv) -> None:
    template, tok, hf = qwen
    assert not template.render(conv["messages"], conv["tools"]).text.count("\ue000")
    _assert_equal_to_transformers(template, tok, hf, conv)


def test_generation_copy_renders_as_the_original() -> None:
    convs = [WEATHER, *sample_conversations(20, seed=3)]
    for c in convs:
        for tools in (None, WEATHER_TOOLS):
            a = fixture_template("qwen2_5").render(c, tools)
            b = fixture_template("qwen2_5", "qwen2_5_generation").render(c, tools)
            assert a == b


@pytest.mark.parametrize(("model", "marker"), [
    ("gemma", "<end_of_turn>"), ("phi3", "<|end|>"), ("qwen2_5", "<|im_end|>"), ("llama3_1", "<|eot_id|>"),
    ("qwen3", "<|im_end|>"), ("deepseekv3", "<｜end▁of▁sentence｜>"),
])
def test_end_of_turn_is_read_from_the_template(tmp_path, model: str, marker: str) -> None:
    """The marker the template writes after an assistant turn is trained, not the eos token (Gemma's
    `<eos>`, Phi-3's and Qwen's `<|endoftext|>`, Llama 3.1's `<|end_of_text|>` never follow a turn)."""
    d = hf_dir(tmp_path, model)
    template = load_template(str(d))
    assert template.end_of_turn.strip() == marker
    from pipeline.render.tokenizer import load_tokenizer

    tok = load_tokenizer(d)
    convs = [[m for m in c if m["role"] != "system"] for c in sample_conversations(30, seed=4)]
    convs = [[{**m, "content": m["content"].strip()} for m in c] for c in convs]  # canonical text is stripped
    enc = encode_conversations(convs, template, tok, MaskOptions())
    assert enc.reasons == [None] * len(convs), enc.details
    for i, c in enumerate(convs):
        check_conversation(f"c{i}", c, enc.ids[i], enc.masks[i], template, tok, MaskOptions())
        rendered = template.render(c)
        spans = [rendered.text[t.start : t.end] for t in rendered.turns if t.role == "assistant"]
        assert [s.endswith(marker) for s in spans] == [True] * len(spans)
        # (Qwen3 writes an empty <think> block into the last turn: what it generates with thinking off)
        bodies = [s[: -len(marker)].removeprefix("<think>\n\n</think>\n\n").strip() for s in spans]
        assert bodies == [m["content"] for m in c if m["role"] == "assistant"]


def test_trimming_template_with_generation_blocks_is_not_refused() -> None:
    src = ("{% for m in messages %}{% if m.role == 'assistant' %}{{ 'A: ' }}{% generation %}{{ m.content | trim }}"
           "</s>{% endgeneration %}{% else %}{{ 'U: ' + m.content | trim + '\n' }}{% endif %}{% endfor %}")
    t = make_jinja_template("trim", src, bos_token=None, eos_token="</s>")
    r = t.render([{"role": "user", "content": "  Hi  "}, {"role": "assistant", "content": " Hello!  "}])
    assert r.text == "U: Hi\nA: Hello!</s>"
    assert [r.text[x.start : x.end] for x in r.turns if x.role == "assistant"] == ["Hello!</s>"]


def test_any_error_rendering_one_conversation_drops_it_with_its_reason() -> None:
    # a template that fails with a plain Python error (no TemplateError) on tool messages only
    src = ("{% for m in messages %}{% if m.role == 'tool' %}{{ m.content + 1 }}{% endif %}"
           "{{ '<|im_start|>' + m.role + '\n' }}{{ m.content }}{{ '<|im_end|>\n' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    t = make_jinja_template("bad", src, bos_token=None, eos_token="<|im_end|>")
    tok = model_tokenizer("qwen2_5")
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    enc = encode_conversations([plain, WEATHER], t, tok, MaskOptions())
    assert enc.reasons == [None, TEMPLATE_ERROR]
    assert "TypeError" in enc.details[1] and "'bad'" in enc.details[1]


def test_llama2_and_alpaca_refuse_tool_conversations_instead_of_dropping_text() -> None:
    from pipeline.render.masks import render_all

    for name in ("llama2", "alpaca"):
        for tools in (None, WEATHER_TOOLS):
            _, errors = render_all(BUILTIN_TEMPLATES[name], [WEATHER], [tools])
            assert errors[0] is not None and "tool" in errors[0]


@given(st.sampled_from(["chatml", "llama3"]))
def test_builtin_probes_agree_with_their_jinja(name: str) -> None:
    t = BUILTIN_TEMPLATES[name]
    served = t.served()
    assert (served.renders_reasoning, served.renders_past_reasoning) == (t.renders_reasoning, t.renders_past_reasoning)
    assert served.end_of_turn == t.end_of_turn


def test_deepseek_v3_gets_arguments_as_text_and_its_forced_think_prompt_is_left_to_the_reply() -> None:
    t = fixture_template("deepseekv3")
    assert t.arguments_as_string  # it concatenates arguments: a dict would fail, the JSON string renders
    r = t.render(WEATHER, WEATHER_TOOLS)
    assert [r.text[x.start : x.end] for x in r.turns if x.role == "assistant"] == [
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
        '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>',
        "It is 18C and sunny.<｜end▁of▁sentence｜>",
    ]
