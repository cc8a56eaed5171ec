"""Two gloo ranks under torchrun (through `python -m trainer`) train exactly what one process trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trainer_fixtures import (
    assert_same_steps,
    assert_weights_close,
    make_run_dir,
    torchrun_trainer,
    write_train_config,
)

from schemas.config import load_config
from trainer.fit import train

MODEL = "[model]\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\nintermediate_size = 64\n"


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    one = make_run_dir(tmp_path / "one", n_train=30, n_val=10)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    # one process: nproc = 2 outside torchrun runs as grad_accum x 2, the same global batch
    train(one, load_config(write_train_config(tmp_path / "one.toml", one, MODEL)), log=lambda _: None)
    torchrun_trainer(two, write_train_config(tmp_path / "two.toml", two, MODEL))

    s1 = json.loads((one / "train" / "summary.json").read_text())
    s2 = json.loads((two / "train" / "summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s2["target_tokens"] == s1["target_tokens"]
    assert_weights_close(one, two, "model/model.safetensors", tol=1e-5)
    e1 = json.loads((one / "train" / "eval.json").read_text())["final"]
    e2 = json.loads((two / "train" / "eval.json").read_text())["final"]
    assert e2["target_tokens"] == e1["target_tokens"]
    assert abs(e2["loss"] - e1["loss"]) < 1e-4
    assert_same_steps(one, two, 4)
