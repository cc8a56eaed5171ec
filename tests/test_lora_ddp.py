"""LoRA under two gloo ranks (torchrun, through `python -m trainer`), with DDP or FSDP2, trains exactly
what one process trains: adapter, merged model and checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from trainer_fixtures import (
    assert_same_steps,
    assert_weights_close,
    make_base_model,
    make_run_dir,
    torchrun_trainer,
    write_train_config,
)

from schemas.config import load_config
from trainer.fit import train

pytest.importorskip("peft")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(tmp_path: Path, parallel: str) -> None:
    one = make_run_dir(tmp_path / "one", n_train=30, n_val=10)
    base = make_base_model(tmp_path / "base", one)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    sections = f'[model]\npath = "{base}"\n[lora]\nenabled = true\nr = 4\nalpha = 8\ndropout = 0.0\n'
    extra = f'parallel = "{parallel}"\n'
    # one process: nproc = 2 outside torchrun runs as grad_accum x 2, the same global batch
    train(one, load_config(write_train_config(tmp_path / "one.toml", one, sections, extra)), log=lambda _: None)
    torchrun_trainer(two, write_train_config(tmp_path / "two.toml", two, sections, extra))

    s1, s2 = (json.loads((d / "train" / "summary.json").read_text()) for d in (one, two))
    assert (s1["world_size"], s2["world_size"]) == (1, 2) and s2["target_tokens"] == s1["target_tokens"]
    for rel in ("model/adapter/adapter_model.safetensors", "model/model.safetensors",
                "train/checkpoints/step-00000002/model.safetensors"):  # fmt: skip
        assert_weights_close(one, two, rel)
    assert_same_steps(one, two, 4)
