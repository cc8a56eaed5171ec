"""One test per quality reason code on tiny inline data, plus clean examples that must pass."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.ingest.canonical import from_records
from pipeline.quality.batch import Batch
from pipeline.quality.names import FILTER_NAMES
from pipeline.quality.pii import luhn_ok
from pipeline.quality.registry import FILTERS
from pipeline.quality.stage import filter_frame
from schemas.config_curation import BenchmarkFile, ContaminationConfig, QualityConfig
from schemas.conversation import conversation_id

CLEAN = [
    ("What is the capital of France?", "The capital of France is Paris, which is also its largest city."),
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."),
    (
        "Explain why the sky is blue.",
        "Sunlight is scattered by the molecules in the air, and blue light is scattered much more than red "
        "light because it has a shorter wavelength. That scattered blue light reaches our eyes from every "
        "direction of the sky, so the sky looks blue during the day.",
    ),
    ("Give me a number between 1 and 10.", "7"),
]


def frame(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    rows = []
    for i, (u, a) in enumerate(pairs):
        msgs = [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        rows.append({"conversation_id": conversation_id(msgs), "origin": f"t:{i + 1}", "source": "t",
                     "tier": "synthetic", "messages": msgs})
    return from_records(rows)


def check(name: str, bad: list[tuple[str, str]], cfg: QualityConfig | None = None, reason: str | None = None) -> list:
    """The filter drops every `bad` conversation with its reason code and keeps every clean one."""
    cfg = cfg or QualityConfig()
    res = FILTERS[name](Batch(frame(bad + CLEAN)), cfg)
    assert res.reason == (reason or f"quality.{name}")
    assert res.keep.tolist() == [False] * len(bad) + [True] * len(CLEAN), res.detail
    assert all(d for d in res.detail[: len(bad)])
    return res.detail[: len(bad)]


def test_registry_names_every_filter() -> None:
    # The configuration reads the names from pipeline.quality.names: they must be the registry's.
    assert tuple(FILTERS) == FILTER_NAMES
    assert QualityConfig().filters == list(FILTERS)


@pytest.mark.parametrize("module", ["schemas.config_curation", "pipeline.quality.registry", "pipeline.quality.stage"])
def test_imports_first_without_a_cycle(module: str) -> None:
    # schemas.config_curation reads the filter names from the pipeline, whose filters import it back.
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=Path(__file__).parents[1])


def test_empty() -> None:
    details = check("empty", [("Hi", ""), ("Hi", "  \n\t ")])
    assert "empty" in details[0]


def test_echo() -> None:
    check("echo", [("Repeat after me: the cat sat", "repeat after me:  The cat sat"),
                   ("Translate 'good morning' to French please", "Translate 'good morning' to French")])


def test_length() -> None:
    cfg = QualityConfig(max_turn_chars=1200, max_conversation_words=200, min_conversation_words=2)
    details = check("length", [("Tell me", "x" * 1201), ("Tell me", " ".join(["word"] * 199)), ("Hi", "")],
                    cfg)
    assert "max_turn_chars" in details[0] and "max_conversation_words" in details[1]


def test_repetition() -> None:
    looping = " ".join(["The meeting was moved to Thursday afternoon at three."] * 12)
    lines = "\n".join(["Buy now!"] * 10 + ["Limited offer today only for our best customers and friends."])
    details = check("repetition", [("Summarise", looping), ("Write an ad", lines)])
    assert "10-gram" in details[0] or "5-gram" in details[0] or "top" in details[0]
    assert "line" in details[1]


def test_refusal() -> None:
    check("refusal", [
        ("Who will win?", "As an AI language model, I cannot provide personal opinions about this topic."),
        ("Do it", "I apologize, but I cannot fulfill this request as it goes against my programming."),
        ("News?", "I'm sorry, but I am not able to browse the internet or access real-time data."),
    ])
    # A stray disclaimer inside a substantive answer is not a refusal (refusal_min_share).
    long_answer = ("As an AI, I have no favourite. " + CLEAN[2][1] + " " + CLEAN[2][1])
    res = FILTERS["refusal"](Batch(frame([("Favourite colour and why the sky is blue?", long_answer)])),
                             QualityConfig())
    assert res.keep.tolist() == [True]
    strict = FILTERS["refusal"](Batch(frame([("q", long_answer)])), QualityConfig(refusal_min_share=0.0))
    assert strict.keep.tolist() == [False]


def test_language_drops_foreign_and_records_lang() -> None:
    bad = [
        ("Explique por qué el cielo es azul, por favor.",
         "La luz del sol se dispersa en la atmósfera y la luz azul se dispersa mucho más que la roja."),
        ("Erkläre mir bitte, wie man eine Steuererklärung richtig ausfüllt.",
         "Zuerst sammelt man alle Belege, dann füllt man die Formulare sorgfältig aus und reicht sie ein."),
    ]
    res = FILTERS["language"](Batch(frame(bad + CLEAN)), QualityConfig())
    assert res.keep.tolist() == [False, False] + [True] * len(CLEAN)
    lang = res.columns["lang"].to_list()
    assert lang[:2] == ["es", "de"] and lang[2:5] == ["en", "en", "en"]
    assert lang[5] == "en"  # the prompt decides; "7" abstains
    short = FILTERS["language"](Batch(frame([("Hi!", "Hello there.")])), QualityConfig())
    assert short.keep.tolist() == [True] and short.columns["lang"].to_list() == [None]  # too short: abstain
    assert "es" in res.detail[0]
    keep_es = FILTERS["language"](Batch(frame(bad[:1])), QualityConfig(language={"keep": ["en", "es"]}))
    assert keep_es.keep.tolist() == [True]


def test_language_is_the_same_with_and_without_fast_path() -> None:
    pairs = CLEAN + [("Écris un poème sur la mer, s'il te plaît.", "La mer chante doucement sous la lune d'été.")]
    fast = FILTERS["language"](Batch(frame(pairs)), QualityConfig())
    slow = FILTERS["language"](Batch(frame(pairs)), QualityConfig(language={"precheck": False, "max_chars": 100_000}))
    assert fast.columns["lang"].to_list() == slow.columns["lang"].to_list()


def test_pii_redacts_by_default_and_counts() -> None:
    bad = [
        ("Contact?", "Write to anna.smith@example.com or call +1 (555) 123-4567."),
        ("Card?", "The test card 4111 1111 1111 1111 is valid; 4111111111111112 is not."),
        ("Server?", "It runs on 192.168.10.20 and 2001:db8:85a3::8a2e:370:7334."),
        ("Keys?", "Use AKIAABCDEFGHIJKLMNOP with header Authorization: Bearer abcdefghijklmnop1234567890."),
        ("Key file?", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"),
    ]
    res = FILTERS["pii"](Batch(frame(bad + CLEAN)), QualityConfig())
    assert res.keep.all()
    texts = [m[1]["content"] for m in res.columns["messages"].to_list()]
    assert texts[0] == "Write to [EMAIL] or call [PHONE]."
    assert "[CREDIT_CARD]" in texts[1] and "4111111111111112" in texts[1]
    assert texts[2] == "It runs on [IP] and [IP]."
    assert "[AWS_KEY]" in texts[3] and "[API_KEY]" in texts[3] and "abcdefghijklmnop" not in texts[3]
    assert texts[4] == "[PRIVATE_KEY]"
    assert texts[5:] == [a for _, a in CLEAN]
    assert res.columns["pii_redactions"].to_list() == [2, 1, 2, 2, 1] + [0] * len(CLEAN)
    assert res.stats["redacted"] == {"private_key": 1, "api_key": 1, "aws_key": 1, "email": 1, "ip": 2,
                                     "credit_card": 1, "phone": 1}


def test_pii_drop_and_keep_policies() -> None:
    bad = [("Contact?", "Mail bob@example.org today.")]
    res = FILTERS["pii"](Batch(frame(bad + CLEAN)), QualityConfig(pii={"email": "drop"}))
    assert res.keep.tolist() == [False] + [True] * len(CLEAN) and "email" in res.detail[0]
    kept = FILTERS["pii"](Batch(frame(bad)), QualityConfig(pii={"email": "keep"}))
    assert kept.keep.all() and "messages" not in kept.columns and kept.stats["detected"]["email"] == 1


def test_luhn() -> None:
    assert luhn_ok("4111 1111 1111 1111") and luhn_ok("5500-0000-0000-0004")
    assert not luhn_ok("1234 5678 9012 3456") and not luhn_ok("4111")


def _bench_cfg(tmp_path: Path) -> QualityConfig:
    q1 = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
          "How many clips did Natalia sell altogether in April and May?")
    gz = tmp_path / "bench.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"task_id": "T/0", "prompt": "def add(a, b):\n    \"\"\"Return the sum of a and b, "
                            "both integers, without using the plus operator at all.\"\"\"\n"}) + "\n")
    csv = tmp_path / "bench.csv"
    pl.DataFrame({"question": ["Unrelated question about the weather in Paris?", q1]}).write_csv(csv)
    return QualityConfig(contamination=ContaminationConfig(benchmarks=[
        BenchmarkFile(name="mathqa", path=csv, field="question"),
        BenchmarkFile(name="code", path=gz, field="prompt", id_field="task_id"),
    ]))


def test_contamination(tmp_path: Path) -> None:
    cfg = _bench_cfg(tmp_path)
    bad = [
        ("Solve: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
         "How many?", "She sold 72 clips."),
        ("Complete this: def add(a, b): return the sum of a and b, both integers, without using the plus "
         "operator at all", "Use bit operations."),
    ]
    details = check("contamination", bad, cfg)
    assert "'mathqa' item 1" in details[0] and "'code' item T/0" in details[1]


def test_contamination_bad_field_names_file_and_fields(tmp_path: Path) -> None:
    from pipeline.quality.contamination import BenchmarkError, read_benchmark

    p = tmp_path / "b.jsonl"
    p.write_text('{"q": "x"}\n')
    with pytest.raises(BenchmarkError, match=r"no field 'question'.*\['q'\]"):
        read_benchmark(BenchmarkFile(name="b", path=p, field="question"))


def test_filter_frame_first_failing_filter_names_the_reason() -> None:
    df = frame([("Hi", ""), ("Who?", "As an AI language model, I cannot say.")] + CLEAN)
    res = filter_frame(df, QualityConfig(workers=1))
    assert res.dropped["reason"].to_list() == ["quality.empty", "quality.refusal"]
    assert res.kept.height == len(CLEAN) and "lang" in res.kept.columns and "pii_redactions" in res.kept.columns


def test_unknown_filter_name_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown filter"):
        QualityConfig(filters=["empty", "spelling"])


def test_sub_switches_turn_filters_off() -> None:
    df = frame([("¿Qué hora es en Madrid ahora mismo?", "Son las tres de la tarde en Madrid, según el reloj."),
                ("How do I contact Bob?", "Please mail bob@example.org and tell him the meeting moved to Friday.")])
    res = filter_frame(df, QualityConfig(workers=1, language={"enabled": False}, pii={"enabled": False}))
    assert res.kept.height == 2 and res.kept["pii_redactions"].to_list() == [0, 0]
    assert filter_frame(df, QualityConfig(workers=1)).kept.height == 1
