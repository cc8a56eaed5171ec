"""Selection by the reference model's scores (pipeline.mix.model_scores) inside the mix stage: the
configured score ranks, IFD > 1 is dropped or down-weighted with its own reason, selection is
deterministic, and selecting by tokens keeps every source's and tier's share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import xxhash
from test_mix import accounted, make_cfg, make_frame

from pipeline.core.ledger import read_ledger
from pipeline.mix.stage import run_mix, shares_within
from schemas.config import ConfigError, load_config


def fake_scores(df: pl.DataFrame) -> pl.DataFrame:
    """Reference scores that are a fixed function of the conversation: IFD in [0.2, 1.3)."""
    u = np.array([xxhash.xxh64_intdigest(c.encode()) / 2**64 for c in df["conversation_id"]])
    alone = 2.0 + u
    ifd = 0.2 + 1.1 * ((u * 7919) % 1.0)
    loss = ifd * alone
    return pl.DataFrame({
        "conversation_id": df["conversation_id"], "origin": df["origin"], "ref_loss": loss,
        "ref_loss_alone": alone, "ref_ppl": np.exp(loss), "ifd": ifd, "ref_targets": [10] * df.height,
    })  # fmt: skip


def run(tmp_path: Path, df: pl.DataFrame, tokens: pl.Series | None = None, **sections):
    run_dir = tmp_path / "run"
    src = tmp_path / "in" / "part-00000.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(src)
    sc = tmp_path / "score" / "part-00000.parquet"
    sc.parent.mkdir(parents=True, exist_ok=True)
    fake_scores(df).write_parquet(sc)
    enc = None
    if tokens is not None:
        enc = [tmp_path / "enc" / "part-00000.parquet"]
        enc[0].parent.mkdir(parents=True, exist_ok=True)
        df.select("origin").with_columns(tokens.cast(pl.Int64).alias("tokens")).write_parquet(enc[0])
    sections.setdefault("select", {}).setdefault("reference_model", str(tmp_path))
    cfg = make_cfg(run_dir, **sections)
    stats = run_mix([src], run_dir, cfg, encoded=enc, scores=[sc])
    curated = pl.read_parquet(run_dir / "curated" / "part-00000.parquet")
    return stats, curated, read_ledger(run_dir)


def test_ifd_score_keeps_the_top_ifd_per_source(tmp_path: Path) -> None:
    df = make_frame({"exp": 20, "crowd": 30, "syn": 40})
    _, cur, led = run(tmp_path, df, select={"enabled": True, "top_n": 5, "score": "ifd"})
    accounted(df, cur, led)
    assert cur.height == 15
    sc = fake_scores(df).join(df.select("origin", "source"), on="origin")
    for source, group in sc.group_by("source"):
        best = group.with_columns(pl.col("ifd").clip(0, 1)).sort("ifd", descending=True)
        kept = cur.filter(pl.col("source") == source[0])
        assert kept["ifd"].clip(0, 1).min() >= best["ifd"].clip(0, 1)[4] - 1e-12
    # curated holds the model scores beside the heuristic signals
    assert {"score_heuristic", "ref_loss", "ref_loss_alone", "ref_ppl", "ifd", "signal_length"} <= set(cur.columns)
    assert np.allclose(cur["score"], cur["ifd"].clip(0, 1))


def test_ifd_above_one_drop_has_its_own_reason(tmp_path: Path) -> None:
    df = make_frame({"exp": 30, "crowd": 30, "syn": 30})
    _, cur, led = run(tmp_path, df, select={"ifd_above_one": "drop"})
    accounted(df, cur, led)
    assert cur["ifd"].max() <= 1.0
    above = fake_scores(df).filter(pl.col("ifd") > 1)
    assert above.height > 0
    dropped = led.filter(pl.col("reason") == "mix.ifd_above_one")
    assert set(dropped["origin"]) == set(above["origin"]) and dropped["detail"].str.contains("IFD").all()


def test_down_weight_ranks_ifd_above_one_last(tmp_path: Path) -> None:
    df = make_frame({"exp": 40})
    _, cur, _ = run(tmp_path, df, select={"ifd_above_one": "down_weight", "ifd_penalty": 0.0,
                                          "score": {"heuristic": 1, "ifd": 1}})  # fmt: skip
    assert (cur.filter(pl.col("ifd") > 1)["score"] == 0).all()
    mixed = 0.5 * cur["score_heuristic"] + 0.5 * cur["ifd"].clip(0, 1)
    ok = cur["ifd"] <= 1
    assert np.allclose(cur.filter(ok)["score"], mixed.filter(ok))


def test_perplexity_score_prefers_low_perplexity(tmp_path: Path) -> None:
    df = make_frame({"exp": 30})
    _, cur, _ = run(tmp_path, df, select={"enabled": True, "top_fraction": 0.2, "score": "perplexity"})
    best = fake_scores(df).sort("ref_ppl")["origin"].head(6)
    assert set(cur["origin"]) == set(best)


def test_selection_by_model_scores_is_deterministic(tmp_path: Path) -> None:
    df = make_frame({"exp": 25, "crowd": 40, "syn": 60})
    sel = {"enabled": True, "top_fraction": 0.5, "score": {"heuristic": 1, "ifd": 2}, "diversify_threshold": 0.8}
    _, a, la = run(tmp_path / "a", df, select=dict(sel))
    _, b, lb = run(tmp_path / "b", df.sample(fraction=1.0, shuffle=True, seed=5), select=dict(sel))
    assert a.sort("origin").equals(b.sort("origin"))
    assert la.sort("origin").equals(lb.sort("origin"))


def test_selecting_by_tokens_keeps_every_share(tmp_path: Path) -> None:
    df = make_frame({"exp": 60, "crowd": 90, "syn": 150})
    tokens = pl.Series([40 + (i * 37) % 200 for i in range(df.height)])
    stats, cur, _ = run(tmp_path, df, tokens, select={"enabled": True, "top_fraction": 0.4, "quota_by": "tokens",
                                                      "score": "ifd"})  # fmt: skip
    before, after = stats.before, stats.after
    biggest = 240
    for key in ("sources", "tiers"):
        for name, b in before[key].items():
            a = after[key][name]
            assert abs(a["tokens"] - 0.4 * b["tokens"]) <= biggest  # within one conversation of its budget
            assert a["share"] == pytest.approx(b["share"], abs=0.01)
    # and [mix] share rules still hold after selection
    stats2, _, _ = run(tmp_path / "m", df, tokens,
                       select={"enabled": True, "top_fraction": 0.4, "quota_by": "tokens", "score": "ifd"},
                       mix={"tiers": {"synthetic": {"share": 0.3}, "expert": {"max_share": 0.25}}})  # fmt: skip
    assert shares_within(stats2, points=1.0)


def test_model_scores_need_a_reference_model(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="reference_model"):
        make_cfg(tmp_path, select={"score": "ifd"})
    with pytest.raises(Exception, match="unknown score"):
        make_cfg(tmp_path, select={"score": "vibes", "reference_model": "x"})
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "t"\noutput_dir = "o"\n[[sources]]\nname = "a"\npath = "a.jsonl"\n[select]\nscore = "ifd"\n')
    with pytest.raises(ConfigError, match="select"):
        load_config(bad)
