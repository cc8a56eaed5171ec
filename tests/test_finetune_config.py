"""configs/finetune.toml end to end: the bundled data curated with a local model's own tokenizer and
chat template, LoRA on that model with the fine-tuning defaults, an adapter and a merged model out,
and the before/after view on base and merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, PrefectServer
from trainer_fixtures import make_chat_model

pytestmark = [pytest.mark.slow, pytest.mark.server]
pytest.importorskip("peft")


def test_finetune_config_trains_lora_on_a_local_model(
    tmp_path: Path, server_settings: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    from flows.curate import curate_and_train

    model = make_chat_model(tmp_path / "model", hidden=32)
    monkeypatch.chdir(REPO)  # the config's source paths are relative to the repository root
    rd = tmp_path / "ft"
    overrides = [f"output_dir={rd}", f"model.path={model}", "train.max_steps=2", 'train.device="cpu"',
                 "before_after.num_prompts=2", "before_after.max_new_tokens=4"]  # fmt: skip
    state = curate_and_train(
        config=str(REPO / "configs" / "finetune.toml"), overrides=overrides, return_state=True
    )
    assert state.is_completed(), state

    manifest = json.loads((rd / "manifest.json").read_text())
    assert manifest["template"] == str(model)  # the model's own chat template rendered the shards
    encode = json.loads((rd / "work" / "encode" / "stats.json").read_text())
    assert encode["tokenizer"]["kind"] == "model"
    metrics = [json.loads(x) for x in (rd / "train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["lr"] == pytest.approx(2e-4)  # LoRA's fine-tuning default (1 warm-up step of 2)
    summary = json.loads((rd / "train" / "summary.json").read_text())
    assert summary["lora"]["enabled"] and 0 < summary["trainable_params"] < summary["params"]
    assert (rd / "model" / "adapter" / "adapter_model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(rd / "model")
    before_after = json.loads((rd / "report" / "before_after.json").read_text())
    assert before_after["models"]["before"] == str(model.resolve()) and len(before_after["prompts"]) == 2
