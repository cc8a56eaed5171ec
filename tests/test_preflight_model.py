"""Preflight with a pre-trained model (model.path): what would fail at training is found before curating."""

from __future__ import annotations

import json
from pathlib import Path

from flows.preflight import preflight
from schemas.config import RunConfig


def _config(tmp_path: Path, model: Path, **sections: dict) -> RunConfig:
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "Say hi.", "output": "Hi!"}\n')
    return RunConfig.model_validate({
        "name": "t", "output_dir": str(tmp_path / "out"),
        "sources": [{"name": "a", "path": str(data), "format": "alpaca", "tier": "expert"}],
        "model": {"path": str(model)}, **sections,
    })


def _model_dir(tmp_path: Path, positions: int, template: str | None) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": positions}))
    tok_cfg = {"eos_token": "</s>"} | ({"chat_template": template} if template else {})
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return d


def test_rows_longer_than_the_models_positions_are_refused_up_front(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, 512, "{% for m in messages %}{{ m.content }}{% endfor %}")
    problems = preflight(_config(tmp_path, model, pack={"max_seq_len": 1024}))
    assert any("pack.max_seq_len = 1024" in p and "max_position_embeddings (512" in p for p in problems), problems
    assert not any("max_position_embeddings" in p for p in preflight(_config(tmp_path, model, pack={"max_seq_len": 512})))


def test_a_model_without_a_chat_template_names_model_path_and_suggests_template_name(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, 4096, None)
    problems = preflight(_config(tmp_path, model))
    assert len(problems) == 1 and problems[0].startswith(f"model.path: {model}") and "template.name" in problems[0], problems
    assert preflight(_config(tmp_path, model, template={"name": "chatml"})) == []
