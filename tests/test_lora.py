"""LoRA through peft pins the same behaviour as full fine-tuning, and more: only the adapters learn, the
base and the embeddings stay bit-identical, accumulation and packing change nothing, a resume ends
where an uninterrupted run does, and what is saved loads with peft and transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_fixtures import (
    lora_config,
    make_base_model,
    make_run_dir,
    one_and_four_micro_batches,
    packed_and_alone_losses,
    take_grads,
    train_rows,
)

from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.data import collate
from trainer.fit import forward_backward, setup, train, train_step
from trainer.inputs import read_manifest, shard_paths
from trainer.loss import TargetLoss
from trainer.model import ModelError, load_tokenizer

peft = pytest.importorskip("peft")

ATTN = {"sdpa": False, "varlen": True}
BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("lora") / "run")


@pytest.fixture(scope="module")
def base(run_dir: Path) -> Path:
    return make_base_model(run_dir.parent / "base", run_dir)


def _setup(run_dir: Path, cfg, resume: bool = False):
    splits = shard_paths(run_dir, read_manifest(run_dir))
    return setup(run_dir, cfg, splits, seq_cap=64, rank=0, world=1, resume=resume, say=lambda _: None)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapters_sit_on_every_block_linear_and_nothing_else(run_dir: Path, base: Path) -> None:
    run, _ = _setup(run_dir, lora_config(run_dir, base))
    trainable = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    from trainer.lora import adapted_modules

    adapted = adapted_modules(run.model)
    assert {n.rsplit(".", 1)[1] for n in adapted} == BLOCK_LINEARS
    assert len(adapted) == 2 * len(BLOCK_LINEARS)  # two layers; not lm_head, not the embeddings
    assert run.prepared.trainable < run.prepared.total
    # a list of names is passed through; a name that matches nothing is a clear error
    run, _ = _setup(run_dir, lora_config(run_dir, base, {"target_modules": ["q_proj", "v_proj"]}))
    assert {n.rsplit(".", 1)[1] for n in adapted_modules(run.model)} == {"q_proj", "v_proj"}
    with pytest.raises(ModelError, match="lora.target_modules"):
        _setup(run_dir, lora_config(run_dir, base, {"target_modules": ["no_such_proj"]}))


@pytest.mark.parametrize("attn", list(ATTN))
def test_only_adapters_get_gradients_and_change(run_dir: Path, base: Path, attn: str) -> None:
    run, _ = _setup(run_dir, lora_config(run_dir, base, attn_implementation=attn, lr=1e-2))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    b = collate(train_rows(run_dir)[:4], run.pad_id, flat=ATTN[attn])
    forward_backward(run.module, [b], global_targets=b.n_targets)
    grads = take_grads(run.model)
    assert set(grads) == {n for n, p in run.model.named_parameters() if p.requires_grad}
    for step in range(3):
        train_step(run, step)
    after = dict(run.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed == set(grads)  # every adapter matrix moved (A as soon as B is non-zero) ...
    frozen = set(before) - changed  # ... and no base weight did, embeddings and head included
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= frozen


@pytest.mark.parametrize("attn", list(ATTN))
def test_batch_8_accum_1_equals_batch_2_accum_4(run_dir: Path, base: Path, attn: str) -> None:
    run, _ = _setup(run_dir, lora_config(run_dir, base, attn_implementation=attn))
    with torch.no_grad():  # B starts at zero, where A's gradient is zero too: give both a gradient
        for n, p in run.model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    one, g1, four, g4 = one_and_four_micro_batches(
        TargetLoss(run.model), run.model, train_rows(run_dir)[:8], ATTN[attn]
    )
    assert four == pytest.approx(one, rel=1e-6)
    assert g1.keys() == g4.keys() and any(".lora_A." in n for n in g1)
    for name in g1:
        assert g1[name].abs().sum() > 0
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("attn", list(ATTN))
def test_packed_and_unpacked_give_the_same_per_conversation_losses(
    run_dir: Path, base: Path, attn: str
) -> None:
    run, _ = _setup(run_dir, lora_config(run_dir, base, attn_implementation=attn))
    with torch.no_grad():
        for n, p in run.model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    rows = [r for r in train_rows(run_dir) if len(r.seq_lens) >= 2][:3]
    packed, alone = packed_and_alone_losses(TargetLoss(run.model).eval(), rows, ATTN[attn])
    assert packed.keys() == alone.keys() and len(packed) >= 6
    for cid, (s, c) in alone.items():
        assert packed[cid][1] == c
        assert packed[cid][0] == pytest.approx(s, rel=1e-5)


def test_saved_adapter_and_merged_model_load_and_agree(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rd = make_run_dir(tmp_path / "run", n_train=40)
    base = make_base_model(tmp_path / "base", rd, arch="qwen2")
    base_files = {p.name: p.read_bytes() for p in base.iterdir()}
    summary = train(rd, lora_config(rd, base, max_steps=6, lr=1e-2), log=lambda _: None)
    assert {p.name: p.read_bytes() for p in base.iterdir()} == base_files  # the base is never written
    assert 0 < summary["trainable_params"] < summary["params"]
    adapter = rd / "model" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()
    }
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base.resolve()
    )
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)

    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 11, 64]])
    plain = _logits(AutoModelForCausalLM.from_pretrained(base), ids)
    with_adapter = _logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter), ids
    )
    merged = _logits(AutoModelForCausalLM.from_pretrained(rd / "model"), ids)
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_adapter, plain, atol=1e-3)  # the adapter learnt something
    # transformers' own adapter loading (the base named in adapter_config.json) gives the same
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(adapter), ids), with_adapter)
    tok = AutoTokenizer.from_pretrained(rd / "model")
    assert tok.eos_token == "<|im_end|>" and AutoTokenizer.from_pretrained(adapter).eos_token == "<|im_end|>"


def test_without_merge_model_holds_only_the_adapter_and_before_after_runs(tmp_path: Path) -> None:
    from trainer.before_after import compare

    rd = make_run_dir(tmp_path / "run", n_train=24, n_val=6)
    base = make_base_model(tmp_path / "base", rd)
    cfg = lora_config(rd, base, {"merge": False}, max_steps=3, save_initial_model=True)
    cfg = cfg.model_copy(
        update={"before_after": cfg.before_after.model_copy(update={"num_prompts": 2, "max_new_tokens": 4})}
    )
    train(rd, cfg, log=lambda _: None)
    assert not (rd / "model" / "model.safetensors").exists() and (rd / "model" / "adapter").is_dir()
    assert not (rd / "train" / "model_init").exists()  # the base is the starting model: no copy
    res = compare(rd, cfg)
    assert res["models"] == {
        "before": str(base.resolve()),
        "after": f"{base.resolve()} + {rd / 'model' / 'adapter'}",
    }
    assert len(res["prompts"]) == 2 and all("after" in r for r in res["prompts"])


def test_from_scratch_base_is_written_for_the_adapter(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    rd = make_run_dir(tmp_path / "run", n_train=16, n_val=4)
    train(rd, lora_config(rd, None, max_steps=2, save_initial_model=False), log=lambda _: None)
    cfg = json.loads((rd / "model" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((rd / "train" / "model_init").resolve())
    AutoModelForCausalLM.from_pretrained(rd / "model")


def test_resume_ends_with_the_same_adapter_as_an_uninterrupted_run(tmp_path: Path) -> None:
    a = make_run_dir(tmp_path / "a", n_train=40)
    base = make_base_model(tmp_path / "base", a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    # dropout on: the resumed run must also restore the RNG the dropout masks come from
    kw = {"max_steps": 6, "save_every": 3, "micro_batch_size": 3, "lr": 1e-2}
    train(a, lora_config(a, base, {"dropout": 0.1}, **kw), log=lambda _: None)

    class Killed(Exception):
        pass

    def kill_after_step_4(line: str) -> None:
        if line.startswith("step 4/6"):
            raise Killed

    cfg_b = lora_config(b, base, {"dropout": 0.1}, **kw)
    with pytest.raises(Killed):
        train(b, cfg_b, log=kill_after_step_4)
    ckpt = b / "train" / "checkpoints" / "step-00000003"
    assert all("lora_" in k for k in load_file(ckpt / "model.safetensors"))  # the base is not copied
    state = json.loads((ckpt / "state.json").read_text())
    assert state["model"]["params"] == "trainable" and state["model"]["base_hash"]
    assert train(b, cfg_b, resume=True, log=lambda _: None)["start_step"] == 3
    for rel in ("model/adapter/adapter_model.safetensors", "model/model.safetensors"):
        wa, wb = load_file(a / rel), load_file(b / rel)
        assert wa.keys() == wb.keys()
        for name in wa:
            torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0)


def test_resume_refuses_another_base_or_kind(tmp_path: Path) -> None:
    rd = make_run_dir(tmp_path / "run", n_train=16, n_val=4)
    base = make_base_model(tmp_path / "base", rd)
    train(rd, lora_config(rd, base, max_steps=2), log=lambda _: None)
    ckpt = rd / "train" / "checkpoints" / "step-00000002"
    run, _ = _setup(rd, lora_config(rd, base, max_steps=2))
    with pytest.raises(CheckpointError, match="another base model"):
        load_checkpoint(ckpt, run.model, run.optimizer, base_hash="0" * 32)
    with pytest.raises(CheckpointError, match="this run fine-tunes all weights"):
        load_checkpoint(ckpt, run.model, run.optimizer)
    other = make_base_model(tmp_path / "other", rd, seed=1)
    with pytest.raises(CheckpointError, match="another base model"):
        train(rd, lora_config(rd, other, max_steps=2), resume=True, log=lambda _: None)


def test_new_tokens_under_lora_are_a_clear_error(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    rd = make_run_dir(tmp_path / "run", n_train=8, n_val=2)
    base = make_base_model(tmp_path / "base", rd)
    small = AutoConfig.from_pretrained(base)
    small.vocab_size = len(load_tokenizer(rd / "tokenizer")) - 5
    AutoModelForCausalLM.from_config(small).save_pretrained(tmp_path / "small")
    with pytest.raises(ModelError, match="embeddings frozen"):
        _setup(rd, lora_config(rd, tmp_path / "small"))


def test_qlora_off_cuda_names_what_is_missing(run_dir: Path, base: Path) -> None:
    with pytest.raises(
        ModelError, match=r"lora.quantize = '4bit' needs .*a CUDA GPU \(this run's device is cpu"
    ):
        _setup(run_dir, lora_config(run_dir, base, {"quantize": "4bit"}))
    with pytest.raises(ModelError, match="model.path"):
        _setup(run_dir, lora_config(run_dir, None, {"quantize": "4bit"}))
