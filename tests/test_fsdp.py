"""FSDP2 under two gloo ranks (torchrun, `train.parallel = "fsdp"`) trains what one process trains, and
its checkpoints are the single-process format: a resume under FSDP or in one process ends where an
uninterrupted run does."""

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

MODEL = "[model]\nhidden_size = 32\nnum_layers = 2\nnum_heads = 2\nintermediate_size = 64\n"
FSDP = 'parallel = "fsdp"\nsave_initial_model = true\n'


def _config(path: Path, run_dir: Path, sections: str = MODEL) -> Path:
    return write_train_config(path, run_dir, sections, FSDP)


def test_two_fsdp_ranks_match_one_process_and_resume_either_way(tmp_path: Path) -> None:
    one = make_run_dir(tmp_path / "one", n_train=30, n_val=9)
    two, resumed = tmp_path / "two", tmp_path / "resumed"
    shutil.copytree(one, two)
    train(one, load_config(_config(tmp_path / "one.toml", one)), log=lambda _: None)  # grad_accum x 2
    torchrun_trainer(two, _config(tmp_path / "two.toml", two))

    s1, s2 = (json.loads((d / "train" / "summary.json").read_text()) for d in (one, two))
    assert (s1["world_size"], s2["world_size"]) == (1, 2) and s2["target_tokens"] == s1["target_tokens"]
    assert s2["params"] == s1["params"]
    for rel in ("model/model.safetensors", "train/model_init/model.safetensors",
                "train/checkpoints/step-00000002/model.safetensors",
                "train/checkpoints/step-00000002/optimizer.safetensors"):  # fmt: skip
        assert_weights_close(one, two, rel)
    assert_same_steps(one, two, 4)
    e1, e2 = (json.loads((d / "train" / "eval.json").read_text())["final"] for d in (one, two))
    assert e2["target_tokens"] == e1["target_tokens"] and abs(e2["loss"] - e1["loss"]) < 1e-4

    # an FSDP checkpoint resumes in one process, and a one-process checkpoint under FSDP
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "train" / "checkpoints" / "step-00000004")
    train(resumed, load_config(_config(tmp_path / "r.toml", resumed)), resume=True, log=lambda _: None)
    assert_weights_close(two, resumed, "model/model.safetensors")
    shutil.rmtree(one / "train" / "checkpoints" / "step-00000004")
    torchrun_trainer(one, _config(tmp_path / "one.toml", one), "--resume")
    assert_weights_close(two, one, "model/model.safetensors")

