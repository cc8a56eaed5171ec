"""Integration: a real Prefect server, the repository's served deployments, a run triggered with
`prefect deployment run curate-and-train/local --watch`, checked through the API; all stopped after."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, PrefectServer, TinySources, stop_group, write_config

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_served_deployment_runs_from_the_command_line(tmp_path: Path, tiny_sources: TinySources,
                                                     server_settings: PrefectServer) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    cfg = write_config(tmp_path / "served.toml", tiny_sources.sources, tmp_path / "run")
    env = server_settings.env
    serve_log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(cfg)], cwd=REPO, env=env,
                             stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            while True:  # the deployments exist once serve() has registered them
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
                try:
                    local = client.read_deployment_by_name("curate-and-train/local")
                    nightly = client.read_deployment_by_name("curate-and-train/nightly")
                    client.read_deployment_by_name("curate/local")
                    break
                except Exception:  # noqa: BLE001 - ObjectNotFound until registered
                    time.sleep(0.5)
            assert local.parameters == {"config": str(cfg), "overrides": []}
            assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]

            run = subprocess.run(
                [sys.executable, "-m", "prefect", "deployment", "run", "curate-and-train/local",
                 "--params", f'{{"config": "{cfg}", "overrides": ["train.max_steps=1"]}}',
                 "--watch", "--watch-interval", "1"],
                cwd=REPO, env=env, capture_output=True, text=True,
            )
            assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-4000:]
            run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)
            flow_run = client.read_flow_run(run_id)
            assert flow_run.state.is_completed() and flow_run.deployment_id == local.id
            assert flow_run.parameters["overrides"] == ["train.max_steps=1"]
            artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    finally:
        stop_group(serve)
        serve_log.close()

    reports = [a.data for a in artifacts if a.key == "data-quality-report"]
    assert len(reports) == 2 and all("# Data-quality report: tiny" in r for r in reports)
    assert sum("## Training" in r for r in reports) == 1  # the report is rebuilt after training
    funnel = next(a.data for a in artifacts if a.key == "funnel")
    assert "expert_chat" in str(funnel) and "crowd_sharegpt" in str(funnel)
    rd = tmp_path / "run"
    assert (rd / "manifest.json").is_file() and (rd / "model" / "config.json").is_file()
    assert (rd / "report" / "report.html").is_file()
    metrics = [json.loads(line) for line in (rd / "train" / "metrics.jsonl").read_text().splitlines() if line]
    assert metrics[-1]["step"] == 1  # the override given on the command line reached the trainer
