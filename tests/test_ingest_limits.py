"""Limits every reader applies: nesting depth, record size (a .jsonl line is a record), memory bounded.

A record that breaks a limit is quarantined alone (schema.too_deep, schema.too_large) with the head of
its raw bytes, and the records around it are read. Peak memory is measured in a fresh process
(ru_maxrss before and after), with an address-space cap so that a regression fails fast instead of
filling the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest.files import MAX_DEPTH, RAW_KEEP_BYTES
from tests.test_ingest import ingest, write_jsonl

REPO = Path(__file__).resolve().parent.parent
GOOD = {"instruction": "Name a colour.", "input": "", "output": "Red."}
DEEP = 100_000


def good(i: int) -> dict:
    return {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}


def deep_element(depth: int) -> bytes:
    return b'{"instruction": ' + b"[" * depth + b"]" * depth + b', "output": "x"}'


def quarantine(tmp_path: Path) -> dict[str, dict]:
    qf = pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet")
    return {r["origin"]: r for r in qf.iter_rows(named=True)}


def write_array(path: Path, elements: list[bytes]) -> Path:
    path.write_bytes(b"[\n" + b",\n".join(elements) + b"\n]\n")
    return path


# ------------------------------------------------------------------------------------------------ depth


def test_too_deep_element_in_json_array_is_quarantined_and_the_others_read(tmp_path):
    elements = [json.dumps(good(i)).encode() for i in range(30)]
    elements[3] = deep_element(MAX_DEPTH)  # 1 (object) + MAX_DEPTH levels: one over the limit
    elements[5] = deep_element(MAX_DEPTH - 1)  # exactly at the limit: read (and fails as a wrong type)
    path = write_array(tmp_path / "a.json", elements)
    stats, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {"s:3": "schema.too_deep", "s:5": "schema.wrong_type"}
    assert kept.height == 28 and stats["read"] == 30
    row = quarantine(tmp_path)["s:3"]
    assert row["raw"].startswith('{"instruction": [[[') and str(MAX_DEPTH) in row["errors"]


def test_too_deep_line_in_jsonl_is_quarantined_not_invalid_json(tmp_path):
    lines = [good(i) for i in range(5)]
    lines[1] = deep_element(DEEP).decode()  # past orjson's own limit
    lines[2] = deep_element(MAX_DEPTH).decode()  # under orjson's limit, over ours
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {"s:2": "schema.too_deep", "s:3": "schema.too_deep"}
    assert sorted(kept["origin"]) == ["s:1", "s:4", "s:5"]
    assert len(quarantine(tmp_path)["s:2"]["raw"]) <= RAW_KEEP_BYTES


def test_too_deep_single_object_file(tmp_path):
    path = tmp_path / "one.json"
    path.write_bytes(deep_element(DEEP))
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {"s:0": "schema.too_deep"} and kept.height == 0


def test_parquet_nested_deeper_than_the_limit_is_too_deep():
    from pipeline.ingest.files import Limits, iter_parquet

    t, v = pa.string(), "x"
    for _ in range(3):
        t, v = pa.struct([("a", t)]), {"a": v}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "n.parquet"
        pq.write_table(pa.table({"instruction": ["q", "r"], "output": ["a", "b"], "nested": pa.array([v, v], t)}), path)
        items = list(iter_parquet(path, limits=Limits(max_depth=3)))
        assert [i.error.code for i in items] == ["schema.too_deep"] * 2 and [i.locator for i in items] == ["0", "1"]
        assert all(i.error is None for i in iter_parquet(path, limits=Limits(max_depth=4)))


# ------------------------------------------------------------------------------------------------ size


def test_oversized_records_are_quarantined_with_their_head_on_every_reader(tmp_path):
    limit = 4096
    big = {"instruction": "x" * 10_000, "input": "", "output": "y"}
    # .jsonl: the over-long line is a record; the lines around it are read.
    path = write_jsonl(tmp_path / "a.jsonl", [good(0), big, good(2)])
    _, kept, q, _ = ingest(tmp_path, path, "alpaca", max_record_bytes=limit)
    assert q == {"s:2": "schema.too_large"} and sorted(kept["origin"]) == ["s:1", "s:3"]
    row = quarantine(tmp_path)["s:2"]
    assert row["raw"].startswith('{"instruction": "xxx') and len(row["raw"]) <= RAW_KEEP_BYTES
    assert "4,096" in row["errors"] and "max_record_bytes" in row["errors"]
    # .json array
    path = write_array(tmp_path / "a.json", [json.dumps(r).encode() for r in (good(0), big, good(2))])
    _, kept, q, _ = ingest(tmp_path, path, "alpaca", max_record_bytes=limit)
    assert q == {"s:1": "schema.too_large"} and sorted(kept["origin"]) == ["s:0", "s:2"]
    # .parquet row
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([good(0), big, good(2)]), path)
    _, kept, q, _ = ingest(tmp_path, path, "alpaca", max_record_bytes=limit)
    assert q == {"s:1": "schema.too_large"} and sorted(kept["origin"]) == ["s:0", "s:2"]
    assert len(quarantine(tmp_path)["s:1"]["raw"]) <= RAW_KEEP_BYTES


def test_parquet_string_cell_holding_deeply_nested_text_is_just_text(tmp_path):
    """A string cell is never parsed as JSON, so nesting inside it is text; its size still counts."""
    deep_text = "[" * DEEP + "]" * DEEP
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([good(0), {"instruction": "Q", "input": "", "output": deep_text}]), path)
    _, kept, q, _ = ingest(tmp_path, path, "alpaca")
    assert q == {} and kept.height == 2
    _, kept, q, _ = ingest(tmp_path, path, "alpaca", max_record_bytes=100_000)
    assert q == {"s:1": "schema.too_large"} and kept.height == 1


# ------------------------------------------------------------------------------------------------ memory

_MEASURE = r"""
import json, resource, sys
from pathlib import Path
from pipeline.ingest.stage import ingest_source
from schemas.config_sources import SourceConfig

