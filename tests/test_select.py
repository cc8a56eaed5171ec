"""Quality score and selection: signals behave, top-N keeps the best, diversify keeps no near copies."""

from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.canonical import from_records
from pipeline.mix.select import (
    SIGNAL_COLUMNS,
    band_layout,
    greedy_diverse,
    minhash_signatures,
    quota,
    score_frame,
    select,
)
from schemas.config_mix import SelectConfig
from schemas.conversation import conversation_id

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]


def frame(
    answers: list[str], source: str = "s", tier: str = "expert", prompt: str = "Tell me."
) -> pl.DataFrame:
    rows = []
    for i, a in enumerate(answers):
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": a}]
        rows.append(
            {
                "conversation_id": conversation_id(msgs),
                "origin": f"{source}:{i + 1}",
                "source": source,
                "tier": tier,
                "messages": msgs,
            }
        )
    return from_records(rows)


def test_signals_in_unit_range_and_score_is_weighted_mean():
    df = score_frame(
        frame(["ok", "A longer answer.\n\n- one\n- two\n```py\nx = 1\n```", "x " * 500]), SelectConfig()
    )
    for col in ("score", *SIGNAL_COLUMNS):
        assert df[col].is_between(0.0, 1.0).all(), col
    w = SelectConfig().weights.model_dump()
    manual = sum(df[f"signal_{k}"] * v for k, v in w.items()) / sum(w.values())
    assert np.allclose(df["score"].to_numpy(), manual.to_numpy())


def test_each_signal_moves_the_right_way():
    clean = "Rayleigh scattering explains it.\n\nShort wavelengths scatter more than long ones in air."
    repeated = "the sky is blue\nthe sky is blue\nthe sky is blue\nthe sky is blue"
    formatted = "Steps:\n\n1. Mix\n2. Bake\n\n```python\nbake()\n```"
    df = score_frame(frame([clean, repeated, formatted, "No."]), SelectConfig())
    sig = {c: df[c].to_list() for c in SIGNAL_COLUMNS}
    assert sig["signal_repetition"][0] == 1.0 and sig["signal_repetition"][1] < 0.3
    assert sig["signal_diversity"][0] > sig["signal_diversity"][1]
    assert sig["signal_formatting"][2] == pytest.approx(0.85) and sig["signal_formatting"][3] == 0.0
    assert sig["signal_length"][0] > sig["signal_length"][3]


def test_complexity_rewards_cues_and_turns():
    plain = frame(["Sure."], prompt="Hi")
    cued = frame(["Sure."], prompt="Explain why and compare each step, with an example.")
    a, b = (score_frame(f, SelectConfig())["signal_complexity"][0] for f in (plain, cued))
    assert b > a + 0.3


def test_tier_values_and_weights_come_from_config():
    cfg = SelectConfig.model_validate(
        {
            "weights": {k: 0.0 for k in SelectConfig().weights.model_dump()} | {"tier": 1.0},
            "tier_values": {"synthetic": 0.25},
        }
    )
    df = pl.concat(
        [frame(["a b c"], source="x", tier="synthetic"), frame(["a b c d"], source="y", tier="expert")]
    )
    scored = score_frame(df, cfg)
    # Only the tier signal counts; expert is not in tier_values, so it gets 0.
    assert scored["score"].to_list() == [0.25, 0.0]


def test_all_zero_weights_rejected():
    with pytest.raises(ValueError, match="at least one signal weight"):
        SelectConfig.model_validate({"weights": {k: 0.0 for k in SelectConfig().weights.model_dump()}})


def random_answers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80))) for _ in range(n)]


