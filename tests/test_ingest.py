"""Ingestion readers on tiny inline data: kept conversations, every failure kind, exact codes and origins."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.ledger import read_ledger
from pipeline.ingest.canonical import CANONICAL_SCHEMA
from pipeline.ingest.stage import IngestResult, SourceError, ingest_source
from schemas.config_sources import SourceConfig
from schemas.conversation import conversation_id


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines; a bytes or str row is written verbatim (for broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in rows:
            if isinstance(r, bytes):
                f.write(r + b"\n")
            elif isinstance(r, str):
                f.write(r.encode() + b"\n")
            else:
                f.write(json.dumps(r).encode() + b"\n")
    return path


def ingest(tmp_path: Path, path: Path, fmt: str | None, **kw) -> tuple[dict, pl.DataFrame, dict, dict]:
    """Run ingestion; return stats, kept frame, {origin: reason} of quarantined, {origin: reason} of dropped."""
    chunk_rows = kw.pop("chunk_rows", 50_000)
    src = SourceConfig(name="s", path=path, format=fmt, tier=kw.pop("tier", "synthetic"), **kw)
    run = tmp_path / "run"
    result = ingest_source(src, run, chunk_rows=chunk_rows)
    # a typed result, written to stats.json and read back as the same
    assert isinstance(result, IngestResult) and IngestResult.read(run / "work" / "ingest" / "s" / "stats.json") == result
    assert result.dropped_records + result.quarantined == sum(result.dropped.values())
    stats = result.to_json()
    kept = pl.concat([pl.read_parquet(p) for p in stats["parts"]]) if stats["parts"] else pl.DataFrame(
        schema=CANONICAL_SCHEMA)
    ledger = read_ledger(run)
    q = dict(ledger.filter(pl.col("outcome") == "quarantined").select("origin", "reason").iter_rows())
    d = dict(ledger.filter(pl.col("outcome") == "dropped").select("origin", "reason").iter_rows())
    assert stats["read"] == stats["kept"] + stats["quarantined"] + stats["dropped_records"]
    assert stats["kept"] == kept.height and stats["quarantined"] == len(q) and stats["dropped_records"] == len(d)
    all_origins = list(kept["origin"]) + list(q) + list(d)
    assert len(all_origins) == len(set(all_origins)) == stats["read"]
    return stats, kept, q, d


def msgs(df: pl.DataFrame, origin: str) -> list[tuple[str, str]]:
    row = df.filter(pl.col("origin") == origin)["messages"].to_list()[0]
    return [(m["role"], m["content"]) for m in row]


# ------------------------------------------------------------------------------------------------ alpaca


def test_alpaca_kept_input_joined_placeholders_and_every_failure(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},           # 1
        {"instruction": "Say hi.", "input": "Noinput", "output": "Hi!"},                  # 2
        {"instruction": "Say bye.", "input": " <NOINPUT> ", "output": "Bye."},            # 3
        {"instruction": "Name a colour.", "input": "n/a", "output": "Red."},              # 4
        {"instruction": "Name a fruit.", "output": "Apple."},                             # 5 (no input key)
        {"instruction": "Q", "input": ""},                                                # 6 missing output
        {"instruction": "Q", "input": "", "output": 42},                                  # 7 wrong type
        {"instruction": None, "input": "", "output": "x"},                                # 8 null
        '{"instruction": "trunc", "output": "tr',                                         # 9 broken JSON
        b'{"instruction": "bad \xff\xfe bytes", "input": "", "output": "x"}',            # 10 invalid UTF-8
        ["Q", "A"],                                                                       # 11 array
        {"instruction": "Q", "input": "", "output": "   "},                               # 12 empty output
        "",                                                                               # 13 blank: no record
        {"instruction": "Explain.", "input": "None", "output": "Done.", "extra": 1},      # 14
    ])
    stats, kept, q, d = ingest(tmp_path, path, "alpaca", license="cc-by-nc-4.0")
    assert q == {
        "s:6": "schema.missing_field", "s:7": "schema.wrong_type", "s:8": "schema.wrong_type",
        "s:9": "schema.invalid_json", "s:10": "schema.invalid_utf8", "s:11": "schema.wrong_type",
        "s:12": "schema.empty_content",
    }
    assert d == {}
    assert stats["read"] == 13 and stats["kept"] == 6
    assert msgs(kept, "s:1") == [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")]
    assert msgs(kept, "s:2") == [("user", "Say hi."), ("assistant", "Hi!")]
    assert msgs(kept, "s:3")[0] == ("user", "Say bye.")
    assert msgs(kept, "s:4")[0] == ("user", "Name a colour.")
    assert msgs(kept, "s:5")[0] == ("user", "Name a fruit.")
    assert msgs(kept, "s:14")[0] == ("user", "Explain.")
    row = kept.filter(pl.col("origin") == "s:1").row(0, named=True)
    assert row["source"] == "s" and row["tier"] == "synthetic" and row["license"] == "cc-by-nc-4.0"
    assert row["conversation_id"] == conversation_id([("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")])
    assert kept.schema == pl.Schema(CANONICAL_SCHEMA)
    assert stats["dropped"] == {"schema.empty_content": 1, "schema.invalid_json": 1, "schema.invalid_utf8": 1,
                                "schema.missing_field": 1, "schema.wrong_type": 3}


def test_quarantine_file_holds_raw_text_and_errors_naming_the_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Q", "input": ""},
        {"instruction": "Q", "input": "", "output": 42},
        b'{"instruction": "bad \xff bytes", "input": "", "output": "x"}',
    ])
    ingest(tmp_path, path, "alpaca")
    qf = pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet")
    assert qf.columns == ["origin", "source", "tier", "reason", "errors", "raw"]
    by = {r["origin"]: r for r in qf.iter_rows(named=True)}
    assert "'output' is missing" in by["s:1"]["errors"]
    assert "'output'" in by["s:2"]["errors"] and "string" in by["s:2"]["errors"] and "42" in by["s:2"]["errors"]
    assert by["s:2"]["raw"] == '{"instruction": "Q", "input": "", "output": 42}'
    assert "\\xff" in by["s:3"]["raw"] and by["s:3"]["tier"] == "synthetic"
    ledger = read_ledger(tmp_path / "run")
    assert set(ledger["stage"]) == {"ingest"} and ledger["detail"].null_count() == 0


# ------------------------------------------------------------------------------------------------ dolly


def test_dolly_context_and_category(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
        {"instruction": "Brainstorm.", "context": "", "response": "Ideas.", "category": "brainstorming"},
        {"instruction": "Q", "context": "", "category": "open_qa"},
        {"instruction": "Q", "context": "", "response": ["a", "b"], "category": "open_qa"},
        "not json at all",
    ])
    _, kept, q, _ = ingest(tmp_path, path, "dolly")
    assert msgs(kept, "s:1") == [("user", "Summarise.\n\nA long text."), ("assistant", "Short.")]
    assert kept.filter(pl.col("origin") == "s:2")["category"].item() == "brainstorming"
    assert q == {"s:3": "schema.missing_field", "s:4": "schema.wrong_type", "s:5": "schema.invalid_json"}


# ------------------------------------------------------------------------------------------------ sharegpt


def test_sharegpt_speakers_system_ids_and_failures(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                      {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "More"},
                                      {"from": "ChatGPT", "value": "Sure"}]},
        {"id": 7, "conversations": [{"from": "human", "value": "Q"}, {"from": "bard", "value": "A"}]},
        {"id": "c", "conversations": []},
        {"id": "d", "conversations": [{"from": "gpt", "value": "I start"}, {"from": "human", "value": "Q"}]},
        {"id": "e", "conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]},
        {"id": "f", "conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q2"}]},
        {"id": "g", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": ""}]},
        {"id": "h", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt"}]},
        {"id": "i", "conversations": "human: hi"},
        {"id": "j", "conversations": [{"from": "human", "value": "Q"}]},
        {"system": "Be kind.", "conversations": [{"from": "human", "value": "Q"}, {"from": "model", "value": "A"}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(records, indent=1))
    _, kept, q, _ = ingest(tmp_path, path, "sharegpt")
    assert msgs(kept, "s:0") == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"),
                                 ("user", "More"), ("assistant", "Sure")]
    assert kept.filter(pl.col("origin") == "s:0")["original_id"].item() == "a"
    assert kept.filter(pl.col("origin") == "s:1")["original_id"].item() == "7"
    assert msgs(kept, "s:10")[0] == ("system", "Be kind.")
    assert q == {
        "s:2": "schema.no_assistant_reply", "s:3": "schema.not_alternating", "s:4": "schema.unknown_role",
        "s:5": "schema.not_alternating", "s:6": "schema.empty_content", "s:7": "schema.missing_field",
        "s:8": "schema.wrong_type", "s:9": "schema.no_assistant_reply",
    }
    errors = dict(pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet").select("origin", "errors").iter_rows())
    assert "conversations.1.from" in errors["s:4"] and "'robot'" in errors["s:4"]
    assert "conversations.1.value" in errors["s:7"]


def test_single_object_json_file_is_one_record(tmp_path):
    """axolotl's ShareGPT fixtures are one top-level object, not an array."""
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}))
    stats, kept, q, _ = ingest(tmp_path, path, None)
    assert stats["format"] == "sharegpt" and list(kept["origin"]) == ["s:0"] and q == {}


