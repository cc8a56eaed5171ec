"""The trainer pins behaviour: exact masked loss, accumulation invariance, packing isolation, resume,
learning, and a saved directory that transformers loads and generates from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from trainer_fixtures import (
    make_run_dir,
    one_and_four_micro_batches,
    packed_and_alone_losses,
    take_grads,
    tiny_config,
    train_rows,
)

from schemas.config import ConfigError, load_config
from trainer.data import StepPlan, collate, epoch_order
from trainer.fit import forward_backward, lr_at, train
from trainer.inputs import RunDirError
from trainer.loss import TargetLoss
from trainer.model import build_model, load_tokenizer, resolve_attn


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("trainer") / "run")


#: both ways of keeping packed conversations apart: a block-diagonal mask over padded rows, and
#: segment-wise attention over one concatenated sequence (trainer.attention)
ATTN = {"sdpa": False, "varlen": True}


def _model(run_dir: Path, attn: str = "sdpa", seed: int = 0):
    cfg = tiny_config(run_dir, attn_implementation=attn)
    tok = load_tokenizer(run_dir / "tokenizer")
    name = resolve_attn(cfg.train, torch.device("cpu"))
    return build_model(cfg.model, tok, max_seq_len=64, attn=name, seed=seed), tok


def test_loss_equals_reference_cross_entropy_on_targets(run_dir: Path) -> None:
    model, tok = _model(run_dir)
    row = train_rows(run_dir)[0]
    # one conversation alone: the reference is HF's logits with labels -100 off the targets
    n = int(row.seq_lens[0])
    ids = torch.from_numpy(row.input_ids[:n]).unsqueeze(0)
    mask = torch.from_numpy(row.loss_mask[:n]).unsqueeze(0)
    b = collate([type(row)(row.input_ids[:n], row.loss_mask[:n], row.seq_lens[:1], row.conversation_ids[:1])], 0)
    losses, _, _ = TargetLoss(model)(b.input_ids, b.loss_mask, b.position_ids, b.attention_mask, b.segments)
    logits = model(input_ids=ids).logits[0, :-1]
    labels = ids[0, 1:].masked_fill(~mask[0, 1:], -100)
    ref = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    assert losses.numel() == int(mask[0, 1:].sum()) > 0
    torch.testing.assert_close(losses.sum(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", list(ATTN))
def test_masked_token_target_changes_neither_loss_nor_gradients(run_dir: Path, attn: str) -> None:
    model, tok = _model(run_dir, attn)
    row = next(r for r in train_rows(run_dir) if len(r.seq_lens) >= 2)
    # the last token of the first segment is a masked "\n": no target, and (packing isolation) no
    # later token of its own segment or any other segment sees it
    end = int(row.seq_lens[0]) - 1
    assert not row.loss_mask[end]
    module = TargetLoss(model)

    def loss_andtake_grads(token: int, target: bool = False):
        ids, mask = row.input_ids.copy(), row.loss_mask.copy()
        ids[end], mask[end] = token, target
        b = collate([type(row)(ids, mask, row.seq_lens, row.conversation_ids)], pad_id=0, flat=ATTN[attn])
        forward_backward(module, [b], global_targets=b.n_targets)
        losses, _, _ = module(b.input_ids, b.loss_mask, b.position_ids, b.attention_mask, b.segments)
        return losses.detach().sum().item(), take_grads(model)

    base_loss, base_grads = loss_andtake_grads(int(row.input_ids[end]))
    for token in (5, 17, tok.convert_tokens_to_ids("<|im_end|>")):
        loss, grads = loss_andtake_grads(token)
        assert loss == pytest.approx(base_loss, abs=0, rel=1e-6)
        for name, g in base_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-8)
    # the same token made a target does change the loss: the test can fail
    loss, _ = loss_andtake_grads(17, target=True)
    assert loss != pytest.approx(base_loss, rel=1e-4)


@pytest.mark.parametrize("attn", list(ATTN))
def test_batch_8_accum_1_equals_batch_2_accum_4(run_dir: Path, attn: str) -> None:
    model, _ = _model(run_dir, attn)
    module = TargetLoss(model)
    rows = train_rows(run_dir)[:8]
    flat = ATTN[attn]
    one, g1, four, g4 = one_and_four_micro_batches(module, model, rows, flat)
    assert four == pytest.approx(one, rel=1e-6)
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-5, atol=1e-7)
    # the mean of per-micro-batch means (the common bug) would give a different gradient
    naive = [collate(rows[i : i + 2], 0, flat=flat) for i in range(0, 8, 2)]
    for b in naive:
        forward_backward(module, [b], global_targets=b.n_targets * 4)
    gn = take_grads(model)
    assert not torch.allclose(gn["model.embed_tokens.weight"], g1["model.embed_tokens.weight"], rtol=1e-3)


@pytest.mark.parametrize("attn", list(ATTN))
def test_packed_and_unpacked_give_the_same_per_conversation_losses(run_dir: Path, attn: str) -> None:
    model, _ = _model(run_dir, attn)
    module = TargetLoss(model).eval()
    rows = [r for r in train_rows(run_dir) if len(r.seq_lens) >= 2][:3]
    packed, alone = packed_and_alone_losses(module, rows, ATTN[attn])
    assert packed.keys() == alone.keys() and len(packed) >= 6
    for cid, (s, c) in alone.items():
        assert packed[cid][1] == c
        assert packed[cid][0] == pytest.approx(s, rel=1e-5)


def test_position_ids_restart_and_padding_is_isolated() -> None:
    import numpy as np

    from trainer.data import Row

    r1 = Row(np.arange(5), np.array([0, 0, 1, 1, 1], bool), np.array([2, 3]), ["a", "b"])
    r2 = Row(np.arange(3), np.array([1, 1, 1], bool), np.array([3]), ["c"])
    b = collate([r1, r2], pad_id=99)
    assert b.position_ids.tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 0, 1]]
    assert b.input_ids[1, 3:].tolist() == [99, 99]
    # the first token of every segment is never a target, whatever the shard says
    assert b.loss_mask.tolist() == [[False, False, False, True, True], [False, True, True, False, False]]
    m = b.attention_mask[0, 0]
    assert not m[2, 1] and m[3, 2] and not m[2, 3]  # segment b cannot see segment a; causal within b
    assert not b.attention_mask[1, 0, 3, 2] and b.attention_mask[1, 0, 4, 3]  # padding sees only padding
    assert (b.n_tokens, b.n_slots, b.n_targets) == (8, 10, 4)
    f = collate([r1, r2], pad_id=99, flat=True)  # varlen: one sequence, no padding, segment bounds
    assert f.position_ids.tolist() == [[0, 1, 0, 1, 2, 0, 1, 2]] and f.attention_mask is None
    assert f.segments == [(0, 2), (2, 5), (5, 8)] and (f.n_tokens, f.n_slots, f.n_targets) == (8, 8, 4)


def test_epoch_order_is_a_seeded_permutation() -> None:
    import numpy as np

    rows = np.array([4, 3, 5])
    u, r = epoch_order(rows, seed=1, epoch=0, window=2)
    assert sorted(zip(u.tolist(), r.tolist(), strict=True)) == [(a, i) for a in range(3) for i in range(rows[a])]
    u2, r2 = epoch_order(rows, seed=1, epoch=0, window=2)
    assert (u == u2).all() and (r == r2).all()
    u3, _ = epoch_order(rows, seed=1, epoch=1, window=2)
    assert not (u == u3).all()
    assert [len(p) for p in StepPlan(2, 2, 1).micro_slices(3, 0)] == [2, 1]


def test_lr_warmup_then_cosine_to_floor(run_dir: Path) -> None:
    t = tiny_config(run_dir, lr=1.0, warmup_steps=4, min_lr_ratio=0.1).train
    lrs = [lr_at(s, 20, t) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert lrs[-1] == pytest.approx(0.1)


def test_loss_falls_and_saved_dir_loads_and_generates(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rd = make_run_dir(tmp_path / "run", n_train=96)
    lines: list[str] = []
    res = train(rd, tiny_config(rd, max_steps=30, save_initial_model=True), log=lines.append)
    ev = json.loads((rd / "train" / "eval.json").read_text())
    assert ev["initial"]["step"] == 0 and ev["final"]["step"] == 30
    assert ev["final"]["loss"] < ev["initial"]["loss"] - 1.0
    assert set(ev["final"]["per_source"]) == {"alpaca", "dolly"}
    assert set(ev["final"]["per_tier"]) == {"synthetic", "crowdsourced"}
    metrics = [json.loads(x) for x in (rd / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "target_tokens", "elapsed"} <= metrics[0].keys()
    assert any(x.startswith("step 30/30") for x in lines)
    assert res["eval_final"] == ev["final"]["loss"]

    for d in (rd / "model", rd / "train" / "model_init"):
        assert (d / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": "What is two plus three?"}], add_generation_prompt=True, tokenize=False
        )
        assert prompt.endswith("<|im_start|>assistant\n")
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
        assert out.shape[1] > enc["input_ids"].shape[1]


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base = make_run_dir(tmp_path / "a", n_train=40)
    other = tmp_path / "b"
    shutil.copytree(base, other)
    cfg_a = tiny_config(base, max_steps=6, save_every=3, micro_batch_size=3)
    cfg_b = tiny_config(other, max_steps=6, save_every=3, micro_batch_size=3)
    train(base, cfg_a, log=lambda _: None)

    class Killed(Exception):
        pass

    def kill_after_step_4(line: str) -> None:
        if line.startswith("step 4/6"):
            raise Killed  # dies after the step-3 checkpoint and one more step that is lost

    with pytest.raises(Killed):
        train(other, cfg_b, log=kill_after_step_4)
    assert not (other / "model").exists()
    res = train(other, cfg_b, resume=True, log=lambda _: None)
    assert res["start_step"] == 3
    wa, wb = load_file(base / "model" / "model.safetensors"), load_file(other / "model" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0)
    steps = [json.loads(x)["step"] for x in (other / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_refuses_a_run_dir_without_manifest(tmp_path: Path) -> None:
    rd = make_run_dir(tmp_path / "run", n_train=8, n_val=2)
    (rd / "manifest.json").unlink()
    with pytest.raises(RunDirError, match="no manifest.json"):
        train(rd, tiny_config(rd))


def test_bad_train_values_are_clear_config_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'name = "x"\noutput_dir = "out"\n[[sources]]\nname = "a"\npath = "a.jsonl"\ntier = "expert"\n'
        "[model]\nhidden_size = 30\nnum_heads = 4\n"
    )
    with pytest.raises(ConfigError, match="num_heads"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        load_config(cfg, ["model.hidden_size=32", "train.micro_batch_size=0"])
    with pytest.raises(ConfigError, match="train.betas"):
        load_config(cfg, ["model.hidden_size=32", "train.betas=[0.9, 1.5]"])
    with pytest.raises(ConfigError, match="train.warmup_stepz"):
        load_config(cfg, ["model.hidden_size=32", "train.warmup_stepz=3"])


def test_cli_exits_2_with_one_message_on_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from trainer.__main__ import config_for, main

    assert main([str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    rd = make_run_dir(tmp_path / "run", n_train=8, n_val=2)
    assert main([str(rd), "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err
    cfg = config_for(rd, None, ["train.max_steps=2", "model.hidden_size=32", "seed=3"])
    assert (cfg.train.max_steps, cfg.model.hidden_size, cfg.seed) == (2, 32, 3)
