"""The approval gate: thresholds reject without a person; a person approves or rejects a paused run;
nobody answering within the timeout ends the run untrained. Rejected runs never train."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
from conftest import REPO, PrefectServer, TinySources, write_config

from flows.gate import threshold_violations
from schemas.config_flow import GateConfig

SUMMARY = {"totals": {"read": 100, "quarantined": 10, "dropped": 30, "kept": 60},
           "contamination": {"gsm8k": 2, "mmlu": 1}}


def test_thresholds_name_every_bound_that_is_broken() -> None:
    assert threshold_violations(SUMMARY, GateConfig(enabled=True)) == []
    ok = GateConfig(enabled=True, max_quarantined_share=0.1, max_dropped_share=0.4, max_contamination_hits=3, min_kept=60)
    assert threshold_violations(SUMMARY, ok) == []
    bad = GateConfig(enabled=True, max_quarantined_share=0.05, max_dropped_share=0.3, max_contamination_hits=2, min_kept=61)
    v = threshold_violations(SUMMARY, bad)
    assert len(v) == 4
    assert "quarantined share 10.0% (10 of 100)" in v[0] and "gate.max_quarantined_share" in v[0]
    assert "40.0%" in v[1] and "3 benchmark contamination hit(s)" in v[2] and "gate.min_kept = 61" in v[3]


def test_gate_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        GateConfig(max_quarantined_share=1.5)
    with pytest.raises(ValueError):
        GateConfig(timeout_s=0)


def _paused_run(client: object, proc: subprocess.Popen) -> UUID:
    """Wait until the flow run started by `proc` is PAUSED (or fail if the process ends first)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    while True:
        runs = client.read_flow_runs(flow_run_filter=paused)  # type: ignore[attr-defined]
        if runs:
            return runs[0].id
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the run ended without pausing (rc {proc.returncode}):\n{out[-4000:]}")
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.server
def test_a_person_rejects_then_approves(tmp_path: Path, tiny_sources: TinySources, server_settings: PrefectServer) -> None:
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    cfg = write_config(tmp_path / "gate.toml", tiny_sources.sources, tmp_path / "run",
                       sections={"gate": {"enabled": True, "timeout_s": 600}})
    cmd = [sys.executable, "-m", "flows.cli", "run", str(cfg)]
    outputs = {}
    with get_client(sync_client=True) as client:
        for approve in (False, True):  # reject first: nothing trained yet, so "no model" means something
            proc = subprocess.Popen(cmd, cwd=REPO, env=server_settings.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                run_id = _paused_run(client, proc)
                assert not (tmp_path / "run" / "model").exists()
                resume_flow_run(run_id, run_input={"approve": approve, "note": "checked by a test"})
                out, _ = proc.communicate()
            finally:
                if proc.poll() is None:
                    proc.kill()
            outputs[approve] = (proc.returncode, out, client.read_flow_run(run_id))

    rc, out, run = outputs[False]
    assert rc == 3, out
    assert "NOT TRAINED: the approval gate rejected the data (person): rejected: checked by a test" in out
    assert run.state.is_completed()
    assert (tmp_path / "run" / "report" / "report.html").is_file()  # the report is there to read

    rc, out, run = outputs[True]
    assert rc == 0, out
    assert run.state.is_completed()
    assert f"model: {tmp_path / 'run' / 'model'}" in out
    assert (tmp_path / "run" / "model" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.server
def test_thresholds_reject_and_timeout_ends_untrained(tmp_path: Path, tiny_sources: TinySources,
                                                     server_settings: PrefectServer) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.curate import curate_and_train

    cfg = write_config(tmp_path / "auto.toml", tiny_sources.sources, tmp_path / "run",
                       sections={"gate": {"enabled": True, "max_quarantined_share": 0.01}})
    state = curate_and_train(config=str(cfg), return_state=True)
    result = state.result()
    assert result["trained"] is False and not (tmp_path / "run" / "model").exists()
    assert result["gate"]["decided_by"] == "thresholds" and "gate.max_quarantined_share" in result["gate"]["reason"]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["approval-gate"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    assert arts and "rejected" in arts[0].data and "max_quarantined_share" in arts[0].data

    # nobody answers: the pause times out and the run ends without training (curation is cached)
    state = curate_and_train(config=str(cfg), overrides=["gate.max_quarantined_share=0.5", "gate.timeout_s=10"],
                             return_state=True)
    result = state.result()
    assert result["gate"] == {"approved": False, "decided_by": "timeout",
                              "reason": "nobody approved within gate.timeout_s = 10s"}
    assert not (tmp_path / "run" / "model").exists()
    json.loads((tmp_path / "run" / "report" / "report.json").read_text())
