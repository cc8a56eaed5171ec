"""Decontamination that misses nothing short: exact copies of any length, short questions contained
whole, long ones by shared n-grams covering enough of them; checked first on every record; and the
coverage of each benchmark counted for the report."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from test_quality_filters import CLEAN, frame

from pipeline.core.ledger import read_ledger
from pipeline.quality.batch import Batch
from pipeline.quality.contamination import build_index, read_benchmark
from pipeline.quality.registry import FILTERS
from pipeline.quality.stage import filter_frame, run_quality
from schemas.config_curation import BenchmarkFile, ContaminationConfig, QualityConfig

SHORT = "How did US states get their names?"  # 7 words: under min_words, found as an exact copy only
MEDIUM = "What is the best way to learn a new language quickly?"  # 11 words: also found contained
STEM = "Which of the following is a correct statement?"
LONG = ("A developer, owner of several hundred acres in a rural county, drafted a general development plan for "
        "the area and recorded it with the county clerk before selling the first lots to young families. The plan "
        "set aside land for a school, two parks and a library, and every deed referred to it, but ten years later "
        "the developer asked the county to rezone the school parcel for shops and offices.")
MORAL = "For which of these two scenarios does the main character do something clearly morally wrong today?"


def _cfg(tmp_path: Path, **kw) -> QualityConfig:
    rows = [{"id": "short", "q": SHORT}, {"id": "medium", "q": MEDIUM}, {"id": "stem", "q": STEM}, {"id": "long", "q": LONG},
            {"id": "empty", "q": ""}, {"id": "tiny", "q": "Hi"}]
    rows += [{"id": f"moral{i}", "q": f"{MORAL} Scenario 1: I did thing number {i} at home."} for i in range(12)]
    p = tmp_path / "bench.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mt = tmp_path / "mt.jsonl"
    mt.write_text(json.dumps({"question_id": 81, "turns": ["Compose a travel blog post about Hawaii.",
                                                           "Rewrite your previous response in one line."]}) + "\n")
    return QualityConfig(workers=1, contamination=ContaminationConfig(benchmarks=[
        BenchmarkFile(name="bench", path=p, field="q", id_field="id"),
        BenchmarkFile(name="mt", path=mt, field="turns", id_field="question_id"),
    ], **kw))


def test_short_questions_are_found_as_exact_copies_and_when_lightly_wrapped(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    bad = [(SHORT, "They were named after rivers and tribes."),
           ("how did us states get their names", "Mostly from native words."),
           (f"Answer briefly: {MEDIUM}", "Speak it every day."),
           ("Hi", "Hello! How can I help?"),  # a one-word benchmark item, copied exactly
           ("Rewrite your previous response in one line.", "Sure.")]  # MT-bench's second turn
    res = FILTERS["contamination"](Batch(frame(bad + CLEAN)), cfg)
    assert res.keep.tolist() == [False] * len(bad) + [True] * len(CLEAN), res.detail
    assert "is a copy of benchmark 'bench' item short" in res.detail[0]
    assert "contains benchmark 'bench' item medium" in res.detail[2]
    assert "'mt' item 81/1" in res.detail[4]
    assert res.stats["by_rule"] == {"exact": 4, "contained": 1}


def test_generic_stems_boilerplate_and_single_shared_phrases_are_not_hits(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    good = [
        (f"Answer briefly: {SHORT} And which of them are named after rivers?", "Many."),  # short, not whole
        (f"{STEM.rstrip('?')} about correlation between height, weight and age in adults?\nA. one\nB. two\nC. three",
         "B"),
        (f"{MORAL} Scenario 1: I fed my neighbour's cat while she was away on holiday.", "Not wrong."),
        ("On October 1, a developer, owner of several hundred acres in a rural county, drafted a letter to a "
         "retired teacher who had lived there for forty years and wanted to move closer to her grandchildren "
         "in the city, where she later opened a small bakery with her son and two of his friends.", "Fine."),
    ]
    res = FILTERS["contamination"](Batch(frame(good)), cfg)
    assert res.keep.all(), res.detail
    strict = FILTERS["contamination"](Batch(frame(good[3:])), _cfg(tmp_path, min_coverage=0.0))
    assert not strict.keep.any()  # GPT-3's rule: any shared 13-gram


def test_long_question_copied_inside_a_longer_prompt(tmp_path: Path) -> None:
    res = FILTERS["contamination"](Batch(frame([(f"Read this carefully. {LONG} Who owns the plan?", "The county.")])),
                                   _cfg(tmp_path))
    assert not res.keep.any() and "'bench' item long" in res.detail[0] and "13-word" in res.detail[0]


def test_coverage_of_each_benchmark(tmp_path: Path) -> None:
    cov = build_index(_cfg(tmp_path).contamination).coverage
    assert cov["bench"] == {"items": 18, "checked": 17, "ngram": 13, "contained": 2, "exact_only": 2,
                            "unchecked": 1, "boilerplate_items": 12}
    assert read_benchmark(_cfg(tmp_path).contamination.benchmarks[1])["item"].to_list() == ["81/0", "81/1"]


def test_contamination_is_checked_first_whatever_else_fails(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    df = frame([(SHORT, ""), (SHORT, "As an AI language model, I cannot answer that."),
                ("Explique por qué el cielo es azul, por favor.",
                 "La luz del sol se dispersa en la atmósfera y la luz azul se dispersa mucho más que la roja.")])
    res = filter_frame(df, cfg)
    assert res.dropped["reason"].to_list() == ["quality.contamination", "quality.contamination", "quality.language"]


def test_run_quality_reports_hits_and_coverage_per_benchmark(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    p = tmp_path / "in.parquet"
    frame([(SHORT, "Rivers."), ("Hi", "Hello."), *CLEAN]).write_parquet(p)
    res = run_quality([p], tmp_path / "run", cfg)
    assert res.contamination["bench"]["hits"] == 2 and res.contamination["bench"]["unchecked"] == 1
    assert res.contamination["mt"] == {"items": 2, "checked": 2, "ngram": 0, "contained": 0, "exact_only": 2,
                                       "unchecked": 0, "boilerplate_items": 0, "hits": 0}
    assert res.order[0] == "contamination" and res.contamination_hits == {"bench": 2}
    assert read_ledger(tmp_path / "run").filter(pl.col("reason") == "quality.contamination").height == 2