def test_json_array_with_invalid_utf8_and_a_broken_element(tmp_path):
    good = json.dumps({"instruction": "Q", "input": "", "output": "A"}).encode()
    bad = b'{"instruction": "b\xffd", "input": "", "output": "A"}'
    path = tmp_path / "a.json"
    path.write_bytes(b"[" + good + b",\n" + bad + b",\n" + good + b",\n" + b'{"instruction": tru}, ' + good + b"]")
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert list(kept["origin"]) == ["s:0", "s:2", "s:4"]  # a broken element costs only itself
    assert q == {"s:1": "schema.invalid_utf8", "s:3": "schema.invalid_json"}
    raw = dict(pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet").select("origin", "raw").iter_rows())
    assert "b\\xffd" in raw["s:1"]


# ------------------------------------------------------------------------------------------------ openai


def test_openai_messages_and_failures(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "x1", "messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "  Q \n"},
                                  {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]},
        {"messages": "user: hi"},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                      {"role": "assistant", "content": "A2"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "system", "content": "late"},
                      {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]},
    ])
    _, kept, q, _ = ingest(tmp_path, path, "openai", tier="expert")
    assert msgs(kept, "s:1") == [("system", "Sys"), ("user", "Q"), ("assistant", "A")]
    assert kept["original_id"].to_list() == ["x1"] and kept["tier"].to_list() == ["expert"]
    assert q == {
        "s:2": "schema.no_assistant_reply", "s:3": "schema.unknown_role", "s:4": "schema.missing_field",
        "s:5": "schema.wrong_type", "s:6": "schema.not_alternating", "s:7": "schema.misplaced_system",
        "s:8": "schema.wrong_type",
    }


