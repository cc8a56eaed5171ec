"""Tiers: the expert tier is dropped only by hard rules unless the config says otherwise, the spared
verdicts are recorded, and each tier can set thresholds of its own."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError
from test_quality_filters import frame

from pipeline.quality.names import FILTER_NAMES, HARD_RULES, HEURISTIC_RULES
from pipeline.quality.stage import filter_frame
from schemas.config_curation import QualityConfig

LOOP = " ".join(["The meeting was moved to Thursday afternoon at three o'clock sharp."] * 12)
PAIRS = [
    ("Who will win?", "As an AI language model, I cannot provide personal opinions about this topic."),  # refusal
    ("Summarise the minutes.", LOOP),  # repetition
    ("Hi", ""),  # empty: a hard rule
    ("Explique por qué el cielo es azul, por favor.",
     "La luz del sol se dispersa en la atmósfera y la luz azul se dispersa mucho más que la roja."),  # language
    ("What is the capital of France?", "The capital of France is Paris, which is also its largest city."),
]


def tiered(tier: str) -> pl.DataFrame:
    return frame(PAIRS).with_columns(pl.lit(tier).alias("tier"))


def test_rule_sets_cover_every_filter() -> None:
    assert set(FILTER_NAMES) == HARD_RULES | HEURISTIC_RULES and not HARD_RULES & HEURISTIC_RULES
    assert FILTER_NAMES[0] == "contamination"


def test_expert_tier_is_dropped_only_by_hard_rules_and_flags_the_rest() -> None:
    res = filter_frame(tiered("expert"), QualityConfig(workers=1))
    assert sorted(res.dropped["reason"].to_list()) == ["quality.empty", "quality.language"]
    flags = dict(res.kept.select("origin", "quality_flags").iter_rows())
    assert flags == {"t:1": ["refusal"], "t:2": ["repetition"], "t:5": []}
    assert res.filters["refusal"]["spared"] == {"expert": 1} and res.filters["repetition"]["spared"] == {"expert": 1}


def test_other_tiers_and_expert_on_request_are_dropped_by_heuristics() -> None:
    want = ["quality.empty", "quality.language", "quality.refusal", "quality.repetition"]
    assert sorted(filter_frame(tiered("synthetic"), QualityConfig(workers=1)).dropped["reason"].to_list()) == want
    on = QualityConfig(workers=1, tiers={"expert": {"heuristics": True}})
    assert sorted(filter_frame(tiered("expert"), on).dropped["reason"].to_list()) == want
    off = QualityConfig(workers=1, tiers={"crowdsourced": {"heuristics": False}})
    assert filter_frame(tiered("crowdsourced"), off).kept.height == 3


def test_per_tier_thresholds() -> None:
    df = pl.concat([tiered("synthetic"), tiered("crowdsourced").with_columns(pl.col("origin") + "c")])
    cfg = QualityConfig(workers=1, tiers={"crowdsourced": {"max_dup_10gram_frac": 1.0, "max_dup_5gram_frac": 1.0,
                                                           "max_top_2gram_frac": 9, "max_top_3gram_frac": 9,
                                                           "max_top_4gram_frac": 9}})
    res = filter_frame(df, cfg)
    rep = res.dropped.filter(pl.col("reason") == "quality.repetition")
    assert rep["tier"].to_list() == ["synthetic"]
    assert cfg.for_tier("crowdsourced").max_dup_10gram_frac == 1.0 and cfg.for_tier("synthetic") is cfg


def test_tier_config_errors_name_the_key() -> None:
    with pytest.raises(ValidationError, match=r"quality.tiers.expert: unknown key\(s\) \['max_dup'\]"):
        QualityConfig(tiers={"expert": {"max_dup": 0.5}})
    with pytest.raises(ValidationError, match=r"quality.tiers.synthetic.max_dup_line_frac: Input should be less than or equal to 1 \(got 3\)"):
        QualityConfig(tiers={"synthetic": {"max_dup_line_frac": 3}})
