"""Memory at real sizes changes no number: the loss over chunks of target positions equals the plain
loss and its gradients, activation checkpointing gives the same gradients, and under LoRA the frozen
base is held in bf16 while the trained adapters (and their AdamW state) stay fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_fixtures import lora_config, make_base_model, make_run_dir, tiny_config, train_rows

from trainer.data import collate
from trainer.fit import forward_backward, setup, train_step
from trainer.inputs import read_manifest, shard_paths
from trainer.loss import FrozenHeadLoss, TargetLoss, _head_loss, chunk_size, chunked_head_loss, head_loss
from trainer.model import build_model, load_tokenizer, resolve_attn


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("memory") / "run")


def _model(run_dir: Path, attn: str = "varlen", **train):
    cfg = tiny_config(run_dir, attn_implementation=attn, **train)
    tok = load_tokenizer(run_dir / "tokenizer")
    return build_model(
        cfg.model, tok, max_seq_len=64, attn=resolve_attn(cfg.train, torch.device("cpu")), seed=0
    )


def _loss_and_grads(model, module, batch):
    forward_backward(module, [batch], global_targets=batch.n_targets)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        losses, _, _ = module(
            batch.input_ids, batch.loss_mask, batch.position_ids, batch.attention_mask, batch.segments
        )
    return losses, grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 300])
def test_frozen_head_loss_equals_cross_entropy_and_its_gradient(bias: bool, chunk: int) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=bias).requires_grad_(False)
    hidden = torch.randn(40, 16)
    targets = torch.randint(0, 97, (40,))
    upstream = torch.rand(40)  # any per-target weights, not only a uniform scale
    out = []
    for fn in (
        lambda h: _head_loss(head, h, targets),
        lambda h: FrozenHeadLoss.apply(h, head.weight, head.bias, targets, chunk),
    ):
        h = hidden.clone().requires_grad_(True)
        loss = fn(h)
        (loss * upstream).sum().backward()
        out.append((loss.detach(), h.grad))
    torch.testing.assert_close(out[1][0], out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1])


def test_head_loss_takes_the_frozen_path_only_for_a_frozen_head(monkeypatch: pytest.MonkeyPatch) -> None:
    used = []
    real = FrozenHeadLoss.apply
    monkeypatch.setattr(FrozenHeadLoss, "apply", lambda *a: used.append(1) or real(*a))
    head = torch.nn.Linear(8, 20, bias=False)
    h, t = torch.randn(5, 8, requires_grad=True), torch.randint(0, 20, (5,))
    head_loss(head, h, t, 100).sum().backward()  # a trained head: its weight needs logits in backward
    assert used == [] and head.weight.grad is not None
    head.requires_grad_(False)
    head_loss(head, h, t, 100).sum().backward()
    assert used == [1]
    with torch.no_grad():
        head_loss(head, h, t, 100)
    assert used == [1]


def test_frozen_head_chunks_are_cache_sized_but_never_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = []
    monkeypatch.setattr(FrozenHeadLoss, "apply", lambda h, w, b, t, chunk: rows.append(chunk) or t.float())
    h, t = torch.randn(3, 4, requires_grad=True), torch.zeros(3, dtype=torch.long)
    for vocab, chunk in ((8192, 10_000), (20_000, 10_000), (150_000, 10_000), (150_000, 100)):
        head_loss(torch.nn.Linear(4, vocab, bias=False).requires_grad_(False), h, t, chunk)
    # 2^21 logits a chunk (256 rows at 8k), at least 256 rows, at most the memory chunk
    assert rows == [256, 256, 256, 100]


def test_chunk_size_keeps_logits_bounded() -> None:
    assert chunk_size(0, 151_936) == 441 and chunk_size(0, 8192) == 8192 and chunk_size(100, 151_936) == 100
    head = torch.nn.Linear(8, 50, bias=False)
    h, t = torch.randn(10, 8), torch.randint(0, 50, (10,))
    torch.testing.assert_close(chunked_head_loss(head, h, t, 3), chunked_head_loss(head, h, t, 10))


@pytest.mark.parametrize("attn", ["varlen", "sdpa"])
def test_chunked_loss_equals_the_plain_loss_and_gradients(run_dir: Path, attn: str) -> None:
    model = _model(run_dir, attn)
    batch = collate(train_rows(run_dir)[:6], 0, flat=attn == "varlen")
    plain, g_plain = _loss_and_grads(model, TargetLoss(model), batch)
    assert plain.numel() > 7
    chunked, g_chunked = _loss_and_grads(model, TargetLoss(model, chunk_tokens=7), batch)
    assert TargetLoss(model, chunk_tokens=7).chunk == 7 and TargetLoss(model).chunk > plain.numel()
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    assert g_plain.keys() == g_chunked.keys() and "model.embed_tokens.weight" in g_plain  # tied head
    for name, g in g_plain.items():
        torch.testing.assert_close(g_chunked[name], g, rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_gives_the_same_gradients(run_dir: Path) -> None:
    from trainer.prepare import _checkpointing

    batch = collate(train_rows(run_dir)[:6], 0, flat=True)
    model = _model(run_dir)
    model.train()
    ref_loss, ref = _loss_and_grads(model, TargetLoss(model), batch)
    _checkpointing(model, tiny_config(run_dir, gradient_checkpointing=True).train)
    assert model.is_gradient_checkpointing
    model.train()
    loss, grads = _loss_and_grads(model, TargetLoss(model), batch)
    torch.testing.assert_close(loss, ref_loss)
    for name, g in ref.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7)


def test_training_with_checkpointing_and_chunks_matches_plain_training(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from trainer.fit import train

    rd = make_run_dir(tmp_path / "run", n_train=24, n_val=4)
    train(rd, tiny_config(rd, max_steps=3), log=lambda _: None)
    plain = load_file(rd / "model" / "model.safetensors")
    train(
        rd, tiny_config(rd, max_steps=3, gradient_checkpointing=True, loss_chunk_tokens=5), log=lambda _: None
    )
    for name, w in load_file(rd / "model" / "model.safetensors").items():
        torch.testing.assert_close(w, plain[name], rtol=1e-4, atol=1e-6)


def test_lora_keeps_the_frozen_base_in_bf16_and_the_adapters_in_fp32(run_dir: Path) -> None:
    pytest.importorskip("peft")
    base = make_base_model(run_dir.parent / "base16", run_dir)
    cfg = lora_config(run_dir, base, dtype="bfloat16", gradient_checkpointing=True)
    splits = shard_paths(run_dir, read_manifest(run_dir))
    run, _ = setup(run_dir, cfg, splits, seq_cap=64, rank=0, world=1, resume=False, say=lambda _: None)
    dtypes = {p.dtype for p in run.model.parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16}
    assert {p.dtype for p in run.model.parameters() if p.requires_grad} == {torch.float32}
    res = train_step(run, 0)
    assert res.loss == res.loss and res.grad_norm > 0  # finite, and the adapters got gradients
    state = run.optimizer.state_dict()["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())
