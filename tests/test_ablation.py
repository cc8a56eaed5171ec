"""The proxy ablation (pipeline.score.ablation): every arm trains on exactly the same token count,
none sees a validation conversation, and the result carries losses per source and tier and answers."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from score_fixtures import WORDS, make_reference, quality_run

pytest.importorskip("torch")

from pipeline.core.parts import read_parts  # noqa: E402
from pipeline.mix.stage import run_mix  # noqa: E402
from pipeline.render.encode import run_encode  # noqa: E402
from pipeline.score.ablation import plan_arms, pool_sequences, rows_of, run_ablation  # noqa: E402

SOURCES = [("exp", "expert"), ("crowd", "crowdsourced"), ("syn", "synthetic")]
ABLATION = {"enabled": True, "max_tokens": 900, "batch_tokens": 128, "epochs": 1, "hidden_size": 16,
            "num_layers": 1, "num_heads": 2, "num_prompts": 2, "max_new_tokens": 4, "val_fraction": 0.15}


def _convs(n: int) -> list[list[dict[str, str]]]:
    rng = random.Random(3)
    return [[{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))},
             {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 20)))}] for _ in range(n)]


def _run(tmp_path: Path) -> tuple[Path, object, list[Path], list[Path], list[Path]]:
    run_dir, cfg, parts = quality_run(tmp_path / "run", _convs(90), sources=SOURCES, ablation=ABLATION,
                                      select={"enabled": True, "top_fraction": 0.5},
                                      tokenizer={"vocab_size": 300}, pack={"max_seq_len": 256})  # fmt: skip
    enc = [Path(p) for p in run_encode(parts, run_dir, cfg).parts]
    mixed = [Path(p) for p in run_mix(parts, run_dir, cfg, encoded=enc).parts]
    return run_dir, cfg, parts, enc, mixed


def test_every_arm_trains_on_the_same_tokens_and_never_on_validation(tmp_path: Path) -> None:
    run_dir, cfg, parts, enc, mixed = _run(tmp_path)
    frame, seqs = pool_sequences(parts, enc, run_dir, cfg)
    selected = set(read_parts(mixed)["conversation_id"].to_list())
    arms, is_val, budget = plan_arms(frame, seqs, selected, cfg)
    assert set(arms) == {"selection", "random", "tier:expert", "tier:crowdsourced", "tier:synthetic"}
    val_ids = {seqs[i].conversation_id for i in np.flatnonzero(is_val)}
    assert val_ids and {s.source for s in seqs if s.conversation_id in val_ids} == {"exp", "crowd", "syn"}
    sel_tokens = sum(len(s.ids) for s in seqs if s.conversation_id in selected - val_ids)
    assert budget == min(900, sel_tokens)
    for name, (stream, _, _) in arms.items():
        assert sum(len(s.ids) for s in stream) == budget, name
        assert not {s.conversation_id for s in stream} & val_ids, name
        rows = rows_of(stream, 128)
        assert [sum(len(s.ids) for s in r) for r in rows[:-1]] == [128] * (len(rows) - 1)
        assert len(rows) == math.ceil(budget / 128)
    assert {s.conversation_id for s in arms["selection"][0]} <= selected
    assert {s.tier for s in arms["tier:expert"][0]} == {"expert"}
    # the plan is a function of the data and the seed
    again = plan_arms(frame, seqs, selected, cfg)
    assert [s.conversation_id for s in again[0]["random"][0]] == [s.conversation_id for s in arms["random"][0]]


def test_ablation_reports_losses_per_source_and_tier_and_answers(tmp_path: Path) -> None:
    run_dir, cfg, parts, enc, mixed = _run(tmp_path)
    res = run_ablation(parts, enc, mixed, run_dir, cfg)
    assert res.enabled and res.tokens_per_arm > 0 and res.steps_per_arm == math.ceil(res.tokens_per_arm / 128)
    assert {a["tokens"] for a in res.arms.values()} == {res.tokens_per_arm}
    for arm in res.arms.values():
        assert math.isfinite(arm["loss"]) and set(arm["per_tier"]) == {"expert", "crowdsourced", "synthetic"}
        assert set(arm["per_source"]) == {"exp", "crowd", "syn"}
    assert math.isfinite(res.before["loss"]) and len(res.answers) == 2
    assert set(res.answers[0]["answers"]) == set(res.arms)
    assert (run_dir / "work" / "ablation" / "stats.json").is_file()


def test_ablation_off_trains_nothing(tmp_path: Path) -> None:
    run_dir, cfg, parts = quality_run(tmp_path / "run", _convs(5))
    res = run_ablation(parts, [], [], run_dir, cfg)
    assert not res.enabled and res.arms == {}


def test_lora_arms_train_adapters_on_the_reference_models_tokens(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    ref = make_reference(tmp_path / "ref")
    run_dir, cfg, parts = quality_run(tmp_path / "run", _convs(60), sources=SOURCES,
                                      ablation={**ABLATION, "model": "lora", "lora_r": 2, "tiers": False},
                                      select={"reference_model": str(ref)}, tokenizer={"vocab_size": 300})  # fmt: skip
    enc = [Path(p) for p in run_encode(parts, run_dir, cfg).parts]
    mixed = [Path(p) for p in run_mix(parts, run_dir, cfg, encoded=enc).parts]
    frame, seqs = pool_sequences(parts, enc, run_dir, cfg)
    from pipeline.score.reference import reference_pairs

    own = reference_pairs(frame["messages"].to_list()[:1], ref, cfg)  # the reference's ids, not the run's
    assert seqs[0].ids.tolist() == own.ids[0].tolist() and seqs[0].mask.tolist() == own.masks[0].tolist()
    res = run_ablation(parts, enc, mixed, run_dir, cfg)
    assert set(res.arms) == {"selection", "random"} and "LoRA" in res.model
    assert all(math.isfinite(a["loss"]) for a in res.arms.values())
