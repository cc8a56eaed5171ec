"""Property tests: random bytes and random JSON never crash a reader, and the ledger always balances."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.ledger import read_ledger
from pipeline.ingest.stage import ingest_source
from schemas.config_sources import SourceConfig

FORMATS = ["alpaca", "dolly", "sharegpt", "openai", "oasst", "prompt_completion"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.integers() | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=8)

# Keys of every format, so random records reach past "missing field" into roles, turns and trees.
KEYS = ["instruction", "input", "output", "context", "response", "category", "conversations", "from", "value",
        "messages", "role", "content", "id", "system", "prompt", "completion", "inputs", "targets"]
ROLES = ["user", "assistant", "system", "human", "gpt", "bot", "prompter", ""]
turn = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(ROLES), "from": st.sampled_from(ROLES), "content": st.text(max_size=6) | json_scalars,
    "value": st.text(max_size=6) | json_scalars})
near_records = st.dictionaries(
    st.sampled_from(KEYS), st.text(max_size=6) | json_scalars | st.lists(turn, max_size=4), max_size=6)
ids = st.sampled_from(["r", "a", "b", "c", "1", "2", ""]) | st.none()
oasst_rows = st.fixed_dictionaries(
    {"message_id": ids, "parent_id": ids},
    optional={"text": st.text(max_size=6) | st.none(), "role": st.sampled_from(["prompter", "assistant", "x"]),
              "deleted": st.booleans() | st.none(), "review_result": st.booleans() | st.none(),
              "rank": st.none() | st.integers(0, 3) | st.floats(allow_nan=True), "message_tree_id": ids})


def check_balanced(path: Path, fmt: str | None, run: Path, **kw) -> dict:
    stats = ingest_source(SourceConfig(name="s", path=path, format=fmt, tier="crowdsourced", **kw), run)
    kept = [o for p in stats["parts"] for o in pl.read_parquet(p, columns=["origin"])["origin"]]
    ledger = read_ledger(run)
    origins = kept + ledger["origin"].to_list()
    assert stats["read"] == stats["kept"] + stats["quarantined"] + stats["dropped"]
    assert stats["kept"] == len(kept) and ledger.height == stats["quarantined"] + stats["dropped"]
    assert len(origins) == len(set(origins)) == stats["read"]
    assert all(o.startswith("s:") for o in origins)
    assert pl.read_parquet(run / "quarantine" / "s.parquet").height == stats["quarantined"]
    return stats


@SETTINGS
@given(data=st.binary(max_size=300), fmt=st.sampled_from(FORMATS), suffix=st.sampled_from([".jsonl", ".json"]),
       head=st.sampled_from([b"", b"[", b'[{"', b'{"', b"\n"]))
def test_random_bytes_never_crash(data, fmt, suffix, head):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"in{suffix}"
        path.write_bytes(head + data)
        check_balanced(path, fmt, Path(d) / "run")


@SETTINGS
@given(values=st.lists(json_values | near_records, max_size=8), fmt=st.sampled_from(FORMATS),
       as_array=st.booleans())
def test_random_json_records_never_crash(values, fmt, as_array):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("in.json" if as_array else "in.jsonl")
        if as_array:
            path.write_text(json.dumps(values))
        else:
            path.write_text("".join(json.dumps(v) + "\n" for v in values))
        check_balanced(path, fmt, Path(d) / "run")


@SETTINGS
@given(rows=st.lists(oasst_rows, max_size=10), mode=st.sampled_from(["best", "all"]))
def test_random_oasst_forests_balance(rows, mode):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "o.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        stats = check_balanced(path, "oasst", Path(d) / "run", oasst_paths=mode)
        # Each record stands on a row of its own (a bad row, a root, an orphan, a cycle member, a leaf).
        assert (1 if rows else 0) <= stats["read"] <= len(rows)


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=60).map(str.encode), sizes=st.lists(st.integers(1, 7), min_size=1))
def test_utf8_guard_marks_exactly_the_invalid_bytes_whatever_the_read_sizes(data, sizes):
    """Invalid bytes become markers and valid text passes unchanged, even when a read splits a character."""
    import io

    from pipeline.ingest.files import _Utf8Guard, restore_bad_bytes

    guard = _Utf8Guard(io.BytesIO(data))
    out, i = b"", 0
    while chunk := guard.read(sizes[i % len(sizes)]) if i < 10_000 else b"":
        out += chunk
        i += 1
    out += guard.read(1)  # flush anything held back at EOF
    expected = data.decode("utf-8", "backslashreplace")
    assert restore_bad_bytes(out.decode("utf-8")) == expected
    assert guard.saw_invalid == (expected != data.decode("utf-8", "replace"))


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({
    "instruction": st.none() | st.text(max_size=5), "input": st.none() | st.text(max_size=5),
    "output": st.none() | st.text(max_size=5)}), min_size=1, max_size=12))
def test_parquet_rows_kept_exactly_when_instruction_and_output_have_text(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.conversation import canonical_text

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.parquet"
        schema = pa.schema([(k, pa.string()) for k in ("instruction", "input", "output")])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=5)
        stats = check_balanced(path, "alpaca", Path(d) / "run")
        good = sum(bool(r["instruction"] and canonical_text(r["instruction"]) and r["output"]
                        and canonical_text(r["output"])) for r in rows)
        assert stats["kept"] == good and stats["read"] == len(rows)
