"""End to end: the curate-and-train flow on tiny sources; every stage's counts reconcile; re-runs
skip unchanged stages and re-run exactly the stages whose inputs or settings changed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
import pytest
from conftest import REPO, PrefectServer, TinySources, write_config

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _rows(files: list[Path]) -> int:
    from pipeline.core.parts import read_part

    return sum(read_part(f).height for f in files)


def _task_states(flow_run_id: UUID) -> dict[str, str]:
    """Task name (task_key without the hash) -> state name, for one flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # Task runs and their states reach the server as events, after the flow returns: poll until every
    # stage's task run is there and every task run has a final state (a bounded wait for delivery on a
    # loaded machine, not a limit on how fast anything runs).
    from flows.stages import STAGES

    def name(r: Any) -> str:  # run names are "<task>-<3 hex>", except the per-source "ingest-<source>"
        return r.name if r.name.startswith("ingest-") else r.name.rsplit("-", 1)[0]

    expected = {n for n in STAGES if n != "ingest"} | {"finalize-ledger", "build-report"}
    with get_client(sync_client=True) as client:
        for _ in range(240):
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if expected <= {name(r) for r in runs} and all(r.state is not None and r.state.is_final() for r in runs):
                break
            time.sleep(0.25)
    return {name(r): r.state.name if r.state else "None" for r in runs}


