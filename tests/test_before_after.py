"""Before/after view on a tiny model: answers next to references, val loss per source and tier."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.ingest.canonical import from_records
from schemas.config import RunConfig
from schemas.conversation import conversation_id
from trainer.before_after import choose_prompts, compare, loss_table, split_reference

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def conversations(n_per_source: int) -> pl.DataFrame:
    rows = []
    for source, tier in (("exp", "expert"), ("syn", "synthetic")):
        for i in range(n_per_source):
            msgs = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"{source}: what is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
                {"role": "user", "content": "And doubled?"},
                {"role": "assistant", "content": f"Doubled it is {4 * i}."},
            ]
            cid = conversation_id(msgs)
            rows.append(
                {
                    "conversation_id": cid,
                    "origin": f"{source}:{i + 1}",
                    "source": source,
                    "tier": tier,
                    "messages": msgs,
                }
            )
    return from_records(rows)


def save_tiny_models(df: pl.DataFrame, run_dir: Path) -> None:
    """A BPE tokenizer trained on the conversations and two tiny Llama models (different seeds)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [m["content"] for msgs in df["messages"].to_list() for m in msgs]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"], show_progress=False
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML)
    for seed, out in ((0, run_dir / "train" / "model_init"), (1, run_dir / "model")):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
            eos_token_id=fast.eos_token_id, bos_token_id=None, pad_token_id=None,
        )  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(out)
        fast.save_pretrained(out)


def eval_entry(step: int, loss: float) -> dict:
    group = {"loss": loss, "target_tokens": 10, "conversations": 2}
    return {
        "step": step, "loss": loss, "perplexity": 1.0, "target_tokens": 20, "conversations": 4,
        "per_source": {"exp": group, "syn": {**group, "loss": loss + 1}},
        "per_tier": {"expert": group, "synthetic": {**group, "loss": loss + 1}},
    }  # fmt: skip


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    df = conversations(6).with_columns(pl.lit(0.5).alias("score"), pl.lit(1, dtype=pl.Int32).alias("repeat"))
    (tmp_path / "curated").mkdir()
    df.write_parquet(tmp_path / "curated" / "part-00000.parquet")
    # Validation shard: the first three conversations of each source.
    val_ids = [c for s in ("exp", "syn") for c in df.filter(pl.col("source") == s)["conversation_id"][:3]]
    (tmp_path / "shards").mkdir()
    pl.DataFrame({"conversation_ids": [val_ids[:2], val_ids[2:]]}).write_parquet(
        tmp_path / "shards" / "val-00000.parquet"
    )
    state = {
        "history": [eval_entry(0, 5.0), eval_entry(8, 3.0)],
        "initial": eval_entry(0, 5.0),
        "final": eval_entry(8, 3.0),
    }
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "eval.json").write_text(json.dumps(state))
    save_tiny_models(df, tmp_path)
    return tmp_path


def make_cfg(run_dir: Path, **before_after) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "t",
            "output_dir": str(run_dir),
            "sources": [
                {"name": "exp", "path": "e.jsonl", "tier": "expert"},
                {"name": "syn", "path": "s.jsonl", "tier": "synthetic"},
            ],
            "before_after": {"num_prompts": 4, "max_new_tokens": 5, **before_after},
        }
    )


def test_compare_writes_answers_references_and_losses(run_dir):
    result = compare(run_dir, make_cfg(run_dir))
    on_disk = json.loads((run_dir / "report" / "before_after.json").read_text())
    assert on_disk["prompts"] == result["prompts"]
    assert len(result["prompts"]) == 4 and result["prompt_splits"] == {"val": 4}
    curated = pl.read_parquet(run_dir / "curated" / "part-00000.parquet")
    val = set(pl.read_parquet(run_dir / "shards" / "val-00000.parquet")["conversation_ids"].explode())
    for p in result["prompts"]:
        assert p["conversation_id"] in val and p["split"] == "val"
        msgs = curated.filter(pl.col("conversation_id") == p["conversation_id"])["messages"][0].to_list()
        assert p["reference"] == msgs[-1]["content"]
        assert p["prompt"] == [{k: v for k, v in m.items() if v is not None} for m in msgs[:-1]]
        assert isinstance(p["before"], str) and isinstance(p["after"], str)
        assert 1 <= p["before_tokens"] <= 5 and 1 <= p["after_tokens"] <= 5
    # Round-robin over sources: both appear among four prompts.
    assert {p["source"] for p in result["prompts"]} == {"exp", "syn"}
    # Different weights, so greedy answers differ somewhere (a check that both models were used).
    assert [p["before"] for p in result["prompts"]] != [p["after"] for p in result["prompts"]]
    vl = result["val_loss"]
    assert vl["overall"] == {"before": 5.0, "after": 3.0, "change": -2.0, "target_tokens": 20}
    assert vl["per_source"]["syn"]["before"] == 6.0 and vl["per_tier"]["expert"]["after"] == 3.0


def test_compare_is_deterministic(run_dir):
    a = compare(run_dir, make_cfg(run_dir))
    b = compare(run_dir, make_cfg(run_dir))
    assert a == b


def test_missing_starting_model_names_the_setting(run_dir):
    import shutil

    shutil.rmtree(run_dir / "train" / "model_init")
    with pytest.raises(FileNotFoundError, match="train.save_initial_model"):
        compare(run_dir, make_cfg(run_dir))


def test_disabled_writes_nothing(run_dir):
    assert compare(run_dir, make_cfg(run_dir, enabled=False)) is None
    assert not (run_dir / "report" / "before_after.json").exists()


def test_small_val_split_is_topped_up_from_train(run_dir):
    chosen = choose_prompts(run_dir, 10, seed=0)
    val = set(pl.read_parquet(run_dir / "shards" / "val-00000.parquet")["conversation_ids"].explode())
    assert chosen["split"].to_list() == ["val"] * 6 + ["train"] * 4
    assert set(chosen["conversation_id"][:6]) == val and not set(chosen["conversation_id"][6:]) & val


def test_prompt_choice_without_val_shards_uses_curated(tmp_path):
    df = conversations(5)
    (tmp_path / "curated").mkdir()
    df.write_parquet(tmp_path / "curated" / "part-00000.parquet")
    a = choose_prompts(tmp_path, 6, seed=3)
    assert a.height == 6 and a.equals(choose_prompts(tmp_path, 6, seed=3))
    assert a["split"].unique().to_list() == ["curated"]
    assert dict(a.group_by("source").len().iter_rows()) == {"exp": 3, "syn": 3}
    assert not a.equals(choose_prompts(tmp_path, 6, seed=4))


def test_split_reference_takes_the_last_assistant_turn():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert split_reference(msgs) == ([{"role": "user", "content": "a"}], "b")


def test_loss_table_handles_missing_groups_and_nan():
    first = eval_entry(0, float("nan"))
    last = eval_entry(4, 2.0)
    del last["per_source"]["syn"]
    table = loss_table({"initial": first, "final": last})
    assert table["overall"]["before"] is None and table["overall"]["change"] is None
    assert table["per_source"]["syn"]["after"] is None and table["per_source"]["exp"]["after"] == 2.0


def test_whitespace_only_answer_is_said_not_blank():
    from trainer.before_after import shown_answer

    assert shown_answer("  Paris. \n") == "Paris."
    assert shown_answer("\n\n\n") == "(whitespace only: '\\n\\n\\n')"
    assert shown_answer("\n" * 20).endswith("…)")
    assert shown_answer("") == ""