warm, target, run, fmt = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
ingest_source(SourceConfig(name="w", path=warm, format=fmt, tier="expert"), run / "warm")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # cap the address space: a reader that grows without bound fails here instead of filling the machine
    with open("/proc/self/status") as f:
        vm = int(next(line for line in f if line.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
except (OSError, ValueError, StopIteration):
    pass
stats = ingest_source(SourceConfig(name="s", path=target, format=fmt, tier="expert"), run / "target").to_json()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mb": (after - before) / 1024, "read": stats["read"], "kept": stats["kept"],
                  "reasons": stats["dropped"]}))
"""


def _peak_extra(tmp_path: Path, target: Path, fmt: str = "alpaca") -> dict:
    warm = write_jsonl(tmp_path / "warm.jsonl", [good(i) for i in range(50)])
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(warm), str(target), str(tmp_path / "runs"), fmt],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deep_nesting_keeps_memory_bounded(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    elements = [json.dumps(good(i)).encode() for i in range(30)]
    elements[3] = deep_element(DEEP)
    if suffix == ".json":
        write_array(path, elements)
    else:
        path.write_bytes(b"\n".join(elements) + b"\n")
    out = _peak_extra(tmp_path, path)
    assert out["read"] == 30 and out["kept"] == 29 and out["reasons"] == {"schema.too_deep": 1}
    assert out["extra_mb"] < 200, out


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_huge_record_is_not_held_in_memory(tmp_path, suffix):
    """A 160 MB record (ten times the default 16 MiB limit) is skipped, not read whole."""
    path = tmp_path / f"huge{suffix}"
    sep = b",\n" if suffix == ".json" else b"\n"
    with open(path, "wb") as f:
        f.write(b"[" if suffix == ".json" else b"")
        f.write(json.dumps(good(0)).encode() + sep + b'{"instruction": "')
        for _ in range(160):
            f.write(b"x" * (1 << 20))
        f.write(b'", "output": "y"}' + sep + json.dumps(good(2)).encode())
        f.write(b"]" if suffix == ".json" else b"\n")
    out = _peak_extra(tmp_path, path)
    assert out["read"] == 3 and out["kept"] == 2 and out["reasons"] == {"schema.too_large": 1}
    assert out["extra_mb"] < 200, out
