"""Helpers for the tool-call and reasoning render tests: the real chat templates stored under
fixtures/templates/ (see its README for their sources), Hugging Face tokenizer directories built
around them with a BPE trained in the test, and hypothesis strategies for canonical conversations
with tools, tool calls, tool results and reasoning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from tokenizers import Tokenizer

from pipeline.render.templates import ChatTemplate, make_jinja_template
from pipeline.render.tokenizer import train_bpe

FIXTURES = Path(__file__).parent / "fixtures" / "templates"

#: special tokens, eos and bos of the real models whose templates are stored as fixtures
MODELS: dict[str, dict[str, Any]] = {
    "qwen2_5": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "eos": "<|endoftext|>", "bos": None},
    "qwen3": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "eos": "<|endoftext|>", "bos": None},
    "llama3_1": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                     "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
        "eos": "<|end_of_text|>", "bos": "<|begin_of_text|>",
    },
    "gemma": {"specials": ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"], "eos": "<eos>", "bos": "<bos>"},
    "phi3": {"specials": ["<s>", "</s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
             "eos": "<|endoftext|>", "bos": "<s>"},
    "deepseekv3": {
        "specials": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
        "eos": "<｜end▁of▁sentence｜>", "bos": "<｜begin▁of▁sentence｜>",
    },
}

WORDS = ["alpha", "beta", "Hello", "world", "ünï", "😀", "日本", "42", "x\ny", "end.", "two  words", '"q"', "{}"]
TOOL_NAMES = ["get_weather", "search", "calc"]


def source(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")


def model_tokenizer(model: str, extra: list[str] | None = None) -> Tokenizer:
    """A byte-level BPE trained here, holding the model's special tokens as whole tokens."""
    spec = MODELS[model]
    template = ChatTemplate("t", "", tuple(spec["specials"]), spec["eos"])
    texts = [" Hello world. Hello there", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>",
             "<tool_response>\n42\n</tool_response>", "<think>\nhmm\n</think>\n\n", "héllo 😀 日本語",
             *(extra or [])] * 20
    return train_bpe(texts, template, vocab_size=500, min_frequency=2)


def hf_dir(tmp: Path, model: str, template_file: str | None = None) -> Path:
    """A Hugging Face tokenizer directory: tokenizer.json and a tokenizer_config.json with the model's
    chat_template, eos/bos and its special tokens in added_tokens_decoder."""
    spec = MODELS[model]
    tok = model_tokenizer(model)
    d = tmp / f"hf-{template_file or model}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    cfg = {
        "chat_template": source(template_file or model), "eos_token": spec["eos"], "bos_token": spec["bos"],
        "added_tokens_decoder": {str(tok.token_to_id(s)): {"content": s, "special": True} for s in spec["specials"]},
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return d


def fixture_template(model: str, template_file: str | None = None) -> ChatTemplate:
    spec = MODELS[model]
    return make_jinja_template(template_file or model, source(template_file or model), bos_token=spec["bos"],
                               eos_token=spec["eos"], special_tokens=spec["specials"])


text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


@st.composite
def tool_conversations(draw: st.DrawFn, *, reasoning: bool = False, system: bool | None = None,
                       max_calls: int = 2) -> dict[str, Any]:
    """{"messages": canonical messages, "tools": JSON string or None}: user turns, assistant turns that
    answer or call 1..max_calls tools (each answered by a tool message), optional reasoning."""
    msgs: list[dict[str, Any]] = []
    if system if system is not None else draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(text)})
    with_tools = draw(st.booleans())
    n_call = 0
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(text)})
        while with_tools and draw(st.booleans()):
            calls = []
            for _ in range(draw(st.integers(1, max_calls))):
                n_call += 1
                args = draw(st.dictionaries(st.sampled_from(["city", "q", "n"]), st.one_of(text, st.integers(0, 99)),
                                            max_size=2))
                calls.append({"id": f"call_{n_call}", "name": draw(st.sampled_from(TOOL_NAMES)),
                              "arguments": json.dumps(args, ensure_ascii=False)})
            msgs.append({"role": "assistant", "content": draw(st.sampled_from(["", "Let me check."])),
                         "reasoning": draw(text) if reasoning and draw(st.booleans()) else None,
                         "tool_calls": calls})
            for c in calls:
                msgs.append({"role": "tool", "content": draw(text), "tool_call_id": c["id"], "name": c["name"]})
        msgs.append({"role": "assistant", "content": draw(text),
                     "reasoning": draw(text) if reasoning and draw(st.booleans()) else None})
    tools = None
    if with_tools:
        tools = json.dumps([{"type": "function", "function": {"name": n, "description": f"the {n} tool",
                                                               "parameters": {"type": "object", "properties": {}}}}
                            for n in TOOL_NAMES])
    return {"messages": msgs, "tools": tools}
