"""The report shows where data went: a source x reason matrix, examples from several sources (the
worst-hit first), the filter order, PII redactions before -> after, contamination coverage per
benchmark, one meaning of "kept", and evaluations drawn as points."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.rundir import atomic_write_json
from pipeline.ingest.canonical import from_records
from pipeline.quality.stage import QualityResult
from pipeline.report.html import line_chart, render_html
from pipeline.report.summary import summarize, summary_markdown, summary_text
from schemas.config import RunConfig

# source -> (tier, records, of which dropped by refusal, by repetition)
SOURCES = {"big": ("synthetic", 20, 6, 1), "small": ("crowdsourced", 10, 1, 0), "exp": ("expert", 5, 0, 0)}


def _conv(source: str, i: int) -> dict:
    return {"conversation_id": f"{source}{i}", "origin": f"{source}:{i}", "source": source,
            "tier": SOURCES[source][0], "messages": [{"role": "user", "content": f"question {source} {i}"},
                                                    {"role": "assistant", "content": f"answer {i}"}]}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rd = tmp_path / "run"
    for source, (_, n, refusals, reps) in SOURCES.items():
        df = from_records([_conv(source, i) for i in range(n)])
        (rd / "work" / "ingest" / source).mkdir(parents=True)
        df.write_parquet(rd / "work" / "ingest" / source / "part-00000.parquet")
        ref = df.head(refusals)
        rep = df.slice(refusals, reps)
        kept = df.slice(refusals + reps)
        if ref.height:
            write_ledger_part(rd, f"q-{source}-r", ledger_rows(ref, stage="quality", outcome="dropped",
                                                                reason="quality.refusal", detail="refuses"))
        if rep.height:
            write_ledger_part(rd, f"q-{source}-p", ledger_rows(rep, stage="quality", outcome="dropped",
                                                                reason="quality.repetition", detail="loops"))
        write_ledger_part(rd, f"kept-{source}", ledger_rows(kept, stage="tokenize", outcome="kept", reason=None))
    QualityResult(
        stage="quality", records_in=35, records_out=27, seconds=1.0, dropped={"quality.refusal": 7, "quality.repetition": 1},
        redactions={"email": 1}, contamination_hits={"gsm8k": 0},
        contamination={"gsm8k": {"items": 1319, "checked": 1319, "ngram": 1300, "contained": 19, "exact_only": 0,
                                 "unchecked": 0, "boilerplate_items": 0, "hits": 0}},
        filters={"pii": {"redacted": {"email": 1}, "conversations_redacted": 1}},
        redaction_examples=[{"origin": "small:9", "kind": "email", "before": "mail anna@corp.org now",
                             "after": "mail [EMAIL] now"}],
        order=["contamination", "empty", "echo", "length", "repetition", "refusal", "placeholder", "language", "pii"],
        spared={"refusal": {"expert": 2}},
    ).write(rd / "work" / "quality" / "stats.json")
    (rd / "train").mkdir()
    (rd / "train" / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "loss": {5 - s}}}\n' for s in range(1, 4)))
    atomic_write_json(rd / "train" / "eval.json", {"history": [{"step": 0, "loss": 5.5}, {"step": 3, "loss": 2.5}]})
    return rd


def _cfg(rd: Path) -> RunConfig:
    return RunConfig.model_validate({"name": "q", "output_dir": str(rd), "sources": [
        {"name": s, "path": f"{s}.jsonl", "tier": t} for s, (t, _, _, _) in SOURCES.items()]})


def test_source_by_reason_matrix(run_dir: Path) -> None:
    m = summarize(run_dir, _cfg(run_dir))["matrix"]
    assert m["reasons"] == ["quality.refusal", "quality.repetition"]
    rows = {r["source"]: r for r in m["rows"]}
    assert rows["big"]["counts"] == {"quality.refusal": 6, "quality.repetition": 1}
    assert rows["big"]["shares"]["quality.refusal"] == pytest.approx(0.3) and rows["big"]["kept"] == 13
    assert rows["exp"]["counts"] == {} and rows["exp"]["kept_share"] == 1.0
    assert m["total"] == {"quality.refusal": 7, "quality.repetition": 1} and m["read"] == 35 and m["kept"] == 27


def test_examples_come_from_several_sources_worst_hit_first(run_dir: Path) -> None:
    reasons = {r["reason"]: r for r in summarize(run_dir, _cfg(run_dir))["reasons"]}
    ref = reasons["quality.refusal"]
    assert ref["sources"] == {"big": 6, "small": 1}
    assert [e["source"] for e in ref["examples"]] == ["big", "small", "big"]
    assert "question big 0" in ref["examples"][0]["text"]


def test_html_shows_matrix_order_pii_contamination_and_kept(run_dir: Path) -> None:
    s = summarize(run_dir, _cfg(run_dir))
    html = render_html(s)
    assert html.index("Where records went") < html.index("Funnel per source")  # at the top
    assert "in the train and val shards" in html
    assert "Filters ran in this order" in html and "<code>contamination</code> (on every record)" in html
    assert "kept (expert tier)" in html
    assert "<td>mail anna@corp.org now</td><td>mail [EMAIL] now</td>" in html
    assert "<th>not checkable</th>" in html and "<td class=\"n\">1319</td>" in html
    text, md = summary_text(s), summary_markdown(s)
    assert "where records went" in text and "contamination -> empty" in text
    assert "| big | synthetic | 20 | 65.0% | 6 (30.0%) | 1 (5.0%) |" in md


def test_evaluations_are_drawn_as_points(run_dir: Path) -> None:
    s = summarize(run_dir, _cfg(run_dir))
    assert s["training"]["points"] == ["val_loss"]
    svg = line_chart(s["training"]["curves"], points=set(s["training"]["points"]))
    assert svg.count("<polyline") == 1  # the training loss only
    assert len(re.findall(r"<circle[^>]*><title>val_loss", svg)) == 2
    assert "val_loss: 5.5000 at step 0 -> 2.5000 at step 3 (2 evaluations)" in summary_text(s)


def test_language_mix_is_labelled_by_what_it_counts(run_dir: Path) -> None:
    html = render_html(summarize(run_dir, _cfg(run_dir)))
    assert "Language mix (after quality; nothing kept yet)" in html  # no curated/ here
    cur = run_dir / "curated"
    cur.mkdir()
    from_records([_conv("big", 1)]).with_columns(pl.lit("en").alias("lang")).write_parquet(cur / "part-00000.parquet")
    assert "<h2>Language mix (kept)" in render_html(summarize(run_dir, _cfg(run_dir)))
