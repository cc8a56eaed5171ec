"""The data-quality report on a hand-built run directory: counts, examples, sections, self-contained HTML."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.rundir import atomic_write_json
from pipeline.ingest.canonical import from_records
from pipeline.report.summary import (
    FUNNEL_STEPS,
    build_report,
    histogram,
    summarize,
    summary_markdown,
    summary_text,
)
from schemas.config import RunConfig


def _conv(i: int, source: str, tier: str, text: str | None = None) -> dict:
    return {
        "conversation_id": f"cid{i}", "origin": f"{source}:{i}", "source": source, "tier": tier,
        "messages": [{"role": "user", "content": f"question {i}"},
                     {"role": "assistant", "content": text or f"answer number {i} " * (i % 5 + 1)}],
    }


def _cfg(run_dir: Path) -> RunConfig:
    return RunConfig.model_validate({
        "name": "hand", "output_dir": str(run_dir), "pack": {"max_seq_len": 64},
        "sources": [{"name": "a", "path": "a.jsonl", "tier": "expert"},
                    {"name": "b", "path": "b.jsonl", "tier": "synthetic"}],
    })


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Source a: 6 read, 1 quarantined, 1 near-dup, 4 kept. Source b: 5 read, 1 dup of a, 1 refusal,
    1 tokenize drop, 2 kept; plus stats files, shards and training metrics."""
    rd = tmp_path / "run"
    a = from_records([_conv(i, "a", "expert") for i in range(1, 6)])
    b = from_records([_conv(i, "b", "synthetic") for i in range(1, 5)])
    ingest_dir = rd / "work" / "ingest"
    (ingest_dir / "a").mkdir(parents=True)
    (ingest_dir / "b").mkdir(parents=True)
    a.write_parquet(ingest_dir / "a" / "part-00000.parquet")
    b.write_parquet(ingest_dir / "b" / "part-00000.parquet")
    q = pl.DataFrame({"origin": ["a:6"], "source": ["a"], "tier": ["expert"], "reason": ["schema.invalid_json"],
                      "errors": ["record: not valid JSON"], "raw": ['{"broken']})
    (rd / "quarantine").mkdir()
    q.write_parquet(rd / "quarantine" / "a.parquet")
    write_ledger_part(rd, "ingest-a", ledger_rows(q, stage="ingest", outcome="quarantined",
                                                  reason="schema.invalid_json", detail="not valid JSON"))
    write_ledger_part(rd, "dedup", pl.concat([
        ledger_rows(a.filter(pl.col("origin") == "a:5"), stage="dedup", outcome="dropped", reason="dedup.near",
                    detail="near duplicate", dup_of="cid1"),
        ledger_rows(b.filter(pl.col("origin") == "b:1"), stage="dedup", outcome="dropped", reason="dedup.exact",
                    detail="exact duplicate", dup_of="cid1"),
    ]))
    write_ledger_part(rd, "quality", ledger_rows(b.filter(pl.col("origin") == "b:2"), stage="quality",
                                                 outcome="dropped", reason="quality.refusal", detail="refuses"))
    write_ledger_part(rd, "tokenize", ledger_rows(b.filter(pl.col("origin") == "b:3"), stage="tokenize",
                                                  outcome="dropped", reason="tokenize.too_long", detail="too long"))
    kept = pl.concat([a.filter(pl.col("origin") != "a:5"), b.filter(pl.col("origin").is_in(["b:3", "b:4"]))])
    kept = kept.with_columns(pl.lit("en").alias("lang"), pl.lit(1, dtype=pl.Int32).alias("repeat"))
    (rd / "curated").mkdir()
    kept.write_parquet(rd / "curated" / "part-00000.parquet")
    final = kept.filter(pl.col("origin") != "b:3")
    write_ledger_part(rd, "kept", ledger_rows(final, stage="tokenize", outcome="kept", reason=None))
    from pipeline.quality.stage import QualityResult
    from pipeline.render.encode import EncodeResult

    QualityResult(stage="quality", records_in=7, records_out=6, dropped={"quality.refusal": 1}, seconds=2.0,
                  contamination_hits={"gsm8k": 0, "mmlu": 0}, redactions={"email": 3, "phone": 1},
                  ).write(rd / "work" / "quality" / "stats.json")
    EncodeResult(stage="encode", records_in=6, records_out=5, truncation={"conversations": 0, "tokens_lost": 0},
                 ).write(rd / "work" / "encode" / "stats.json")
    (rd / "shards").mkdir()
    pl.DataFrame({
        "input_ids": [[1] * 40, [2] * 30], "loss_mask": [[0] * 20 + [1] * 20, [0] * 10 + [1] * 20],
        "seq_lens": [[25, 15], [30]], "conversation_ids": [["cid1", "cid2"], ["cid3"]],
    }, schema={"input_ids": pl.List(pl.Int32), "loss_mask": pl.List(pl.UInt8), "seq_lens": pl.List(pl.Int32),
               "conversation_ids": pl.List(pl.String)}).write_parquet(rd / "shards" / "train-00000.parquet")
    (rd / "train").mkdir()
    (rd / "train" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "loss": 5.0 - s, "lr": 0.1}) for s in range(1, 4)) + "\n{partial"
    )
    atomic_write_json(rd / "train" / "eval.json", {"history": [{"step": 0, "loss": 5.5}, {"step": 3, "loss": 2.5}],
                                                   "final": {"step": 3, "loss": 2.5}})
    return rd


