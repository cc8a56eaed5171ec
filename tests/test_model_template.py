"""With `[model] path` and no tokenizer or template named, the shards are made with the model
directory's own tokenizer and chat template: the ids transformers' apply_chat_template gives, what the
model will be served with."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from tokenize_fixtures import make_run, record, sample_conversations
from trainer_fixtures import make_chat_model as model_dir

from pipeline.core.manifest import build_manifest
from pipeline.render.pack import run_tokenize
from pipeline.render.templates import TemplateError

transformers = pytest.importorskip("transformers")

PACK = {"max_seq_len": 512, "self_check_all": True, "packing": False, "val_fraction": 0.0}


def test_shards_use_the_model_dirs_tokenizer_and_chat_template(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "model")
    convs = sample_conversations(40, seed=5)
    run_dir, cfg = make_run(tmp_path / "run", [record(i, c) for i, c in enumerate(convs)],
                            model={"path": str(model)}, pack=PACK)  # fmt: skip
    assert (cfg.tokenizer.path, cfg.template.name) == (model, str(model))
    enc, _ = run_tokenize(run_dir, cfg)
    assert enc.tokenizer["kind"] == "model" and enc.tokenizer["template"] == "the model's own chat_template"
    assert enc.tokenizer["added_special_tokens"] == [] and enc.self_check["checked"] == 40
    assert build_manifest(run_dir, cfg, {})["template"] == str(model)

    hf = transformers.AutoTokenizer.from_pretrained(model)
    rows = pl.read_parquet(run_dir / "shards" / "train-00000.parquet")
    by_id = {r["conversation_ids"][0]: r for r in rows.iter_rows(named=True)}
    assert len(by_id) == 40
    for c in convs:
        row = by_id[record(0, c)["conversation_id"]]
        assert row["input_ids"] == list(
            hf.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
        )
    # the default system prompt of the model's template is in the shards, and never a target
    first = by_id[record(0, convs[0])["conversation_id"]]
    text = hf.decode(first["input_ids"])
    assert "You are a helpful assistant." in text or convs[0][0]["role"] == "system"
    # the run's tokenizer/ serves the same template
    assert transformers.AutoTokenizer.from_pretrained(run_dir / "tokenizer").apply_chat_template(
        convs[0], tokenize=False
    ) == hf.apply_chat_template(convs[0], tokenize=False)


def test_what_the_config_names_wins(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "model")
    convs = sample_conversations(10, seed=1)
    run_dir, cfg = make_run(tmp_path / "run", [record(i, c) for i, c in enumerate(convs)],
                            model={"path": str(model)}, template={"name": "chatml"}, pack=PACK)  # fmt: skip
    assert cfg.template.name == "chatml" and cfg.tokenizer.path == model
    enc, _ = run_tokenize(run_dir, cfg)
    assert enc.template == "chatml" and enc.tokenizer["template"] == "template.name = chatml"
    _, cfg2 = make_run(tmp_path / "run2", [record(0, convs[0])], model={"path": str(model)},
                       tokenizer={"path": str(tmp_path / "other")})  # fmt: skip
    assert cfg2.tokenizer.path == tmp_path / "other" and cfg2.template.name == str(model)  # each key alone
    _, plain = make_run(tmp_path / "run3", [record(0, convs[0])])
    assert (plain.tokenizer.path, plain.template.name) == (None, "chatml")
    assert plain.data_hash() != cfg.data_hash()


def test_a_model_without_chat_template_is_a_clear_error(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "base", chat_template=None)
    run_dir, cfg = make_run(tmp_path / "run", [record(0, sample_conversations(1)[0])],
                            model={"path": str(model)}, pack=PACK)  # fmt: skip
    with pytest.raises(TemplateError, match=r"no chat_template.*set template.name"):
        run_tokenize(run_dir, cfg)
