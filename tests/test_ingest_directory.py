"""Directory sources: each file's own format, compressed files, files not read listed, empty sources warned."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest.stage import SourceError, ingest_source
from schemas.config_sources import SourceConfig
from tests.test_ingest import ingest, msgs


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


ALPACA = [{"instruction": f"Alpaca {i}?", "input": "", "output": f"A{i}."} for i in range(3)]
DOLLY = [{"instruction": f"Dolly {i}?", "context": "", "response": f"D{i}.", "category": "open_qa"} for i in range(2)]
SHAREGPT = [{"id": f"sg{i}", "conversations": [{"from": "human", "value": f"ShareGPT {i}?"},
                                                {"from": "gpt", "value": f"S{i}."}]} for i in range(2)]
OPENAI = [{"messages": [{"role": "user", "content": f"OpenAI {i}?"}, {"role": "assistant", "content": f"O{i}."}]}
          for i in range(2)]


def zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    out = pa.CompressedOutputStream(sink, "zstd")
    out.write(data)
    out.close()
    return sink.getvalue().to_pybytes()


def make_mixed_dir(d: Path) -> Path:
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_bytes(jsonl(ALPACA))
    (d / "b.jsonl.gz").write_bytes(gzip.compress(jsonl(DOLLY)))
    (d / "c.json").write_text(json.dumps(SHAREGPT, indent=2))
    (d / "sub" / "d.jsonl").write_bytes(jsonl(OPENAI))
    (d / "e.json.zst").write_bytes(zstd(json.dumps(ALPACA).encode()))
    (d / "f.jsonl.bz2").write_bytes(bz2.compress(jsonl(OPENAI)))
    (d / "g.json.xz").write_bytes(lzma.compress(json.dumps(SHAREGPT[0]).encode()))
    pq.write_table(pa.Table.from_pylist(DOLLY), d / "h.parquet")
    (d / "notes.txt").write_text("read me")
    (d / "table.csv").write_text("instruction,output\nQ,A\n")
    (d / "x.parquet.gz").write_bytes(b"whatever")
    return d


def test_mixed_directory_detects_each_files_format_and_reads_compressed_files(tmp_path):
    d = make_mixed_dir(tmp_path / "src")
    stats, kept, q, _ = ingest(tmp_path, d, None)
    assert q == {}
    assert stats["read"] == kept.height == 3 + 2 + 2 + 2 + 3 + 2 + 1 + 2
    assert stats["file_formats"] == {
        "a.jsonl": "alpaca", "b.jsonl.gz": "dolly", "c.json": "sharegpt", "e.json.zst": "alpaca",
        "f.jsonl.bz2": "openai", "g.json.xz": "sharegpt", "h.parquet": "dolly", "sub/d.jsonl": "openai"}
    assert stats["format"] == "mixed"
    # Origins name the file (its path under the directory) and the record's place in it.
    assert msgs(kept, "s:b.jsonl.gz:2") == [("user", "Dolly 1?"), ("assistant", "D1.")]
    assert msgs(kept, "s:c.json:1") == [("user", "ShareGPT 1?"), ("assistant", "S1.")]
    assert msgs(kept, "s:sub/d.jsonl:1") == [("user", "OpenAI 0?"), ("assistant", "O0.")]
    assert msgs(kept, "s:e.json.zst:2")[0] == ("user", "Alpaca 2?")
    assert msgs(kept, "s:g.json.xz:0")[0] == ("user", "ShareGPT 0?")
    assert msgs(kept, "s:h.parquet:0")[0] == ("user", "Dolly 0?")
    assert kept.filter(kept["origin"] == "s:c.json:0")["original_id"].item() == "sg0"


def test_files_not_read_are_listed_with_why_and_warned(tmp_path, caplog):
    d = make_mixed_dir(tmp_path / "src")
    with caplog.at_level(logging.WARNING):
        stats, _, _, _ = ingest(tmp_path, d, None)
    not_read = {Path(f["path"]).name: f["reason"] for f in stats["files_not_read"]}
    assert set(not_read) == {"notes.txt", "table.csv", "x.parquet.gz"}
    assert "unsupported file type '.csv'" in not_read["table.csv"]
    assert "parquet" in not_read["x.parquet.gz"]
    assert all(str(d) in f["path"] for f in stats["files_not_read"])
    warning = next(w for w in stats["warnings"] if "not read" in w)
    assert "table.csv" in warning and "notes.txt" in warning
    assert any("table.csv" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_configured_format_still_applies_to_every_file(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl(ALPACA))
    (d / "b.jsonl").write_bytes(jsonl(OPENAI))
    stats, kept, q, _ = ingest(tmp_path, d, "alpaca")
    assert kept.height == 3 and set(q.values()) == {"schema.missing_field"} and stats["format"] == "alpaca"


def test_a_file_whose_records_reveal_no_format_takes_the_directorys(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl(ALPACA))
    (d / "b.jsonl").write_bytes(b'{"broken\n' + jsonl([{"foo": 1}]))
    stats, kept, q, _ = ingest(tmp_path, d, None)
    assert kept.height == 3 and q == {"s:b.jsonl:1": "schema.invalid_json", "s:b.jsonl:2": "schema.missing_field"}
    assert stats["file_formats"]["b.jsonl"] == "alpaca"
    assert any("b.jsonl" in w and "format" in w for w in stats["warnings"])


@pytest.mark.parametrize("name", ["x.jsonl.gz", "x.json.gz", "x.jsonl.zst", "x.json.bz2", "x.jsonl.xz"])
def test_a_single_compressed_file(tmp_path, name):
    data = jsonl(ALPACA) if ".jsonl" in name else json.dumps(ALPACA).encode()
    comp = {"gz": gzip.compress, "zst": zstd, "bz2": bz2.compress, "xz": lzma.compress}[name.rsplit(".", 1)[1]]
    path = tmp_path / name
    path.write_bytes(comp(data))
    stats, kept, q, _ = ingest(tmp_path, path, None)
    assert kept.height == 3 and q == {} and stats["format"] == "alpaca"
    first = "s:1" if ".jsonl" in name else "s:0"
    assert msgs(kept, first)[0] == ("user", "Alpaca 0?")


@pytest.mark.parametrize("name, match", [
    ("x.csv", "unsupported file type '.csv'"),
    ("x.parquet.gz", "parquet"),
    ("x.jsonl.gz", "not a valid gzip"),
])
def test_a_single_unreadable_file_is_a_clear_source_error(tmp_path, name, match):
    path = tmp_path / name
    path.write_bytes(b"not what the name says")
    with pytest.raises(SourceError, match=match) as e:
        ingest_source(SourceConfig(name="s", path=path, format="alpaca", tier="expert"), tmp_path / "run")
    assert str(path) in str(e.value)


# ------------------------------------------------------------------------------------------------ empty


@pytest.mark.parametrize("name, body", [("a.jsonl", b""), ("a.jsonl", b"\n\n  \n"), ("a.json", b"[]"),
                                        ("a.json", b""), ("a.jsonl.gz", gzip.compress(b""))])
def test_an_empty_file_is_warned_not_silent(tmp_path, caplog, name, body):
    path = tmp_path / name
    path.write_bytes(body)
    with caplog.at_level(logging.WARNING):
        stats, kept, q, _ = ingest(tmp_path, path, None)
    assert stats["read"] == 0 and kept.height == 0
    assert f"source s: no records read from {path}" in stats["warnings"]
    assert any(f"no records read from {path}" in r.getMessage() for r in caplog.records)


def test_a_directory_whose_files_hold_no_records_is_warned(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b"")
    (d / "b.json").write_bytes(b"[]")
    stats, _, _, _ = ingest(tmp_path, d, "alpaca")
    assert stats["read"] == 0 and f"source s: no records read from {d}" in stats["warnings"]


def test_an_empty_file_beside_others_is_named(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl(ALPACA))
    (d / "b.jsonl").write_bytes(b"")
    stats, kept, _, _ = ingest(tmp_path, d, None)
    assert kept.height == 3 and f"source s: no records read from {d / 'b.jsonl'}" in stats["warnings"]


# ------------------------------------------------------------------------------------------------ report


def test_the_report_lists_files_not_read_and_ingest_warnings(tmp_path):
    from pipeline.report.html import render_html
    from pipeline.report.summary import summarize, summary_text
    from schemas.config import RunConfig

    d = make_mixed_dir(tmp_path / "src")
    (d / "empty.jsonl").write_bytes(b"")
    run = tmp_path / "run"
    cfg = RunConfig.model_validate({"name": "r", "output_dir": str(run),
                                    "sources": [{"name": "s", "path": str(d), "tier": "expert"}]})
    ingest_source(cfg.sources[0], run)
    summary = summarize(run, cfg)
    assert {Path(f["path"]).name for f in summary["files_not_read"]} == {"notes.txt", "table.csv", "x.parquet.gz"}
    assert all(f["source"] == "s" for f in summary["files_not_read"])
    text = summary_text(summary)
    assert "not read" in text and "table.csv" in text and "no records read" in text
    html = render_html(summary)
    assert "Files not read" in html and "table.csv" in html and "unsupported file type" in html


def test_oasst_files_in_a_mixed_directory_are_assembled_together(tmp_path):
    from tests.test_ingest_oasst import row

    d = tmp_path / "src"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl(ALPACA))
    # One tree split over two files: trees are rebuilt across the directory's OASST files.
    (d / "o1.jsonl").write_bytes(jsonl([row("r", None, "prompter", "Root?"), row("x", "gone", "assistant", "Orphan.")]))
    (d / "o2.jsonl.gz").write_bytes(gzip.compress(jsonl([row("r1", "r", "assistant", "Reply.", rank=0, tree="r")])))
    stats, kept, q, _ = ingest(tmp_path, d, None)
    assert stats["file_formats"] == {"a.jsonl": "alpaca", "o1.jsonl": "oasst", "o2.jsonl.gz": "oasst"}
    assert msgs(kept, "s:r") == [("user", "Root?"), ("assistant", "Reply.")]
    assert q == {"s:x": "schema.orphan_reply"} and kept.height == 4
