"""Property tests: random bytes and random JSON never crash a reader, and the ledger always balances.

The JSON-array tests damage a valid array (bytes inserted anywhere, a truncation point, a control
character inside a string) and check the ledger against `reference_segments`, a byte-at-a-time
statement of the splitting rules (pipeline.ingest.files): every element the rules find intact is kept
under its own index, each origin once, and read == kept + quarantined.
"""

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
    stats = ingest_source(SourceConfig(name="s", path=path, format=fmt, tier="crowdsourced", **kw), run).to_json()
    kept = [o for p in stats["parts"] for o in pl.read_parquet(p, columns=["origin"])["origin"]]
    ledger = read_ledger(run)
    origins = kept + ledger["origin"].to_list()
    assert stats["read"] == stats["kept"] + stats["quarantined"] + stats["dropped_records"]
    assert stats["kept"] == len(kept) and ledger.height == stats["quarantined"] + stats["dropped_records"]
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
@given(rows=st.lists(st.fixed_dictionaries({
    "instruction": st.none() | st.text(max_size=5), "input": st.none() | st.text(max_size=5),
    "output": st.none() | st.text(max_size=5)}), min_size=1, max_size=12))
def test_parquet_rows_kept_exactly_when_instruction_and_output_have_text(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.ingest.formats import without_nul
    from schemas.conversation import canonical_text

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.parquet"
        schema = pa.schema([(k, pa.string()) for k in ("instruction", "input", "output")])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=5)
        stats = check_balanced(path, "alpaca", Path(d) / "run")
        # NUL characters are removed from text (pipeline.ingest.files), so a text of NULs is empty.
        good = sum(bool(r["instruction"] and canonical_text(without_nul(r["instruction"])) and r["output"]
                        and canonical_text(without_nul(r["output"]))) for r in rows)
        assert stats["kept"] == good and stats["read"] == len(rows)


# ------------------------------------------------------------------------------------------------ JSON arrays

def reference_segments(data: bytes) -> tuple[list[tuple[int, int, int]], tuple[int, int | None, int]]:
    """The splitting rules one byte at a time: ([(start, end, max depth)] of each comma-ended segment,
    (start, first depth-1 ']' or None, depth) of the last one).

    Inside the array depth is 1; '[' and '{' add one and ']' and '}' take one away, never below 1 (a
    closer at depth 1 is garbage inside its element, except that the first ']' at depth 1 in the last
    segment closes the array); a comma at depth 1 ends an element. A quote opens or closes a string
    unless an odd run of backslashes precedes it; inside a string nothing else counts.
    """
    i = data.index(b"[") + 1
    segs, start, depth, deepest, in_str, bs, first_close = [], i, 1, 1, False, 0, None
    for j in range(i, len(data)):
        c = data[j]
        if c == 0x5C:
            bs += 1
            continue
        escaped, bs = bs % 2 == 1, 0
        if c == 0x22:
            in_str = in_str if escaped else not in_str
        elif in_str:
            continue
        elif c in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in b"]}":
            if depth > 1:
                depth -= 1
            elif c == 0x5D and first_close is None:
                first_close = j
        elif c == 0x2C and depth == 1:
            segs.append((start, j, deepest - 1))
            start, deepest, first_close = j + 1, 1, None
    return segs, (start, first_close, depth)


JSONISH = b"\"\\[]{},: \n\tab0"
struct_bytes = st.binary(max_size=40).map(lambda b: bytes(JSONISH[x % len(JSONISH)] for x in b))


