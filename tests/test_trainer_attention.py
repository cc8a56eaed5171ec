"""Attention for packed rows: which implementation runs where, and FlexAttention's document mask
computes what per-segment SDPA computes (its forward runs on the CPU; its backward needs CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_fixtures import make_run_dir, tiny_config

from trainer.attention import FLEX, VARLEN, flex_available, register_flex
from trainer.data import ShardSet, collate
from trainer.inputs import read_manifest, shard_paths
from trainer.loss import TargetLoss
from trainer.model import ModelError, build_model, choose_attn, load_tokenizer, resolve_attn


@pytest.mark.parametrize(
    ("device", "flash", "flex", "expected"),
    [
        ("cuda", True, True, "flash_attention_2"),
        ("cuda", False, True, "flex"),
        ("cuda", False, False, "varlen"),
        ("cpu", True, True, "varlen"),
    ],
)
def test_auto_prefers_flash_then_flex_then_per_segment_sdpa(
    device: str, flash: bool, flex: bool, expected: str
) -> None:
    assert choose_attn("auto", device, flash_attn=flash, flex=flex) == expected


def test_explicit_choices_the_machine_cannot_run_are_clear_errors() -> None:
    assert choose_attn("sdpa", "cpu", flash_attn=False, flex=False) == "sdpa"
    assert choose_attn("flex", "cuda", flash_attn=False, flex=True) == "flex"
    with pytest.raises(ModelError, match="'flex' needs CUDA"):
        choose_attn("flex", "cpu", flash_attn=False, flex=True)
    with pytest.raises(ModelError, match="needs flash-attn"):
        choose_attn("flash_attention_2", "cuda", flash_attn=False, flex=True)
    with pytest.raises(ModelError, match="torch >= 2.5"):
        choose_attn("flex", "cuda", flash_attn=False, flex=False)
    cfg = tiny_config(Path("unused"), attn_implementation="auto")
    assert resolve_attn(cfg.train, torch.device("cpu")) == VARLEN


@pytest.mark.skipif(not flex_available(), reason="FlexAttention needs torch >= 2.5")
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_document_mask_equals_per_segment_sdpa(tmp_path: Path) -> None:
    rd = make_run_dir(tmp_path / "run", n_train=16, n_val=2)
    shards = ShardSet(shard_paths(rd, read_manifest(rd))["train"])
    rows = [shards.row(0, i) for i in range(3)]
    batch = collate(rows, 0, flat=True)
    assert len(batch.segments) > 3
    tok = load_tokenizer(rd / "tokenizer")
    mcfg = tiny_config(rd).model.model_copy(update={"num_heads": 4, "num_kv_heads": 2})  # grouped-query
    out = {}
    for attn in (VARLEN, register_flex()):
        model = build_model(mcfg, tok, max_seq_len=64, attn=attn, seed=0).eval()
        with torch.no_grad():
            out[attn], _, _ = TargetLoss(model)(
                batch.input_ids, batch.loss_mask, batch.position_ids, None, batch.segments
            )
    torch.testing.assert_close(out[FLEX], out[VARLEN], rtol=1e-5, atol=1e-5)