# ------------------------------------------------------------------------------------------------ prompt/completion


def test_prompt_completion_and_flan_strip_end_markers(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Review: great film. Sentiment?", "completion": " positive<|endoftext|>"},
        {"inputs": "Translate: chat", "targets": "cat</s>"},
        {"prompt": "Q"},
        {"prompt": "Q", "completion": "<|endoftext|>"},
    ])
    _, kept, q, _ = ingest(tmp_path, path, "prompt_completion")
    assert msgs(kept, "s:1") == [("user", "Review: great film. Sentiment?"), ("assistant", "positive")]
    assert msgs(kept, "s:2") == [("user", "Translate: chat"), ("assistant", "cat")]
    assert q == {"s:3": "schema.missing_field", "s:4": "schema.empty_content"}


def test_prompt_completion_custom_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "Q?", "answer": "A. [END]"}, {"question": "Q?"}])
    _, kept, q, _ = ingest(tmp_path, path, "prompt_completion", prompt_field="question",
                           completion_field="answer", strip_suffixes=["[END]"])
    assert msgs(kept, "s:1") == [("user", "Q?"), ("assistant", "A.")]
    assert q == {"s:2": "schema.missing_field"}
    errors = pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet")["errors"].item()
    assert "'answer' is missing" in errors


# ------------------------------------------------------------------------------------------------ files


def test_parquet_source_streams_row_batches(tmp_path):
    rows = [{"instruction": f"Q{i}", "input": "", "output": f"A{i}" if i != 3 else ""} for i in range(5)]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    stats, kept, q, _ = ingest(tmp_path, path, None)
    assert stats["format"] == "alpaca" and kept.height == 4 and q == {"s:3": "schema.empty_content"}
    assert msgs(kept, "s:0") == [("user", "Q0"), ("assistant", "A0")]


def test_directory_source_names_the_file_in_origins_and_chunks(tmp_path):
    d = tmp_path / "src"
    write_jsonl(d / "b.jsonl", [{"instruction": f"Q{i}", "output": "A"} for i in range(3)])
    write_jsonl(d / "a.jsonl", [{"instruction": "Q", "output": "A"}, {"instruction": "Q"}])
    (d / "notes.txt").write_text("ignored")
    stats, kept, q, _ = ingest(tmp_path, d, "alpaca", chunk_rows=2)
    assert sorted(kept["origin"]) == ["s:a.jsonl:1", "s:b.jsonl:1", "s:b.jsonl:2", "s:b.jsonl:3"]
    assert q == {"s:a.jsonl:2": "schema.missing_field"}
    assert [Path(p).name for p in stats["parts"]] == ["part-00000.parquet", "part-00001.parquet"]


def test_format_detected_from_first_decodable_record(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", ["{broken", {"messages": [{"role": "user", "content": "Q"},
                                                                      {"role": "assistant", "content": "A"}]}])
    stats, kept, q, _ = ingest(tmp_path, path, None)
    assert stats["format"] == "openai" and q == {"s:1": "schema.invalid_json"} and kept.height == 1


