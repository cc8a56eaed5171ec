"""runner.kind = "dask": the mapped tasks run on a two-worker local Dask cluster and the run directory
holds exactly what the default thread pool produces."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest
from conftest import PrefectServer, TinySources, write_config

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _frame(files: list[Path], sort: list[str]) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in files]).sort(sort)


def _flow_logs(flow_run_id: object, expect: str) -> str:
    """The flow run's log, once `expect` has arrived: logs reach the server in batches."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        for _ in range(60):
            text = "\n".join(log.message for log in client.read_logs(log_filter=log_filter))
            if expect in text:
                break
            time.sleep(0.5)
    return text


def test_dask_runner_gives_the_same_run_directory(tmp_path: Path, tiny_sources: TinySources,
                                                  server_settings: PrefectServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.curate import curate

    # Dask workers are new processes: they find the server through the environment they inherit.
    monkeypatch.setenv("PREFECT_API_URL", server_settings.url)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # dask-scratch-space
    runs = {}
    for kind in ("thread", "dask"):
        cfg = write_config(tmp_path / f"{kind}.toml", tiny_sources.sources, tmp_path / kind,
                           sections={"runner": {"kind": kind, "n_workers": 2}})
        state = curate(config=str(cfg), return_state=True)
        assert state.is_completed(), state
        runs[kind] = (tmp_path / kind, state.result(), _flow_logs(state.state_details.flow_run_id,
                                                                    "worker(s)" if kind == "dask" else "thread pool"))

    (a, ra, _), (b, rb, dask_logs) = runs["thread"], runs["dask"]
    assert "on a local Dask cluster of 2 worker(s)" in dask_logs
    assert ra["counts"] == rb["counts"] and ra["records_read"] == rb["records_read"]
    for ingest_a, ingest_b in zip(ra["stats"]["ingest"], rb["stats"]["ingest"], strict=True):
        assert {k: v for k, v in ingest_a.items() if k not in ("parts", "files", "seconds", "records_per_s")} == \
               {k: v for k, v in ingest_b.items() if k not in ("parts", "files", "seconds", "records_per_s")}
    cols = ["origin", "stage", "outcome"]
    assert _frame(sorted((a / "ledger").glob("*.parquet")), cols).equals(_frame(sorted((b / "ledger").glob("*.parquet")), cols))
    assert _frame(sorted((a / "curated").glob("*.parquet")), ["origin"]).equals(
        _frame(sorted((b / "curated").glob("*.parquet")), ["origin"]))
    for split in ("train", "val"):
        sa, sb = sorted((a / "shards").glob(f"{split}-*.parquet")), sorted((b / "shards").glob(f"{split}-*.parquet"))
        assert len(sa) == len(sb) > 0
        for fa, fb in zip(sa, sb, strict=True):
            assert pl.read_parquet(fa).equals(pl.read_parquet(fb))