def test_funnel_and_totals_reconcile_with_the_ledger(run_dir: Path) -> None:
    s = summarize(run_dir, _cfg(run_dir))
    rows = {r["source"]: r for r in s["funnel"]}
    assert rows["a"] == {"source": "a", "tier": "expert", "read": 6, "quarantined": 1, "ingest_dropped": 0,
                         "duplicates": 1, "filtered": 0, "mixed_out": 0, "tokenize_dropped": 0, "kept": 4}
    assert rows["b"]["read"] == 4 and rows["b"]["duplicates"] == 1 and rows["b"]["filtered"] == 1
    assert rows["b"]["tokenize_dropped"] == 1 and rows["b"]["kept"] == 1
    for r in s["funnel"]:
        assert r["read"] == sum(r[k] for k in FUNNEL_STEPS if k != "read")
    assert s["totals"]["read"] == 10 and s["totals"]["kept"] == 5
    assert s["totals"]["quarantined"] == 1 and s["totals"]["dropped"] == 4
    assert {r["tier"]: r["read"] for r in s["funnel_by_tier"]} == {"expert": 6, "synthetic": 4}


def test_reasons_carry_counts_and_example_texts(run_dir: Path) -> None:
    s = summarize(run_dir, _cfg(run_dir))
    by = {r["reason"]: r for r in s["reasons"]}
    assert set(by) == {"schema.invalid_json", "dedup.near", "dedup.exact", "quality.refusal", "tokenize.too_long"}
    assert all(r["count"] == 1 for r in by.values())
    q = by["schema.invalid_json"]["examples"][0]
    assert q["origin"] == "a:6" and '{"broken' in q["text"] and "not valid JSON" in q["text"]
    assert "question 2" in by["quality.refusal"]["examples"][0]["text"]  # looked up in the ingest output


def test_duplicate_clusters_group_by_the_kept_conversation(run_dir: Path) -> None:
    d = summarize(run_dir, _cfg(run_dir))["duplicates"]
    assert d["clusters"] == 1 and d["duplicates"] == 2
    top = d["largest"][0]
    assert top["kept"] == "cid1" and top["kept_origin"] == "a:1" and top["dropped"] == 2
    assert top["dropped_origins"] == ["a:5", "b:1"] and "question 1" in top["text"]


def test_stage_stats_sections_shards_and_training(run_dir: Path) -> None:
    s = summarize(run_dir, _cfg(run_dir))
    assert s["contamination"] == {"gsm8k": 0, "mmlu": 0}  # typed, from the quality stage's result
    assert s["pii_redactions"] == {"email": 3, "phone": 1}
    assert [t["stage"] for t in s["stage_times"]] == ["quality", "encode"]
    assert s["stage_times"][0]["records_per_s"] == 3.5
    assert s["truncation"] == {"conversations": 0, "tokens_lost": 0}
    tr = s["shards"]["train"]
    assert tr["rows"] == 2 and tr["tokens"] == 70 and tr["supervised_tokens"] == 40 and tr["segments"] == 3
    assert tr["supervised_share"] == pytest.approx(40 / 70)
    assert tr["packing_efficiency"] == pytest.approx(70 / 128)
    assert tr["tokens_per_conversation"]["n"] == 3
    assert s["curated"]["languages"] == {"en": 6} and s["curated"]["conversations"] == 6
    assert s["training"]["curves"]["loss"] == [[1.0, 4.0], [2.0, 3.0], [3.0, 2.0]]  # the partial line is skipped
    assert s["training"]["curves"]["val_loss"] == [[0.0, 5.5], [3.0, 2.5]]
    assert s["training"]["eval"]["final"]["loss"] == 2.5