def test_rerun_replaces_outputs(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"Q{i}", "output": "A"} for i in range(5)])
    ingest(tmp_path, path, "alpaca", chunk_rows=2)
    write_jsonl(path, [{"instruction": "Q", "output": "A"}])
    stats, kept, _, _ = ingest(tmp_path, path, "alpaca", chunk_rows=2)
    assert len(list((tmp_path / "run" / "work" / "ingest" / "s").glob("part-*.parquet"))) == 1 == len(stats["parts"])


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.jsonl", "does not exist"),
    (lambda p: (p / "empty_dir").mkdir() or p / "empty_dir", "no .jsonl, .json or .parquet"),
    (lambda p: (p / "x.csv").write_text("a,b") and p / "x.csv", "unsupported file type"),
    (lambda p: (p / "x.parquet").write_bytes(b"not parquet") and p / "x.parquet", "not a readable parquet"),
    (lambda p: write_jsonl(p / "u.jsonl", [{"foo": 1}]), "cannot tell the format"),
])
def test_unreadable_source_is_a_clear_error_naming_the_path(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(SourceError, match=match) as e:
        ingest_source(SourceConfig(name="s", path=path, tier="expert"), tmp_path / "run")
    assert str(path) in str(e.value)


def test_parts_are_also_bounded_by_text_size(tmp_path):
    from pipeline.ingest.stage import _PartWriter

    src = SourceConfig(name="s", path=tmp_path, tier="expert")
    w = _PartWriter(tmp_path / "out", src, chunk_rows=1000, chunk_chars=50)
    for i in range(5):
        w.add(f"s:{i}", [{"role": "user", "content": "q" * 10}, {"role": "assistant", "content": "a" * 20}], None, None)
    w.flush()
    assert [pl.read_parquet(p).height for p in w.parts] == [2, 2, 1]


@pytest.mark.parametrize("name, body", [
    ("a.jsonl", b'{"instruction": "Q", "output": "A"}\r\n{"instruction": "Q2", "output": "A2"}\r\n'),
    ("a.json", b'[{"instruction": "Q", "output": "A"}, {"instruction": "Q2", "output": "A2"}]'),
    ("a.json", b'{"instruction": "Q", "output": "A"}\n{"instruction": "Q2", "output": "A2"}\n'),
])
def test_byte_order_mark_and_crlf_are_tolerated(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body)
    stats, kept, q, _ = ingest(tmp_path, path, None)
    assert q == {} and kept.height == 2 and stats["format"] == "alpaca"


def test_empty_instruction_with_an_input_is_empty_content_naming_the_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": " ", "input": "some text", "output": "A"},
                                              {"instruction": "Q", "input": "", "output": "\n"}])
    ingest(tmp_path, path, "alpaca")
    errors = dict(pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet").select("origin", "errors").iter_rows())
    assert errors == {"s:1": "field 'instruction' is empty or whitespace only",
                      "s:2": "field 'output' is empty or whitespace only"}


def test_unreadable_file_inside_a_directory_fails_cleanly(tmp_path):
    d = tmp_path / "src"
    write_jsonl(d / "a.jsonl", [{"instruction": "Q", "output": "A"}] * 1200)  # past the format-detection window
    (d / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="b.parquet"):
        ingest_source(SourceConfig(name="s", path=d, format="alpaca", tier="expert"), tmp_path / "run")
    assert not [p for p in (tmp_path / "run" / "quarantine").iterdir() if p.name.endswith(".tmp")]


def test_flan_format_reads_inputs_and_targets(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"inputs": "Is the sky blue?", "targets": "yes"}, {"inputs": "Q"}])
    _, kept, q, _ = ingest(tmp_path, path, "flan")
    assert msgs(kept, "s:1") == [("user", "Is the sky blue?"), ("assistant", "yes")]
    assert q == {"s:2": "schema.missing_field"}
    assert "'targets' is missing" in pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet")["errors"].item()


def test_json_array_with_huge_numbers_reads_on(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[123456789012345678901234567890, {"instruction": 1e400, "output": "x"}, '
                    '{"instruction": "ok", "output": "y", "n": 99999999999999999999999}]')
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {"s:0": "schema.wrong_type", "s:1": "schema.wrong_type"} and list(kept["origin"]) == ["s:2"]
    errors = dict(pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet").select("origin", "errors").iter_rows())
    assert errors["s:0"] == "record: expected a JSON object, got number"  # orjson: beyond 64 bits, a float
    assert "'instruction'" in errors["s:1"] and "got number" in errors["s:1"]
