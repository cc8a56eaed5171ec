"""The source mixture: weights, caps and shares hit their targets; every left-out row is in the ledger."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.ledger import read_ledger
from pipeline.ingest.canonical import from_records
from pipeline.mix.plan import copies_for_weight, first_fit, solve_share_budgets
from pipeline.mix.stage import estimate_tokens, run_mix, training_tokens
from schemas.config import ConfigError, RunConfig
from schemas.conversation import conversation_id

TIERS = {"exp": "expert", "crowd": "crowdsourced", "syn": "synthetic"}


def make_frame(counts: dict[str, int], lang: bool = True) -> pl.DataFrame:
    rows = []
    for source, n in counts.items():
        for i in range(n):
            msgs = [
                {"role": "user", "content": f"Question {i} from {source}: explain item {i * 7}."},
                {"role": "assistant", "content": f"Answer {i} of {source}. " + "word " * (i % 13 + 1)},
            ]
            rows.append(
                {
                    "conversation_id": conversation_id(msgs),
                    "origin": f"{source}:{i + 1}",
                    "source": source,
                    "tier": TIERS[source],
                    "messages": msgs,
                }
            )
    df = from_records(rows)
    return df.with_columns(pl.lit("en").alias("lang")) if lang else df


def make_cfg(tmp_path: Path, **sections) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "t",
            "output_dir": str(tmp_path),
            "sources": [{"name": s, "path": f"{s}.jsonl", "tier": t} for s, t in TIERS.items()],
            **sections,
        }
    )


def flat_counter(tokens: int = 100):
    """Every conversation renders to `tokens` tokens: targets can be computed by hand."""

    def count(df: pl.DataFrame, run_dir: Path, cfg: RunConfig) -> pl.Series:
        return pl.Series([tokens] * df.height)

    return count


def mix(
    tmp_path: Path, df: pl.DataFrame, counter=None, **sections
) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    run_dir = tmp_path / "run"
    src = tmp_path / "in" / "part-00000.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(src)
    cfg = make_cfg(run_dir, **sections)
    encoded = None
    if counter is not None:  # the encode stage's exact counts, as its parts carry them
        encoded = [tmp_path / "enc" / "part-00000.parquet"]
        encoded[0].parent.mkdir(parents=True, exist_ok=True)
        df.select("origin").with_columns(counter(df, run_dir, cfg).cast(pl.Int64).alias("tokens")).write_parquet(encoded[0])
    stats = run_mix([src], run_dir, cfg, encoded=encoded)
    curated = pl.concat([pl.read_parquet(p) for p in sorted((run_dir / "curated").glob("part-*.parquet"))])
    return stats, curated, read_ledger(run_dir)


def accounted(df: pl.DataFrame, curated: pl.DataFrame, ledger: pl.DataFrame) -> None:
    assert curated.height + ledger.height == df.height
    assert set(curated["origin"]) | set(ledger["origin"]) == set(df["origin"])
    assert set(curated["origin"]).isdisjoint(ledger["origin"])


def test_passthrough_keeps_everything_once_with_score_and_extra_columns(tmp_path):
    df = make_frame({"exp": 5, "crowd": 7, "syn": 9})
    stats, curated, ledger = mix(tmp_path, df)
    assert curated.height == 21 and ledger.height == 0
    assert curated["repeat"].dtype == pl.Int32 and curated["repeat"].to_list() == [1] * 21
    assert curated["lang"].to_list() == ["en"] * 21
    assert curated["score"].is_between(0, 1).all()
    assert {"signal_length", "signal_tier", "signal_repetition"} <= set(curated.columns)
    assert stats.before["total"] == stats.after["total"]
    assert stats.token_counter.startswith("estimate")


def test_weight_three_repeats_every_conversation(tmp_path):
    df = make_frame({"exp": 10, "syn": 10})
    stats, curated, _ = mix(tmp_path, df, flat_counter(), mix={"tiers": {"expert": {"weight": 3}}})
    reps = dict(curated.group_by("source").agg(pl.col("repeat").unique()).iter_rows())
    assert reps == {"exp": [3], "syn": [1]}
    assert stats.after["sources"]["exp"]["tokens"] == 3000
    assert stats.after["sources"]["exp"]["share"] == pytest.approx(0.75)


def test_fractional_weights_sample_by_hash_and_ledger_the_rest(tmp_path):
    df = make_frame({"exp": 400, "syn": 400})
    cfg = {"mix": {"sources": {"syn": {"weight": 0.5}, "exp": {"weight": 1.5}}}}
    _, curated, ledger = mix(tmp_path, df, flat_counter(), **cfg)
    accounted(df, curated, ledger)
    syn = curated.filter(pl.col("source") == "syn")
    assert 150 < syn.height < 250 and syn["repeat"].unique().to_list() == [1]
    exp = curated.filter(pl.col("source") == "exp")
    assert exp.height == 400 and set(exp["repeat"]) == {1, 2}
    assert 150 < (exp["repeat"] == 2).sum() < 250
    assert set(ledger["reason"]) == {"mix.unselected"} and ledger["detail"].str.contains("weight 0.5").all()


def test_copies_for_weight_is_floor_plus_hash_fraction():
    import numpy as np

    keys = np.array([0.1, 0.6, 0.9])
    assert copies_for_weight(np.array([2.5, 2.5, 2.5]), keys).tolist() == [3, 2, 2]
    assert copies_for_weight(np.array([0.0, 1.0, 3.0]), keys).tolist() == [0, 1, 3]


def test_conversation_cap_exact(tmp_path):
    df = make_frame({"exp": 30, "syn": 50})
    _, curated, ledger = mix(
        tmp_path, df, flat_counter(), mix={"tiers": {"synthetic": {"max_conversations": 12}}}
    )
    assert (curated["source"] == "syn").sum() == 12
    assert ledger.height == 38 and set(ledger["reason"]) == {"mix.capped"}
    assert ledger["detail"].str.contains("max_conversations 12").all()
    accounted(df, curated, ledger)


def test_cap_counts_repeats_and_tokens(tmp_path):
    df = make_frame({"exp": 30, "syn": 5})
    cfg = {"mix": {"sources": {"exp": {"weight": 2, "max_tokens": 2150}}}}
    stats, curated, _ = mix(tmp_path, df, flat_counter(), **cfg)
    # 2 copies × 100 tokens each: 10 conversations fit 2,150 tokens.
    assert (curated["source"] == "exp").sum() == 10
    assert stats.after["sources"]["exp"]["tokens"] == 2000


def test_cap_by_score_keeps_the_best(tmp_path):
    df = make_frame({"exp": 5, "syn": 60})
    cfg = {"mix": {"cap_order": "score", "sources": {"syn": {"max_conversations": 20}}}}
    _, curated, ledger = mix(tmp_path, df, flat_counter(), **cfg)
    kept = curated.filter(pl.col("source") == "syn")["score"]
    run_dir = tmp_path / "run"
    assert kept.len() == 20 and ledger.height == 40
    # Dropped ones were scored lower than every kept one: recompute through a pass-through run.
    _, all_rows, _ = mix(tmp_path / "again", df, flat_counter())
    dropped = all_rows.filter(pl.col("origin").is_in(ledger["origin"].implode()))["score"]
    assert kept.min() >= dropped.max()
    assert (run_dir / "work" / "mix" / "stats.json").exists()


def test_max_share_hits_exactly_with_upsampled_expert(tmp_path):
    df = make_frame({"exp": 100, "crowd": 100, "syn": 500})
    cfg = {"mix": {"tiers": {"expert": {"weight": 2}, "synthetic": {"max_share": 0.2}}}}
    stats, curated, ledger = mix(tmp_path, df, flat_counter(), **cfg)
    # Others: 200 expert examples + 100 crowd = 30,000 tokens = 80% → synthetic 7,500 = 75 conversations.
    assert (curated["source"] == "syn").sum() == 75
    assert stats.after["tiers"]["synthetic"]["share"] == pytest.approx(0.2)
    assert stats.share_targets == [
        {"rule": "mix.tiers.synthetic", "share": None, "max_share": 0.2, "result": pytest.approx(0.2)}
    ]
    assert ledger.height == 425 and ledger["detail"].str.contains("at most 20.0%").all()
    accounted(df, curated, ledger)


def test_max_share_not_binding_keeps_all(tmp_path):
    df = make_frame({"exp": 100, "syn": 10})
    stats, curated, ledger = mix(
        tmp_path, df, flat_counter(), mix={"tiers": {"synthetic": {"max_share": 0.5}}}
    )
    assert curated.height == 110 and ledger.height == 0


def test_exact_share_upsamples_a_short_source(tmp_path):
    df = make_frame({"exp": 10, "crowd": 100, "syn": 100})
    cfg = {"mix": {"sources": {"exp": {"share": 0.5}}}}
    stats, curated, _ = mix(tmp_path, df, flat_counter(), **cfg)
    # 20,000 other tokens → expert needs 20,000 = its 1,000 tokens ten times.
    assert curated.filter(pl.col("source") == "exp")["repeat"].to_list() == [20] * 10
    assert stats.after["sources"]["exp"]["share"] == pytest.approx(0.5)


def test_exact_share_partial_round_and_variable_lengths(tmp_path):
    df = make_frame({"exp": 37, "crowd": 200, "syn": 300})
    cfg = {"mix": {"sources": {"exp": {"share": 0.3}}, "tiers": {"synthetic": {"max_share": 0.1}}}}
    stats, curated, ledger = mix(tmp_path, df, None, **cfg)
    after = stats.after["sources"]
    assert abs(after["exp"]["share"] - 0.3) < 0.01
    assert after["syn"]["share"] <= 0.1 + 0.01 and after["syn"]["share"] > 0.09
    # Whole rounds for every conversation, one extra copy for some: copies differ by at most one.
    reps = curated.filter(pl.col("source") == "exp")["repeat"]
    assert reps.min() >= 2 and reps.max() - reps.min() == 1
    accounted(df, curated, ledger)


def test_solve_share_budgets_two_groups():
    # 600 free tokens; exact 25%, max 50% (binding: 10,000 available).
    total, budgets = solve_share_budgets(600.0, [50.0, 10_000.0], [0.25, None], [None, 0.5])
    assert total == pytest.approx(2400.0)
    assert budgets == pytest.approx([600.0, 1200.0])
    total, budgets = solve_share_budgets(600.0, [50.0, 10.0], [None, None], [0.5, 0.5])
    assert total == pytest.approx(660.0) and budgets == pytest.approx([50.0, 10.0])


def test_first_fit_fills_the_gap_with_smaller_items():
    import numpy as np

    costs = np.array([5.0, 4.0, 3.0, 1.0])
    taken = first_fit(np.arange(4), [costs], [10.0])
    assert taken.tolist() == [True, True, False, True]


def test_deterministic_and_independent_of_input_order(tmp_path):
    df = make_frame({"exp": 50, "crowd": 80, "syn": 200})
    cfg = {"seed": 7, "mix": {"tiers": {"synthetic": {"max_share": 0.2}, "crowdsourced": {"weight": 0.7}}}}
    _, a, la = mix(tmp_path / "a", df, None, **cfg)
    _, b, lb = mix(tmp_path / "b", df, None, **cfg)
    _, c, lc = mix(tmp_path / "c", df.sample(fraction=1.0, shuffle=True, seed=3), None, **cfg)
    assert a.equals(b) and la.equals(lb)
    key = ["origin", "repeat"]
    assert a.select(key).sort("origin").equals(c.select(key).sort("origin"))
    _, d, _ = mix(tmp_path / "d", df, None, **{**cfg, "seed": 8})
    assert set(d["origin"]) != set(a["origin"])


def test_rerun_replaces_curated_parts(tmp_path):
    df = make_frame({"exp": 20, "syn": 20})
    mix(tmp_path, df, None)
    _, curated, ledger = mix(
        tmp_path, df, flat_counter(), mix={"tiers": {"synthetic": {"max_conversations": 3}}}
    )
    assert curated.height == 23 and ledger.height == 17


def test_over_long_conversations_count_as_tokenize_will_treat_them(tmp_path):
    assert training_tokens(pl.Series([10, 50, 51]), 50, "drop").to_list() == [10, 50, 0]
    assert training_tokens(pl.Series([10, 50, 51]), 50, "truncate").to_list() == [10, 50, 50]

    def counter(df, run_dir, cfg):  # every other syn conversation is too long for max_seq_len 128
        return pl.Series(
            [
                1000 if s == "syn" and int(o.split(":")[1]) % 2 else 100
                for s, o in df.select("source", "origin").iter_rows()
            ]
        )

    df = make_frame({"exp": 80, "syn": 100})
    cfg = {"pack": {"max_seq_len": 128}, "mix": {"tiers": {"synthetic": {"max_share": 0.2}}}}
    stats, curated, _ = mix(tmp_path, df, counter, **cfg)
    assert stats.over_max_seq_len == 50
    assert stats.after["tiers"]["synthetic"]["share"] == pytest.approx(0.2)
    # 8,000 expert tokens = 80% → 2,000 synthetic tokens = 20 short ones, plus the long ones tokenize drops.
    syn = curated.filter(pl.col("source") == "syn")
    assert syn.height == 70


def test_estimate_tokens_counts_chars_and_messages():
    df = make_frame({"exp": 1}, lang=False)
    tokens, sup = estimate_tokens(df)
    chars = sum(len(m["content"]) for m in df["messages"][0])
    answer = len(df["messages"][0][1]["content"])
    assert tokens.to_list() == [-(-chars // 4) + 8]
    assert sup.to_list() == [-(-answer // 4) + 1]


def test_unknown_source_and_overlapping_shares_are_config_errors(tmp_path):
    df = make_frame({"exp": 3, "syn": 3})
    with pytest.raises(ConfigError, match="mix.sources.nope: no such source"):
        mix(tmp_path, df, None, mix={"sources": {"nope": {"weight": 2}}})
    with pytest.raises(ConfigError, match="both set a share for source 'syn'"):
        mix(
            tmp_path,
            df,
            None,
            mix={"sources": {"syn": {"share": 0.1}}, "tiers": {"synthetic": {"max_share": 0.2}}},
        )
    with pytest.raises(ConfigError, match="share rules cannot be met"):
        mix(tmp_path, make_frame({"syn": 5}), None, mix={"tiers": {"synthetic": {"max_share": 0.2}}})


@settings(max_examples=40, deadline=None)
@given(
    counts=st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 40)),
    syn_weight=st.sampled_from([0.0, 0.3, 1.0]),
    exp_weight=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    cap=st.one_of(st.none(), st.integers(0, 30)),
    max_share=st.one_of(st.none(), st.floats(0.05, 0.6)),
    seed=st.integers(0, 3),
)
def test_plan_invariants(counts, syn_weight, exp_weight, cap, max_share, seed):
    """Every conversation has one fate; caps and max shares hold; repeats only where weights ask."""
    import numpy as np

    from pipeline.mix.plan import plan_mix
    from schemas.config_mix import MixConfig

    df = make_frame(dict(zip(("exp", "crowd", "syn"), counts, strict=True)), lang=False)
    df = df.with_columns(
        pl.Series("_tokens", [10 + (i * 37) % 90 for i in range(df.height)]),
        pl.lit(0.5).alias("score"),
        pl.lit(True).alias("_selected"),
        pl.lit(None, dtype=pl.String).alias("_select_detail"),
    )
    tiers = {"expert": {"weight": exp_weight}, "synthetic": {"weight": syn_weight, "max_conversations": cap}}
    if max_share is not None:
        tiers["crowdsourced"] = {"max_share": max_share}
    try:
        out = plan_mix(df, MixConfig.model_validate({"tiers": tiers}), TIERS, seed)
    except ConfigError:
        assert max_share is not None  # only an unreachable share may refuse
        return
    kept = out.filter(pl.col("repeat") > 0)
    left = out.filter(pl.col("repeat") == 0)
    assert left["_reason"].is_in(["mix.capped", "mix.unselected"]).all() and kept["_reason"].is_null().all()
    assert set(kept.filter(pl.col("source") != "exp")["repeat"]) <= {1}
    assert set(kept.filter(pl.col("source") == "exp")["repeat"]) <= {
        int(np.floor(exp_weight)),
        int(np.ceil(exp_weight)),
    }
    syn = kept.filter(pl.col("source") == "syn")
    if cap is not None:
        assert syn.height <= cap
    if max_share is not None and kept.height:
        tokens = kept.select(pl.col("repeat") * pl.col("_tokens")).to_series()
        crowd = tokens.filter(kept["source"] == "crowd").sum()
        assert crowd <= max_share * tokens.sum() + 1e-6


def test_conversations_the_encode_stage_dropped_take_no_part(tmp_path):
    """Only encoded conversations are mixed: one dropped at encode (its ledger row is the encode
    stage's) is neither curated nor given a mix row."""
    df = make_frame({"exp": 6, "syn": 6})
    dropped = set(df["origin"].to_list()[::3])

    def counter(frame, run_dir, cfg):
        return pl.Series([100] * frame.height)

    run_dir = tmp_path / "run"
    src = tmp_path / "in" / "part-00000.parquet"
    src.parent.mkdir(parents=True)
    df.write_parquet(src)
    enc = tmp_path / "enc.parquet"
    df.filter(~pl.col("origin").is_in(list(dropped))).select("origin", pl.lit(100, dtype=pl.Int64).alias("tokens")).write_parquet(enc)
    stats = run_mix([src], run_dir, make_cfg(run_dir), encoded=[enc])
    curated = pl.read_parquet(run_dir / "curated" / "part-00000.parquet")
    assert set(curated["origin"]) == set(df["origin"]) - dropped and stats.records_in == df.height - len(dropped)
    assert read_ledger(run_dir).height == 0 and stats.token_counter.startswith("encoded tokens")
