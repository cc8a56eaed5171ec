"""Two gloo ranks under torchrun (through `python -m trainer`) train exactly what one process trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from trainer_fixtures import make_run_dir

from schemas.config import load_config
from trainer.fit import train

REPO = Path(__file__).resolve().parents[1]


def _config(path: Path, run_dir: Path) -> Path:
    path.write_text(
        f'name = "ddp"\noutput_dir = "{run_dir}"\n'
        '[[sources]]\nname = "alpaca"\npath = "x.jsonl"\ntier = "synthetic"\n'
        "[model]\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\nintermediate_size = 64\n"
        "[train]\nmax_steps = 4\nmicro_batch_size = 2\nlr = 3e-3\nwarmup_steps = 1\nsave_every = 2\n"
        'nproc = 2\ndevice = "cpu"\nsave_initial_model = false\nnum_threads = 1\n'
    )
    return path


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    one = make_run_dir(tmp_path / "one", n_train=30, n_val=10)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    # one process: nproc = 2 outside torchrun runs as grad_accum x 2, the same global batch
    train(one, load_config(_config(tmp_path / "one.toml", one)), log=lambda _: None)

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "trainer", str(two), "--config", str(_config(tmp_path / "two.toml", two))]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    s1 = json.loads((one / "train" / "summary.json").read_text())
    s2 = json.loads((two / "train" / "summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s2["target_tokens"] == s1["target_tokens"]
    w1, w2 = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    e1 = json.loads((one / "train" / "eval.json").read_text())["final"]
    e2 = json.loads((two / "train" / "eval.json").read_text())["final"]
    assert e2["target_tokens"] == e1["target_tokens"]
    assert abs(e2["loss"] - e1["loss"]) < 1e-4
    # loss and the (pre-clip) gradient norm of every step: Adam hides a gradient scale error in the
    # weights, the norm does not
    for key in ("loss", "grad_norm"):
        m1 = [json.loads(x)[key] for x in (one / "train" / "metrics.jsonl").read_text().splitlines()]
        m2 = [json.loads(x)[key] for x in (two / "train" / "metrics.jsonl").read_text().splitlines()]
        assert len(m2) == 4 and all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(m1, m2, strict=True)), key