def test_html_is_self_contained_and_has_every_section(run_dir: Path) -> None:
    build_report(run_dir, _cfg(run_dir))
    html = (run_dir / "report" / "report.html").read_text()
    json.loads((run_dir / "report" / "report.json").read_text())
    for title in ("Funnel per source", "Reasons", "Duplicate clusters", "Benchmark contamination hits",
                  "PII redactions", "Language mix", "Lengths", "Tokens, supervision and packing", "Training"):
        assert f"<h2>{title}" in html, title
    assert html.count("<svg") >= 6 and "<polyline" in html
    # offline: no scripts, no external stylesheets/images; the only URL is the SVG namespace
    assert "<script" not in html
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}
    assert "<h2>Model answers before / after" not in html  # absent until before_after.json exists


def test_before_after_and_mix_sections_appear_when_present(run_dir: Path) -> None:
    atomic_write_json(run_dir / "report" / "before_after.json", {
        "prompts": [{"origin": "a:1", "prompt": [{"role": "user", "content": "hi <b>"}], "reference": "ref",
                     "before": "gibberish", "after": "hello there"}],
        "val_loss": {"overall": {"before": 5.0, "after": 2.0}, "per_source": {"a": {"before": 5.0, "after": 2.5}}},
    })
    side = {"sources": {"a": {"conversations": 5, "tokens": 50, "share": 0.5}}, "tiers": {}}
    atomic_write_json(run_dir / "work" / "mix" / "stats.json",
                      {"before": side, "after": {"sources": {"a": {"conversations": 4, "tokens": 40, "share": 1.0}}}})
    build_report(run_dir, _cfg(run_dir))
    html = (run_dir / "report" / "report.html").read_text()
    assert "<h2>Model answers before / after training" in html and "hi &lt;b&gt;" in html
    assert "<td>hello there</td>" in html and "<td>source a</td>" in html
    assert "<h2>Mixture before / after" in html and "<h3>per source" in html
    assert "<th>conversations before</th>" in html and "<th>conversations after</th>" in html


def test_a_run_with_only_ingest_still_reports(tmp_path: Path) -> None:
    """Disabled or not-yet-run stages: no stats files, no shards; the report says what there is."""
    rd = tmp_path / "run"
    df = from_records([_conv(1, "a", "expert")])
    write_ledger_part(rd, "ingest-a", ledger_rows(df, stage="ingest", outcome="dropped", reason="ingest.deleted"))
    s = build_report(rd, _cfg(rd))
    assert s["totals"]["read"] == 1 and s["funnel"][0]["ingest_dropped"] == 1
    assert s["shards"] == {} and s["training"] == {} and s["curated"] == {}
    assert "Run hand" in summary_text(s) and "ingest.deleted" in summary_markdown(s)


def test_histogram_bins_cover_every_value() -> None:
    h = histogram([1, 2, 2, 3, 10], 3)
    assert sum(h["counts"]) == 5 and h["counts"][-1] == 1 and h["min"] == 1 and h["max"] == 10
    assert histogram([], 4)["n"] == 0
    assert histogram([7, 7], 4)["counts"] == [2, 0, 0, 0]


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium is not installed")
def test_report_renders_in_a_headless_browser(run_dir: Path, tmp_path: Path) -> None:
    build_report(run_dir, _cfg(run_dir))
    shot = tmp_path / "report.png"
    subprocess.run(
        ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1200,2400", (run_dir / "report" / "report.html").as_uri()],
        check=True, capture_output=True,
    )
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, run_dir / "report" / "screenshot.png")


def test_the_terminal_summary_keeps_long_names_whole(run_dir: Path) -> None:
    from pipeline.report.summary import summary_text

    s = summarize(run_dir, _cfg(run_dir))
    long = "a-source-with-a-very-long-descriptive-name"
    s["funnel"] = [dict(r, source=long if r["source"] == "a" else r["source"]) for r in s["funnel"]]
    text = summary_text(s)
    header = next(line for line in text.splitlines() if "tokenize_dropped" in line)
    assert all(step in header for step in FUNNEL_STEPS)  # no "tokenize_d"
    row = next(line for line in text.splitlines() if long in line)
    assert len(row) == len(header)  # columns line up whatever the names
