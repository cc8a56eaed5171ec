"""Checkpoints hold data only (safetensors + JSON): loading one never runs code, a round trip restores
model, optimizer and RNG bit for bit, and anything else in a checkpoint directory is refused clearly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_fixtures import make_run_dir, tiny_config

from trainer.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

FILES = {"model.safetensors", "optimizer.safetensors", "state.json"}


class _WritesAFile:
    """Unpickling this object writes `marker`: what a planted state.pt could do instead of touching a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "this ran while a checkpoint was loaded"))


def _plant(ckpt_dir: Path, marker: Path) -> None:
    """A legacy-looking state.pt whose unpickling runs code."""
    ckpt_dir.mkdir(parents=True)
    torch.save({"step": 10, "rows_per_step": 4, "model": {}, "optimizer": _WritesAFile(marker)}, ckpt_dir / "state.pt")


def _tiny_lm(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # tied embeddings: two state-dict names share one tensor, which safetensors must not be tripped by
    config = LlamaConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=True,
    )  # fmt: skip


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 48, (2, 12), generator=g)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _tiny_lm(seed)
    optimizer = _adamw(model)
    for s in range(3):
        _step(model, optimizer, s)
    return model, optimizer


def _draws() -> tuple[float, float, float, list[float]]:
    """The next value of every RNG a checkpoint restores (gauss draws check the cached-normal state too)."""
    return random.gauss(0, 1), float(np.random.standard_normal()), float(np.random.rand()), torch.rand(3).tolist()


def _assert_optimizer_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid, entry in sa["state"].items():
        assert entry.keys() == sb["state"][pid].keys()
        for key, value in entry.items():
            other = sb["state"][pid][key]
            assert type(other) is type(value), (pid, key)
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype and torch.equal(value, other), (pid, key)
            else:
                assert value == other, (pid, key)


def test_a_planted_pickle_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    planted = tmp_path / "ckpts" / "step-00000010"
    _plant(planted, marker)
    model, optimizer = _trained()
    assert list_checkpoints(tmp_path / "ckpts") == []
    assert latest_checkpoint(tmp_path / "ckpts") == planted  # a resume stops on it instead of skipping it
    with pytest.raises(ValueError, match="not a sftforge checkpoint") as err:
        load_checkpoint(planted, model, optimizer)
    assert str(planted) in str(err.value)
    assert "model.safetensors, optimizer.safetensors, state.json" in str(err.value)
    assert "refusing to load state.pt, which could run code" in str(err.value)
    assert not marker.exists()


def test_resume_from_a_planted_pickle_stops_with_one_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from trainer.__main__ import main
    from trainer.fit import train

    marker = tmp_path / "MARKER"
    rd = make_run_dir(tmp_path / "run", n_train=8, n_val=2)
    _plant(rd / "train" / "checkpoints" / "step-00000010", marker)
    with pytest.raises(ValueError, match="refusing to load state.pt"):
        train(rd, tiny_config(rd), resume=True, log=lambda _: None)
    assert not marker.exists()
    # the command line: exit status 2 and one line, no traceback
    sets = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "train.device=cpu"]
    assert main([str(rd), "--resume", *(x for s in sets for x in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "step-00000010: not a sftforge checkpoint" in err
    assert "Traceback" not in err
    assert not marker.exists()


def test_round_trip_restores_model_optimizer_and_rng_exactly(tmp_path: Path) -> None:
    model, optimizer = _trained(seed=0)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()  # leaves a cached gaussian in python's and numpy's state
    extra = {"rows_per_step": 6, "total_steps": 9, "epoch": 1, "row_in_epoch": 12,
             "eval_state": {"history": [{"step": 0, "loss": 5.754083075075068, "perplexity": None}]}}  # fmt: skip
    path = save_checkpoint(tmp_path, 7, model, optimizer, extra, keep=2)
    assert {p.name for p in path.iterdir()} == FILES
    expected_draws = _draws()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    other, other_opt = _trained(seed=5)  # different weights and optimizer moments
    _draws()
    state = load_checkpoint(path, other, other_opt)
    assert state == {"step": 7, **extra}
    assert _draws() == expected_draws
    restored = other.state_dict()
    assert restored.keys() == weights.keys()
    for name, w in weights.items():
        assert torch.equal(restored[name], w), name
    assert other.lm_head.weight is other.model.embed_tokens.weight  # still tied
    _assert_optimizer_equal(other_opt, optimizer)
    assert other_opt.param_groups[0]["betas"] == (0.9, 0.95)

    # and the next step (AdamW's moments and step count at work) is the same bit for bit
    _step(model, optimizer, 99)
    _step(other, other_opt, 99)
    for name, w in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], w), name


def test_list_checkpoints_keeps_the_newest_and_skips_unfinished_writes(tmp_path: Path) -> None:
    model, optimizer = _trained()
    for step in (5, 10, 20, 40):
        save_checkpoint(tmp_path, step, model, optimizer, {}, keep=2)
    (tmp_path / ".step-00000080.tmp-123").mkdir()  # a write that was killed
    (tmp_path / "step-notes").mkdir()  # not a step directory
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020", "step-00000040"]
    assert {p.name for p in (tmp_path / "step-00000040").iterdir()} == FILES
    state = json.loads((tmp_path / "step-00000040" / "state.json").read_text())
    assert state["step"] == 40 and state["format"] == "sftforge-checkpoint"


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _garble(p: Path) -> None:
    p.write_bytes(b"\x80\x04\x95" + bytes(range(256)) * 4)


def _json_of_another_kind(p: Path) -> None:
    p.write_text(json.dumps({"step": 3}))


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("model.safetensors", _truncate, "model.safetensors: not a readable safetensors file"),
        ("optimizer.safetensors", _garble, "optimizer.safetensors: not a readable safetensors file"),
        ("state.json", _truncate, "state.json: not valid JSON"),
        ("state.json", _garble, "state.json: not valid JSON"),
        ("state.json", _json_of_another_kind, "state.json: not a sftforge checkpoint state"),
        ("optimizer.safetensors", Path.unlink, "not a sftforge checkpoint (expected model.safetensors"),
    ],
)
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path, name: str, damage, expected: str) -> None:
    from trainer.checkpoint import CheckpointError

    model, optimizer = _trained()
    path = save_checkpoint(tmp_path, 3, model, optimizer, {"rows_per_step": 2}, keep=2)
    damage(path / name)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, *_trained(seed=1))
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.checkpoint import CheckpointError

    path = save_checkpoint(tmp_path, 3, *_trained(), {}, keep=2)
    wider = LlamaForCausalLM(
        LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, wider, _adamw(wider))


def test_resume_with_another_batch_layout_is_refused(tmp_path: Path) -> None:
    from trainer.checkpoint import CheckpointError
    from trainer.fit import train

    rd = make_run_dir(tmp_path / "run", n_train=12, n_val=2)
    train(rd, tiny_config(rd, max_steps=2, micro_batch_size=2), log=lambda _: None)
    with pytest.raises(CheckpointError, match="saved with 2 rows per step, now 3"):
        train(rd, tiny_config(rd, max_steps=4, micro_batch_size=3), resume=True, log=lambda _: None)