def _run(flow: Any, config: Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    state = flow(config=str(config), overrides=overrides or [], return_state=True)
    assert state.is_completed(), state
    result = state.result()
    result["flow_run_id"] = state.state_details.flow_run_id
    return result, _task_states(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_sources: TinySources,
            prefect_server: PrefectServer) -> tuple[Path, Path, dict[str, Any]]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.curate import curate_and_train

    tmp = tmp_path_factory.mktemp("flow")
    cfg = write_config(tmp / "run.toml", tiny_sources.sources, tmp / "run",
                       sections={"train": {"save_initial_model": True}, "before_after": {"enabled": True}})
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
        result, _ = _run(curate_and_train, cfg)
    return cfg, tmp / "run", result


def assert_stages_reconcile(rd: Path, result: dict[str, Any]) -> None:
    """Each stage's output rows = its input rows - the ledger rows it wrote; the ledger holds every
    origin read exactly once; what is in the shards is what the ledger calls kept."""
    ledger = pl.concat([pl.read_parquet(p) for p in sorted((rd / "ledger").glob("*.parquet"))])
    assert result["records_read"] == ledger.height == ledger["origin"].n_unique()
    stage_drops = {s: ledger.filter((pl.col("stage") == s) & (pl.col("outcome") != "kept")).height
                   for s in ("ingest", "dedup", "quality", "mix", "tokenize")}
    ingest_parts = sorted((rd / "work" / "ingest").glob("*/part-*.parquet"))
    ingest_stats = result["stats"]["ingest"]
    assert sum(s["read"] for s in ingest_stats) == result["records_read"]
    assert _rows(ingest_parts) == sum(s["kept"] for s in ingest_stats) == result["records_read"] - stage_drops["ingest"]
    assert sum(s["quarantined"] for s in ingest_stats) == result["counts"]["quarantined"]
    dedup_rows = _rows(sorted((rd / "work" / "dedup").glob("part-*.parquet")))
    quality_rows = _rows(sorted((rd / "work" / "quality").glob("part-*.parquet")))
    encoded_rows = _rows(sorted((rd / "work" / "encode").glob("part-*.arrow")))
    curated_rows = _rows(sorted((rd / "curated").glob("*.parquet")))
    assert dedup_rows == _rows(ingest_parts) - stage_drops["dedup"]
    assert quality_rows == dedup_rows - stage_drops["quality"]
    assert encoded_rows == quality_rows - stage_drops["tokenize"]  # encode runs before the mix
    assert curated_rows == encoded_rows - stage_drops["mix"]
    shard_ids = pl.concat([pl.read_parquet(p, columns=["conversation_ids"]) for p in sorted((rd / "shards").glob("*.parquet"))])
    in_shards = shard_ids["conversation_ids"].explode().n_unique()
    assert in_shards == curated_rows == result["counts"]["kept"]  # curated/ holds exactly the kept
    report = json.loads((rd / "report" / "report.json").read_text())
    assert report["totals"]["read"] == result["records_read"] and report["totals"]["kept"] == result["counts"]["kept"]
    for row in report["funnel"]:
        assert row["read"] == sum(v for k, v in row.items() if k not in ("source", "tier", "read"))


def test_every_stage_reconciles_and_the_model_is_trained(trained: tuple[Path, Path, dict[str, Any]],
                                                         tiny_sources: TinySources) -> None:
    _, rd, result = trained
    assert_stages_reconcile(rd, result)
    assert result["records_read"] == tiny_sources.records
    assert result["counts"]["quarantined"] >= tiny_sources.bad_records
    dedup = pl.read_parquet(rd / "ledger" / "dedup.parquet")
    assert dedup.height >= 2  # the two expert conversations copied into the ShareGPT source
    manifest = json.loads((rd / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == result["counts"]["kept"]

    report = json.loads((rd / "report" / "report.json").read_text())
    assert report["training"]["curves"]["loss"] and report["training"]["eval"]
    assert result["trained"] and (rd / "model" / "config.json").is_file()
    assert (rd / "train" / "metrics.jsonl").is_file()
    assert result["before_after"] and report["before_after"]
    assert "<polyline" in (rd / "report" / "report.html").read_text()


def test_rerun_skips_unchanged_stages_and_reruns_changed_ones(trained: tuple[Path, Path, dict[str, Any]],
                                                              server_settings: PrefectServer) -> None:
    from flows.curate import curate, curate_and_train

    cfg, rd, first = trained
    cached = ("ingest-expert_chat", "ingest-crowd_sharegpt", "ingest-synth_alpaca", "dedup", "quality", "encode", "mix",
              "pack")
    again, states = _run(curate_and_train, cfg)
    assert all(states[t] == "Cached" for t in (*cached, "train")), states
    assert again["counts"] == first["counts"]

    # Deleted outputs are not trusted from the cache: pack runs again, upstream stays cached.
    shutil.rmtree(rd / "shards")
    _, states = _run(curate, cfg)
    assert states["pack"] == "Completed" and states["mix"] == "Cached" and states["encode"] == "Cached", states
    assert states["dedup"] == "Cached", states
    assert list((rd / "shards").glob("train-*.parquet"))

    # A different template: encode renders again, and what reads its output; ingest..quality do not.
    _, states = _run(curate, cfg, ["template.name=llama3"])
    assert states["encode"] == "Completed" and states["pack"] == "Completed", states
    assert states["quality"] == "Cached" and states["ingest-expert_chat"] == "Cached", states
    stats = json.loads((rd / "work" / "encode" / "stats.json").read_text())
    assert stats["template"] == "llama3"


def test_nproc_2_trains_under_torchrun_and_streams_its_output(trained: tuple[Path, Path, dict[str, Any]],
                                                              server_settings: PrefectServer) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.curate import curate_and_train

    cfg, rd, _ = trained
    result, states = _run(curate_and_train, cfg, ["train.nproc=2", "train.max_steps=1", "before_after.enabled=false"])
    assert states["train"] == "Completed" and states["ingest-expert_chat"] == "Cached", states
    assert result["trained"] and result["train"]["nproc"] == 2
    # Logs reach the server in batches, after the flow returns: poll until the trainer's last line
    # has arrived (a bounded wait for delivery, not a limit on how fast anything runs).
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[result["flow_run_id"]]))
    with get_client(sync_client=True) as client:
        for _ in range(60):
            text = "\n".join(log.message for log in client.read_logs(log_filter=log_filter))
            if "step 1/1" in text:
                break
            time.sleep(0.5)
    assert "launching" in text and "torch.distributed.run" in text and "--nproc-per-node=2" in text
    assert "step 1/1" in text  # a trainer progress line, streamed from the torchrun worker
    metrics = [json.loads(line) for line in (rd / "train" / "metrics.jsonl").read_text().splitlines() if line]
    assert metrics[-1]["step"] == 1


def test_sftforge_train_retrains_an_existing_run(trained: tuple[Path, Path, dict[str, Any]]) -> None:
    from flows.cli import main

    cfg, rd, _ = trained
    assert main(["train", str(cfg), "--set", "train.max_steps=1"]) == 0
    metrics = [json.loads(line) for line in (rd / "train" / "metrics.jsonl").read_text().splitlines() if line]
    assert metrics[-1]["step"] == 1 and (rd / "model" / "config.json").is_file()


def test_the_bundled_sample_data_reconciles(tmp_path: Path, server_settings: PrefectServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/demo.toml (data/raw) curated end to end: every stage's counts add up."""
    from flows.curate import curate

    monkeypatch.chdir(REPO)  # the demo config's source paths are relative to the repository root
    result, _ = _run(curate, REPO / "configs" / "demo.toml", [f"output_dir={tmp_path / 'demo'}"])
    assert_stages_reconcile(tmp_path / "demo", result)
    assert result["counts"]["quarantined"] > 0 and result["counts"]["dropped"] > 0 and result["counts"]["kept"] > 0
    assert {s["source"] for s in result["stats"]["ingest"]} == {"expert", "tools", "sharegpt", "oasst", "alpaca"}
    # the tool-calling source keeps its tools, calls and results through to curated/ and the shards
    curated = pl.read_parquet(tmp_path / "demo" / "curated").filter(pl.col("source") == "tools")
    assert curated.height == 12 and curated["tools"].null_count() == 0
    roles = curated["messages"].explode().struct.field("role")
    calls = curated["messages"].explode().struct.field("tool_calls").drop_nulls()
    assert (roles == "tool").sum() >= 12 and calls.list.len().sum() >= 12
