"""run_quality over Parquet parts: outputs, ledger, stats, and the same result every run."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.core.ledger import read_ledger
from pipeline.ingest.canonical import from_records
from pipeline.quality.stage import run_quality
from schemas.config_curation import QualityConfig
from schemas.conversation import conversation_id

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris, which is also its largest city."),
    ("Hi", " "),
    ("Who will win the match tomorrow?", "As an AI language model, I cannot predict the future."),
    ("¿Qué hora es en Madrid ahora mismo?", "Son las tres de la tarde en Madrid, según el reloj de la plaza."),
    ("How do I reach support?", "Write to help.desk@example.com and we will answer within a day."),
    ("Summarise the report.", " ".join(["Revenue grew in every region this quarter."] * 10)),
    ("Name three primary colours for painting.", "Red, yellow and blue are the traditional primary colours."),
]


def _parts(tmp_path: Path) -> list[Path]:
    rows = []
    for i, (u, a) in enumerate(PAIRS * 3):
        msgs = [{"role": "user", "content": f"{u} ({i})"}, {"role": "assistant", "content": a}]
        rows.append({"conversation_id": conversation_id(msgs), "origin": f"s:{i + 1}", "source": "s",
                     "tier": "crowdsourced", "messages": msgs})
    df = from_records(rows)
    paths = [tmp_path / "in" / "part-00000.parquet", tmp_path / "in" / "part-00001.parquet"]
    paths[0].parent.mkdir(parents=True)
    df.head(10).write_parquet(paths[0])
    df.tail(df.height - 10).write_parquet(paths[1])
    return paths


def test_run_quality_outputs(tmp_path: Path) -> None:
    paths = _parts(tmp_path)
    stats = run_quality(paths, tmp_path / "run", QualityConfig(workers=2), rows_per_task=6)
    out = pl.concat([pl.read_parquet(p) for p in stats.parts])
    ledger = read_ledger(tmp_path / "run")
    assert out.height + ledger.height == len(PAIRS) * 3
    assert stats.dropped == {"quality.empty": 3, "quality.language": 3, "quality.refusal": 3,
                                "quality.repetition": 3}
    assert set(ledger["stage"]) == {"quality"} and ledger["detail"].null_count() == 0
    assert stats.redactions["email"] == 3 and out["pii_redactions"].sum() == 3
    assert all("[EMAIL]" in m[1]["content"] for m in out.filter(pl.col("pii_redactions") > 0)["messages"])
    assert set(out["lang"]) == {"en"} and stats.lang == {"en": out.height}
    saved = json.loads((tmp_path / "run/work/quality/stats.json").read_text())
    assert saved["dropped"] == stats.dropped and saved["examples"]["quality.refusal"]


def test_two_runs_identical_whatever_the_workers(tmp_path: Path) -> None:
    paths = _parts(tmp_path)
    results = []
    for name, workers in (("a", 1), ("b", 2)):
        stats = run_quality(paths, tmp_path / name, QualityConfig(workers=workers), rows_per_task=7)
        results.append((pl.concat([pl.read_parquet(p) for p in stats.parts]), read_ledger(tmp_path / name)))
    assert results[0][0].equals(results[1][0]) and results[0][1].equals(results[1][1])


def test_disabled_passes_everything_through(tmp_path: Path) -> None:
    paths = _parts(tmp_path)
    stats = run_quality(paths, tmp_path / "run", QualityConfig(enabled=False, workers=1))
    assert stats.records_out == len(PAIRS) * 3 and read_ledger(tmp_path / "run").height == 0


def test_empty_input(tmp_path: Path) -> None:
    from pipeline.ingest.canonical import empty_canonical

    p = tmp_path / "in.parquet"
    empty_canonical().write_parquet(p)
    stats = run_quality([p], tmp_path / "run", QualityConfig(workers=2))
    assert stats.records_out == 0 and stats.dropped == {} and read_ledger(tmp_path / "run").height == 0
