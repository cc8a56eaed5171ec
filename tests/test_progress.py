"""Progress lines of long stages: done/total, rate, ETA; on the standard "pipeline" logger."""

from __future__ import annotations

import logging

import pytest

from pipeline.core.procpool import pool_map
from pipeline.core.progress import Progress


def test_a_line_says_done_total_rate_and_eta() -> None:
    p = Progress("dedup", total=200, unit="conversations", every_s=0)
    p.t0 -= 10.0  # ten seconds ago
    p.done = 50
    line = p.line()
    assert line.startswith("dedup: 50/200 conversations (25%)") and "ETA 30 s" in line and "5/s" in line
    assert Progress("ingest a", unit="records read").line().startswith("ingest a: 0 records read")


def test_pool_map_reports_its_tasks(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.core.progress._interval", lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        assert pool_map(abs, [-1, -2, -3], workers=1, what="quality filters") == [1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    assert lines and lines[-1].startswith("quality filters: 3/3 tasks (100%)")
