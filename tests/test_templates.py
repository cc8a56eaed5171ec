"""Chat templates: hand-written expected renderings, turn spans, Jinja equivalence with transformers,
HF chat_template loading, and the sandbox."""

from __future__ import annotations

import json

import pytest
from tokenize_fixtures import bpe, sample_conversations

from pipeline.render.templates import (
    BUILTIN_TEMPLATES,
    TemplateError,
    jinja_render_text,
    load_template,
    make_jinja_template,
)

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]

EXPECTED = {
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    ),
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST] 4 </s>",
    "llama3": (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    ),
    "alpaca": (
        "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>"
        "\n\n### Instruction:\n2+2?\n\n### Response:\n4</s>"
    ),
}
# The text of each turn's span: assistant spans include the end-of-turn marker.
EXPECTED_SPANS = {
    "chatml": ["Be brief.", "Hi", "Hello!<|im_end|>", "2+2?", "4<|im_end|>"],
    "llama2": ["Be brief.", "Hi", "Hello! </s>", "2+2?", "4 </s>"],
    "llama3": ["Be brief.", "Hi", "Hello!<|eot_id|>", "2+2?", "4<|eot_id|>"],
    "alpaca": ["Be brief.", "Hi", "Hello!</s>", "2+2?", "4</s>"],
}


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_renders_as_written_by_hand(name: str) -> None:
    text, turns = BUILTIN_TEMPLATES[name].render(CONV)
    assert text == EXPECTED[name]
    assert [text[t.start : t.end] for t in turns] == EXPECTED_SPANS[name]
    assert [t.role for t in turns] == [m["role"] for m in CONV]


def test_no_system_prompt_renderings() -> None:
    conv = CONV[1:3]
    assert BUILTIN_TEMPLATES["llama2"].render(conv).text == "<s>[INST] Hi [/INST] Hello! </s>"
    assert BUILTIN_TEMPLATES["alpaca"].render(conv).text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>"
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_jinja_equivalent_renders_identically_in_transformers(name: str) -> None:
    """The chat_template saved with the tokenizer renders exactly what the Python renderer does,
    through transformers' own apply_chat_template, and gives the same assistant spans."""
    from transformers import PreTrainedTokenizerFast

    template = BUILTIN_TEMPLATES[name]
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe(template), **template.tokenizer_config())
    for conv in [CONV, CONV[1:], *sample_conversations(30, seed=1)]:
        ours = template.render(conv)
        assert hf.apply_chat_template(conv, tokenize=False) == ours.text
        specials = {"bos_token": "", **template.tokenizer_config()}
        assert jinja_render_text(template.jinja, conv, **specials) == ours.text
        # Our sandboxed Jinja path derives the same spans from the generation markers.
        via_jinja = make_jinja_template(name, template.jinja, bos_token=template.bos_token,
                                        eos_token=template.eos_token).render(conv)
        assert via_jinja == ours


CHATML_NO_MARKERS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def test_jinja_without_generation_markers_uses_content_and_eos(tmp_path) -> None:
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_NO_MARKERS, "eos_token": "<|im_end|>"}))
    template = load_template(str(d))
    text, turns = template.render(CONV)
    assert text == EXPECTED["chatml"]
    assert [text[t.start : t.end] for t in turns] == EXPECTED_SPANS["chatml"]
    assert "<|im_end|>" in template.special_tokens


def test_jinja_file_and_tokenizer_dir_eos(tmp_path) -> None:
    jinja = tmp_path / "t.jinja"
    jinja.write_text(BUILTIN_TEMPLATES["llama3"].jinja)
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|eot_id|>"}))
    template = load_template(str(jinja), d)
    assert template.render(CONV) == BUILTIN_TEMPLATES["llama3"].render(CONV)


def test_template_that_rewrites_content_is_refused() -> None:
    t = make_jinja_template("upper", "{% for m in messages %}{{ m['content'] | upper }}</s>{% endfor %}",
                            bos_token=None, eos_token="</s>")
    # the probe's answer comes out upper-cased, so nothing tells where a turn ends: refused either way
    with pytest.raises(TemplateError, match="changes or drops the content|cannot tell what closes"):
        t.render(CONV)


def test_missing_end_of_turn_is_refused() -> None:
    t = make_jinja_template("noend", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
                            bos_token=None, eos_token="</s>")
    with pytest.raises(TemplateError, match="cannot tell what closes an assistant turn"):
        t.render(CONV)


def test_sandbox_blocks_python_internals() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    t = make_jinja_template("evil", evil, bos_token=None, eos_token="</s>")
    with pytest.raises(TemplateError, match="failed to render"):
        t.render(CONV)


def test_raise_exception_and_strftime_are_available() -> None:
    src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('must start with user') }}{% endif %}" \
          "{{ strftime_now('%Y')[:0] }}{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    t = make_jinja_template("checks", src, bos_token=None, eos_token="</s>")
    assert t.render(CONV[1:3]).text == "Hi</s>Hello!</s>"
    with pytest.raises(TemplateError, match="must start with user"):
        t.render(CONV)


def test_unknown_template_name_says_what_is_allowed() -> None:
    with pytest.raises(TemplateError, match="not a built-in .*chatml"):
        load_template("vicuna")
