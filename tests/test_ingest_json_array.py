"""The tolerant JSON-array reader and line splitting: one bad element or byte loses only its own record.

Every element of an array is located by its 0-based index, every line of a .jsonl by its 1-based
number (\\n, \\r\\n and a lone \\r all end a line). A malformed element is quarantined alone with its raw
bytes; a truncated array keeps every complete element; garbage resynchronises at the next element.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from tests.test_ingest import ingest, msgs


def good(i: int) -> dict:
    return {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}


def elements(n: int = 30) -> list[bytes]:
    return [json.dumps(good(i)).encode() for i in range(n)]


def array(parts: list[bytes], sep: bytes = b", ") -> bytes:
    return b"[" + sep.join(parts) + b"]"


def raws(tmp_path: Path) -> dict[str, str]:
    qf = pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet")
    return dict(qf.select("origin", "raw").iter_rows())


def origins(n: int, but: set[int] = frozenset()) -> list[str]:
    return [f"s:{i}" for i in range(n) if i not in but]


@pytest.mark.parametrize("bad", [b"\x00", b"\t", b"\x01", b"\n", b"\x1f"])
@pytest.mark.parametrize("sep", [b", ", b",\n    "])
def test_raw_control_character_in_one_element_loses_only_that_element(tmp_path, bad, sep):
    parts = elements()
    parts[3] = b'{"instruction": "Question' + bad + b'3?", "input": "", "output": "Answer 3."}'
    path = tmp_path / "a.json"
    path.write_bytes(array(parts, sep))
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {"s:3": "schema.invalid_json"}
    assert sorted(kept["origin"], key=lambda o: int(o[2:])) == origins(30, {3})
    assert stats["read"] == 30 and stats["kept"] == 29
    # The quarantine holds the element itself, not a parser message.
    assert raws(tmp_path)["s:3"] == parts[3].decode()


def test_garbage_between_and_inside_elements_resynchronises_at_the_next_element(tmp_path):
    parts = elements(8)
    parts[2] = parts[2] + b" garbage"          # after an element, before its comma
    parts[4] = b"}}" + parts[4]               # stray closers
    parts[6] = parts[6][:-1] + b"]]}"         # stray closers inside
    path = tmp_path / "a.json"
    path.write_bytes(array(parts) + b"\n")
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {"s:2": "schema.invalid_json", "s:4": "schema.invalid_json", "s:6": "schema.invalid_json"}
    assert sorted(kept["origin"]) == ["s:0", "s:1", "s:3", "s:5", "s:7"]
    assert raws(tmp_path)["s:2"] == parts[2].decode()


@pytest.mark.parametrize("stray", [b"{", b"[", b'"', b'{"x": ['])
def test_an_unbalanced_element_does_not_swallow_the_rest(tmp_path, stray):
    parts = elements(6)
    parts[2] = b'{"instruction": ' + stray + b'"Question 2?", "input": "", "output": "Answer 2."}'
    path = tmp_path / "a.json"
    path.write_bytes(array(parts))
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {"s:2": "schema.invalid_json"}
    assert sorted(kept["origin"]) == ["s:0", "s:1", "s:3", "s:4", "s:5"]
    assert msgs(kept, "s:5") == [("user", "Question 5?"), ("assistant", "Answer 5.")]


def test_truncated_array_keeps_every_complete_element_and_quarantines_the_tail(tmp_path):
    data = array(elements(10))
    cut = data.index(b'"Answer 7."')  # inside element 7
    path = tmp_path / "a.json"
    path.write_bytes(data[:cut])
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert sorted(kept["origin"], key=lambda o: int(o[2:])) == origins(7)
    assert q == {"s:7": "schema.invalid_json"} and stats["read"] == 8
    assert raws(tmp_path)["s:7"] == data[data.index(b'{"instruction": "Question 7?"'):cut].decode().strip()


def test_array_that_never_closes_after_a_complete_element_keeps_it_and_warns(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(array(elements(3))[:-1] + b"\n")
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert kept.height == 3 and q == {}
    assert any("never closes" in w for w in stats["warnings"])


def test_truncated_gzip_array_keeps_what_was_decompressed(tmp_path):
    path = tmp_path / "a.json.gz"
    full = gzip.compress(array(elements(2000)) * 1, compresslevel=1)
    path.write_bytes(full[: len(full) // 2])
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert 0 < kept.height < 2000 and len(q) <= 1
    assert sorted(kept["origin"], key=lambda o: int(o[2:])) == origins(kept.height)
    assert any("a.json.gz" in w and "truncated" in w for w in stats["warnings"])


def test_content_after_the_array_is_one_more_record(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(array(elements(2)) + b"\n" + array(elements(1)) + b" tail")
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert sorted(kept["origin"]) == ["s:0", "s:1"]
    assert q == {"s:2": "schema.invalid_json"}
    assert raws(tmp_path)["s:2"] == (array(elements(1)) + b" tail").decode()
    assert any("after the end of the JSON array" in w for w in stats["warnings"])


# ------------------------------------------------------------------------------------------------ lines


@pytest.mark.parametrize("eol", [b"\r", b"\r\n", b"\n"])
def test_every_line_ending_splits_jsonl_records(tmp_path, eol):
    path = tmp_path / "a.jsonl"
    path.write_bytes(eol.join(elements()) + eol)
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert stats["read"] == 30 and q == {}
    assert msgs(kept, "s:30") == [("user", "Question 29?"), ("assistant", "Answer 29.")]


def test_mixed_line_endings_and_blank_lines_keep_line_numbers(tmp_path):
    e = elements(5)
    path = tmp_path / "a.jsonl"
    path.write_bytes(e[0] + b"\r" + e[1] + b"\r\n\r\n" + e[2] + b"\n\r" + e[3] + b"\n" + b'{"broken\r' + e[4])
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    # lines: 1 e0 | 2 e1 | 3 blank | 4 e2 | 5 blank | 6 e3 | 7 broken | 8 e4
    assert sorted(kept["origin"]) == ["s:1", "s:2", "s:4", "s:6", "s:8"] and q == {"s:7": "schema.invalid_json"}


def test_crlf_split_across_read_chunks_counts_one_line_end(tmp_path, monkeypatch):
    from pipeline.ingest import raw

    monkeypatch.setattr(raw, "CHUNK_BYTES", 7)
    e = elements(6)
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\r\n".join(e) + b"\r\n")
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert stats["read"] == 6 and q == {} and msgs(kept, "s:6")[0] == ("user", "Question 5?")


# ------------------------------------------------------------------------------------------------ NUL


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_nul_characters_are_removed_from_text(tmp_path, suffix):
    """Decided: U+0000 (escaped \\u0000 in JSON, or inside a parquet string) is removed from all text."""
    rows = [{"instruction": "Na\u0000me a colour.", "input": "", "output": "Red.\u0000"},
            {"instruction": "Q", "input": "", "output": "\u0000 \u0000"}]
    path = tmp_path / f"a{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    first = kept["origin"][0]
    assert msgs(kept, first) == [("user", "Name a colour."), ("assistant", "Red.")]
    assert list(q.values()) == ["schema.empty_content"]


def test_an_element_running_past_the_size_limit_resynchronises_while_streaming(tmp_path):
    """A stray '{' early in a long array: the element runs past max_record_bytes, and reading resumes
    at the next good element instead of skipping the rest of the file."""
    parts = elements(3000)
    parts[1] = b'{"instruction": {"Question 1?", "input": "", "output": "Answer 1."}'
    path = tmp_path / "a.json"
    path.write_bytes(array(parts))
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca", max_record_bytes=4096)
    assert q == {"s:1": "schema.invalid_json"} and kept.height == 2999
    assert msgs(kept, "s:2999") == [("user", "Question 2999?"), ("assistant", "Answer 2999.")]


def test_blanks_longer_than_the_size_limit_are_not_a_record(tmp_path):
    path = tmp_path / "a.json"
    e = elements(3)
    path.write_bytes(b"[" + e[0] + b"," + b" " * 5000 + e[1] + b",\n" + b"\n" * 5000 + e[2] + b"]")
    _, kept, q, _ = ingest(tmp_path, path, "alpaca", max_record_bytes=1024)
    assert q == {} and kept.height == 3


def test_a_single_top_level_value_over_the_size_limit(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"instruction": "x" * 3000, "output": "y"}))
    _, kept, q, _ = ingest(tmp_path, path, "alpaca", max_record_bytes=1024)
    assert q == {"s:0": "schema.too_large"} and kept.height == 0


def test_json_lines_in_a_json_file_count_the_blank_lines_before_them(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"\n\n" + b"\n".join(elements(2)) + b"\n")
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert sorted(kept["origin"]) == ["s:3", "s:4"] and q == {}


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_escapes_and_brackets_in_strings_whatever_the_read_size(tmp_path, monkeypatch, chunk):
    from pipeline.ingest import raw

    monkeypatch.setattr(raw, "CHUNK_BYTES", chunk)
    rows = [{"instruction": f'Say "hi" {i} \\\\', "input": "", "output": 'a ", [{ b\\" }]'} for i in range(20)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, indent=2))
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {} and kept.height == 20
    assert msgs(kept, "s:19") == [("user", 'Say "hi" 19 \\\\'), ("assistant", 'a ", [{ b\\" }]')]
