"""Agreement with transformers: ids and assistant masks of a ChatML template with {% generation %}
markers equal apply_chat_template(..., return_assistant_tokens_mask=True); a HF tokenizer dir given in
the config is used as is; the saved tokenizer/ renders with the run's template."""

from __future__ import annotations

import json

import polars as pl
import pytest
from tokenize_fixtures import bpe, make_run, record, sample_conversations

from pipeline.render.masks import MaskOptions, encode_conversations
from pipeline.render.pack import run_tokenize
from pipeline.render.templates import BUILTIN_TEMPLATES, load_template

transformers = pytest.importorskip("transformers")


def _hf(template_name: str):
    template = BUILTIN_TEMPLATES[template_name]
    tok = bpe(template, extra=[m["content"] for c in sample_conversations(50, seed=9) for m in c])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **template.tokenizer_config())
    return template, tok, hf


@pytest.mark.parametrize("name", ["chatml", "llama3", "alpaca", "llama2"])
def test_ids_and_masks_equal_transformers_assistant_mask(name: str) -> None:
    template, tok, hf = _hf(name)
    convs = sample_conversations(300, seed=11) + [
        [{"role": "user", "content": "  lead"}, {"role": "assistant", "content": "\n\nHello 😀 "}],
        [{"role": "user", "content": "日本"}, {"role": "assistant", "content": " Hello world."}],
    ]
    enc = encode_conversations(convs, template, tok, MaskOptions())
    for i, conv in enumerate(convs):
        out = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert enc.ids[i].tolist() == list(out["input_ids"]), i
        assert enc.masks[i].tolist() == list(out["assistant_masks"]), i


def test_given_hf_tokenizer_dir_and_its_chat_template(tmp_path) -> None:
    """A tokenizer saved by save_pretrained is loaded from tokenizer.path and its chat_template
    (template.name = the same dir) renders the conversations."""
    template, _, hf = _hf("chatml")
    hf_dir = tmp_path / "hf_tok"
    hf.save_pretrained(hf_dir)
    convs = sample_conversations(40, seed=5)
    run_dir, cfg = make_run(
        tmp_path / "run", [record(i, c) for i, c in enumerate(convs)],
        template={"name": str(hf_dir)}, tokenizer={"path": str(hf_dir)},
        pack={"max_seq_len": 512, "self_check_all": True, "packing": False, "val_fraction": 0.0},
    )
    enc, _ = run_tokenize(run_dir, cfg)
    assert enc.tokenizer["kind"] == "given" and enc.tokenizer["added_special_tokens"] == []
    assert enc.self_check["checked"] == 40
    rows = pl.read_parquet(run_dir / "shards" / "train-00000.parquet")
    by_id = {r["conversation_ids"][0]: r for r in rows.iter_rows(named=True)}
    for c in convs:
        out = hf.apply_chat_template(c, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        row = by_id[record(0, c)["conversation_id"]]
        assert row["input_ids"] == list(out["input_ids"])
        assert row["loss_mask"] == list(out["assistant_masks"])
    assert load_template(str(hf_dir)).render(convs[0]) == template.render(convs[0])


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_saved_tokenizer_dir_serves_the_run_template(tmp_path, name: str) -> None:
    convs = sample_conversations(30, seed=2)
    run_dir, cfg = make_run(tmp_path, [record(i, c) for i, c in enumerate(convs)], template={"name": name},
                            tokenizer={"vocab_size": 400}, pack={"max_seq_len": 1024})
    run_tokenize(run_dir, cfg)
    saved = json.loads((run_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == BUILTIN_TEMPLATES[name].jinja
    hf = transformers.AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    assert hf.eos_token == BUILTIN_TEMPLATES[name].eos_token and hf.pad_token == "<|pad|>"
    for c in convs:
        assert hf.apply_chat_template(c, tokenize=False) == BUILTIN_TEMPLATES[name].render(c).text