@pytest.mark.parametrize("rule", [{"top_n": 7}, {"top_fraction": 0.25}, {"top_n": 30, "top_fraction": 0.5}])
def test_top_selection_keeps_highest_scores_per_source(rule):
    df = pl.concat(
        [frame(random_answers(40, 1), source="a"), frame(random_answers(24, 2), source="b", tier="synthetic")]
    )
    cfg = SelectConfig(enabled=True, **rule)
    out = select(score_frame(df, cfg), cfg, seed=0)
    for source, n in (("a", 40), ("b", 24)):
        part = out.filter(pl.col("source") == source)
        expected = quota(n, rule.get("top_n"), rule.get("top_fraction"))
        kept, dropped = part.filter("_selected"), part.filter(~pl.col("_selected"))
        assert kept.height == expected
        assert kept["score"].min() >= dropped["score"].max()
        assert dropped["_select_detail"].str.contains(f"below the top {expected} of source '{source}'").all()


def test_per_source_override_and_quota_rounding():
    assert quota(10, None, 0.25) == 3 and quota(10, 2, 0.5) == 2 and quota(10, None, None) == 10
    df = pl.concat([frame(random_answers(10, 3), source="a"), frame(random_answers(10, 4), source="b")])
    cfg = SelectConfig.model_validate({"enabled": True, "top_n": 5, "sources": {"b": {"top_n": 2}}})
    out = select(score_frame(df, cfg), cfg, seed=0)
    assert dict(out.filter("_selected").group_by("source").len().iter_rows()) == {"a": 5, "b": 2}


def test_selection_off_selects_all():
    df = frame(random_answers(5, 5))
    out = select(score_frame(df, SelectConfig(top_n=1)), SelectConfig(top_n=1), seed=0)
    assert out["_selected"].all()


def near_copies(n_base: int, copies: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_base):
        base = [rng.choice(WORDS) + str(rng.randint(0, 50)) for _ in range(120)]
        out.append(" ".join(base))
        for _ in range(copies):
            edit = list(base)
            edit[rng.randrange(len(edit))] = "changed"
            out.append(" ".join(edit))
    return out


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_diversify_never_keeps_two_near_copies(threshold):
    df = frame(near_copies(12, 3, seed=11))
    cfg = SelectConfig(enabled=True, diversify_threshold=threshold)
    out = select(score_frame(df, cfg), cfg, seed=0)
    sigs = minhash_signatures(df, cfg.num_perm, cfg.shingle_words, seed=0)
    kept = np.flatnonzero(out["_selected"].to_numpy())
    for i in kept:
        for j in kept:
            if i < j:
                assert (sigs[i] == sigs[j]).mean() < threshold
    # One survivor per family of near copies (the families themselves are far apart).
    assert len(kept) == 12
    assert out.filter(~pl.col("_selected"))["_select_detail"].str.contains("too close to").all()


@given(st.integers(16, 512), st.floats(0.05, 1.0))
def test_band_layout_guarantees_a_shared_band(num_perm, threshold):
    bands, rows = band_layout(num_perm, threshold)
    assert bands * rows <= num_perm
    # Signatures agreeing on >= threshold * num_perm positions differ in at most this many:
    max_diff = num_perm - math.ceil(threshold * num_perm - 1e-9)
    assert bands > max_diff


def test_greedy_diverse_checks_against_kept_only():
    sigs = np.array([[1, 2, 3, 4], [1, 2, 3, 9], [7, 8, 9, 10], [1, 2, 3, 4]], dtype=np.uint64)
    kept, near = greedy_diverse(np.arange(4), ["s"] * 4, {"s": 4}, sigs, 0.75)
    assert kept.tolist() == [True, False, True, False] and near.tolist() == [-1, 0, -1, 0]


def test_selection_is_deterministic_with_ties():
    df = frame(["same answer"] * 1 + random_answers(20, 9))
    df = pl.concat([df, df.with_columns(pl.format("{}-b", "origin").alias("origin"))])
    cfg = SelectConfig(enabled=True, top_n=10, diversify_threshold=0.9)
    a = select(score_frame(df, cfg), cfg, seed=1)
    b = select(score_frame(df.reverse(), cfg), cfg, seed=1).reverse()
    assert (
        a["origin"].filter(a["_selected"]).sort().to_list()
        == b["origin"].filter(b["_selected"]).sort().to_list()
    )