@settings(max_examples=300, deadline=None)
@given(data=struct_bytes | st.binary(max_size=60), cuts=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_vectorised_scanner_matches_the_reference_whatever_the_chunks(data, cuts):
    from pipeline.ingest.jsonscan import ArrayScanner

    data = b"[" + data
    segs, (start, first_close, depth) = reference_segments(data)
    scanner = ArrayScanner(1)
    pos, k = 1, 0
    while pos < len(data):  # feed the bytes in random-sized pieces, state carried between them
        end = min(len(data), pos + cuts[k % len(cuts)])
        scanner.feed(data, pos, end)
        pos, k = end, k + 1
    found = scanner.take_boundaries()
    assert [(b, d) for b, d in found] == [(e, d) for _, e, d in segs]
    assert scanner.depth == depth
    assert scanner.first_close == first_close


def alpaca_array(n: int, indent: bool) -> tuple[bytes, list[tuple[int, int]]]:
    """A valid array of n alpaca records and the byte span of each element."""
    parts = [json.dumps({"instruction": f"Q{i} [x]", "input": "", "output": f"A{i}, {{y}}"}).encode() for i in range(n)]
    sep = b",\n  " if indent else b", "
    data, spans = bytearray(b"[\n  " if indent else b"["), []
    for i, p in enumerate(parts):
        spans.append((len(data), len(data) + len(p)))
        data += p + (sep if i < n - 1 else b"")
    return bytes(data + (b"\n]\n" if indent else b"]")), spans


def ingest_array(data: bytes) -> tuple[dict, dict[str, str], dict[str, str]]:
    """Ingest a .json array; return stats, {origin: instruction} of kept, {origin: reason} of quarantined."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.json"
        path.write_bytes(data)
        stats = check_balanced(path, "alpaca", Path(d) / "run")
        kept = pl.concat([pl.read_parquet(p) for p in stats["parts"]]) if stats["parts"] else None
        got = {} if kept is None else {o: m[0]["content"] for o, m in kept.select("origin", "messages").iter_rows()}
        ledger = read_ledger(Path(d) / "run")
        q = dict(ledger.filter(pl.col("outcome") == "quarantined").select("origin", "reason").iter_rows())
    return stats, got, q


def intact_elements(data: bytes, original: list[bytes]) -> set[int]:
    """Indices of the elements the splitting rules find unchanged, at their own index."""
    segs, (start, close, _) = reference_segments(data)
    spans = [(s, e) for s, e, _ in segs] + ([(start, close)] if close is not None else [])
    return {i for i, (s, e) in enumerate(spans) if i < len(original) and data[s:e].strip() == original[i]}


@SETTINGS
@given(n=st.integers(1, 8), indent=st.booleans(), where=st.floats(0, 1), junk=st.binary(min_size=1, max_size=6))
def test_bytes_inserted_in_an_array_lose_at_most_the_element_they_hit(n, indent, where, junk):
    data, spans = alpaca_array(n, indent)
    at = 1 + int(where * (len(data) - 2))
    damaged = data[:at] + junk + data[at:]
    stats, kept, q = ingest_array(damaged)
    original = [data[s:e] for s, e in spans]
    # Every element before the damage, and every one the rules still find intact, is kept at its index.
    # (junk right after an element, before its comma, is part of it)
    expected = {i for i, (s, e) in enumerate(spans) if e < at and i < n - 1} | intact_elements(damaged, original)
    for i in expected:
        assert kept.get(f"s:{i}") == f"Q{i} [x]", (i, damaged)
    if not set(junk) & set(b'"\\[]{},'):  # no structural byte: only the element it lands in can suffer
        if at > data.rindex(b"]"):  # after the array: one more record, every element kept
            assert set(kept) == {f"s:{i}" for i in range(n)}
            assert stats["read"] == n + bool(junk.strip(b" \t\r\n"))
            return
        hit = next((i for i, (s, e) in enumerate(spans) if at <= e), n - 1)
        assert {f"s:{i}" for i in range(n) if i != hit} <= set(kept), damaged
        assert stats["read"] == n and set(q) <= {f"s:{hit}"}


@SETTINGS
@given(n=st.integers(1, 8), indent=st.booleans(), where=st.floats(0, 1))
def test_a_truncated_array_keeps_every_complete_element(n, indent, where):
    data, spans = alpaca_array(n, indent)
    cut = 1 + int(where * (len(data) - 1))
    stats, kept, q = ingest_array(data[:cut])
    complete = [i for i, (s, e) in enumerate(spans) if e <= cut]
    partial = [i for i, (s, e) in enumerate(spans) if s < cut < e]
    assert sorted(kept) == sorted(f"s:{i}" for i in complete)
    assert q == {f"s:{i}": "schema.invalid_json" for i in partial}
    assert stats["read"] == len(complete) + len(partial)


@SETTINGS
@given(n=st.integers(1, 8), indent=st.booleans(), k=st.integers(0, 7), where=st.floats(0, 1),
       char=st.integers(0, 31), replace=st.booleans())
def test_a_control_character_in_a_string_loses_only_its_element(n, indent, k, where, char, replace):
    data, spans = alpaca_array(n, indent)
    k = k % n
    s, e = spans[k]
    text = data.index(b'"output": "', s) + len(b'"output": "')
    end = data.index(b'"', text)
    at = text + int(where * (end - text - 1))
    damaged = data[:at] + bytes([char]) + data[at + replace:]
    stats, kept, q = ingest_array(damaged)
    assert q == {f"s:{k}": "schema.invalid_json"}
    assert sorted(kept) == sorted(f"s:{i}" for i in range(n) if i != k)


@SETTINGS
@given(rows=st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=12),
       eols=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1))
def test_jsonl_lines_whatever_their_endings(rows, eols):
    # A blank line holds a space: an empty one after a lone \r would make \r\n, one line end.
    lines = [json.dumps({"instruction": f"Q{i}", "output": "A"}).encode() if r == 1 else (b" " if r == 0 else b"{bad")
             for i, r in enumerate(rows)]
    data = b"".join(line + eols[i % len(eols)] for i, line in enumerate(lines))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.jsonl"
        path.write_bytes(data)
        stats = check_balanced(path, "alpaca", Path(d) / "run")
        ledger = read_ledger(Path(d) / "run")
        kept = [o for p in stats["parts"] for o in pl.read_parquet(p)["origin"]]
    assert sorted(kept) == sorted(f"s:{i + 1}" for i, r in enumerate(rows) if r == 1)
    assert sorted(ledger["origin"]) == sorted(f"s:{i + 1}" for i, r in enumerate(rows) if r == 2)
