"""The ledger: one row per record, parts per stage, and a balance check that fails loudly."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.core.ledger import (
    LedgerImbalance,
    check_balance,
    finalize_ledger,
    ledger_rows,
    read_ledger,
    write_ledger_part,
)
from pipeline.core.rundir import atomic_write_parquet
from pipeline.ingest.canonical import from_records
from schemas.conversation import TurnOrderError, check_turn_order, conversation_id


def _conv(origin: str, text: str) -> dict:
    msgs = [{"role": "user", "content": f"q {text}"}, {"role": "assistant", "content": f"a {text}"}]
    return {"conversation_id": conversation_id(msgs), "origin": origin, "source": "s", "tier": "expert",
            "messages": msgs}


def test_finalize_writes_kept_rows_and_balances(tmp_path):
    curated = from_records([_conv(f"s:{i}", str(i)) for i in range(1, 6)])
    atomic_write_parquet(curated, tmp_path / "curated" / "part-00000.parquet")
    quarantined = pl.DataFrame({"origin": ["s:6"], "source": ["s"], "tier": ["expert"]})
    write_ledger_part(tmp_path, "ingest-s", ledger_rows(
        quarantined, stage="ingest", outcome="quarantined", reason="schema.invalid_json", detail="line 6"))
    # A later stage dropped one curated conversation: it must not also be counted as kept.
    write_ledger_part(tmp_path, "tokenize", ledger_rows(
        curated.filter(pl.col("origin") == "s:5"), stage="tokenize", outcome="dropped",
        reason="tokenize.too_long", detail="too long"))

    counts = finalize_ledger(tmp_path, records_read=6)

    assert counts == {"kept": 4, "quarantined": 1, "dropped": 1}
    ledger = read_ledger(tmp_path)
    assert sorted(ledger["origin"]) == [f"s:{i}" for i in range(1, 7)]
    kept = ledger.filter(pl.col("outcome") == "kept")
    assert set(kept["stage"]) == {"tokenize"} and kept["reason"].null_count() == 4
    assert kept["conversation_id"].null_count() == 0


def test_imbalance_is_loud():
    rows = ledger_rows(pl.DataFrame({"origin": ["a", "a"], "source": ["s", "s"], "tier": ["expert"] * 2}),
                       stage="ingest", outcome="quarantined", reason="x")
    with pytest.raises(LedgerImbalance, match="appear twice"):
        check_balance(rows, records_read=2)
    with pytest.raises(LedgerImbalance, match="read 3"):
        check_balance(rows[:1], records_read=3)


def test_finalize_is_idempotent(tmp_path):
    atomic_write_parquet(from_records([_conv("s:1", "x")]), tmp_path / "curated" / "part-00000.parquet")
    assert finalize_ledger(tmp_path, 1)["kept"] == 1
    assert finalize_ledger(tmp_path, 1)["kept"] == 1


@pytest.mark.parametrize(
    ("roles", "code"),
    [
        (["assistant"], "schema.not_alternating"),
        (["user"], "schema.no_assistant_reply"),
        (["system"], "schema.no_assistant_reply"),
        (["user", "user", "assistant"], "schema.not_alternating"),
        (["user", "assistant", "system", "user", "assistant"], "schema.misplaced_system"),
        (["user", "assistant", "user"], "schema.no_assistant_reply"),
    ],
)
def test_turn_order_errors(roles, code):
    with pytest.raises(TurnOrderError) as e:
        check_turn_order(roles)
    assert e.value.code == code


def test_turn_order_ok():
    check_turn_order(["system", "user", "assistant", "user", "assistant"])
    check_turn_order(["user", "assistant"])


def test_conversation_id_is_stable_and_normalised():
    a = conversation_id([("user", "  Hi\n"), ("assistant", "cafe\u0301")])
    b = conversation_id([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "caf\u00e9"}])
    assert a == b and len(a) == 32
    assert a != conversation_id([("user", "Hi"), ("assistant", "cafe")])


