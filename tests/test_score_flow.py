"""End to end: `curate-and-train` with a local reference model scores every conversation, selects
by IFD, runs the proxy ablation, and the report shows the selection; the counts still reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import PrefectServer, TinySources, write_config
from score_fixtures import make_reference
from test_flow import _run, assert_stages_reconcile

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_a_run_with_a_reference_model_selects_by_its_scores(tmp_path: Path, tiny_sources: TinySources,
                                                            server_settings: PrefectServer) -> None:
    from flows.curate import curate_and_train

    ref = make_reference(tmp_path / "ref")
    sections = {
        "select": {"reference_model": str(ref), "score": "ifd", "enabled": True, "top_fraction": 0.6,
                   "ifd_above_one": "down_weight", "quota_by": "tokens"},
        "ablation": {"enabled": True, "max_tokens": 600, "batch_tokens": 128, "epochs": 1, "hidden_size": 16,
                     "num_layers": 1, "num_heads": 2, "num_prompts": 1, "max_new_tokens": 4},
    }  # fmt: skip
    cfg = write_config(tmp_path / "run.toml", tiny_sources.sources, tmp_path / "run", sections=sections)
    result, tasks = _run(curate_and_train, cfg)
    rd = tmp_path / "run"
    assert_stages_reconcile(rd, result)
    assert result["trained"] and tasks["score"] == "Completed" and tasks["ablation"] == "Completed"
    score = result["stats"]["score"]
    assert score["scored"] > 0 and score["unscored"] == 0 and score["reference_model"] == str(ref)
    curated = pl.concat([pl.read_parquet(p) for p in sorted((rd / "curated").glob("part-*.parquet"))])
    assert curated["ifd"].null_count() == 0 and "score_heuristic" in curated.columns
    ledger = pl.concat([pl.read_parquet(p) for p in (rd / "ledger").glob("*.parquet")])
    assert ledger.filter(pl.col("reason") == "mix.unselected").height > 0
    report = json.loads((rd / "report" / "report.json").read_text())
    sel = report["selection"]
    assert {"score", "ifd", "ref_ppl"} <= set(sel["distributions"]) and sel["margin"]
    assert set(sel["ablation"]["arms"]) >= {"selection", "random"}
    html = (rd / "report" / "report.html").read_text()
    assert "proxy ablation" in html and "margin of the cut" in html

    # a second run: every stage cached, the scores too
    again, tasks2 = _run(curate_and_train, cfg)
    assert tasks2["score"] == "Cached" and tasks2["ablation"] == "Cached"
    # a new selection setting re-runs the score stage, which finds every conversation in its cache
    third, _ = _run(curate_and_train, cfg, ["select.top_fraction=0.5"])
    assert third["stats"]["score"]["scored"] == 0 and third["stats"]["score"]["cached"] == score["records_in"]
