"""OpenAssistant flat rows: trees rebuilt from parent_id, best and all paths, skips, orphans, origins."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq

from tests.test_ingest import ingest, msgs, write_jsonl


def row(mid, parent, role, text, *, rank=None, deleted=False, review=True, tree=None):
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree or mid, "text": text, "role": role,
            "lang": "en", "review_count": 3, "review_result": review, "deleted": deleted, "rank": rank,
            "synthetic": False, "detoxify": {"toxicity": 0.01}, "emojis": None}


def tree_rows() -> list:
    return [
        # Tree a: children listed before their parents, as rows of a tree may sit anywhere in the file.
        row("r1", "p2", "assistant", "Use a for loop.", rank=0, tree="a"),
        row("a1", "a", "assistant", "Second best answer.", rank=1, tree="a"),
        row("a", None, "prompter", "How do I loop in Python?"),
        row("a2", "a", "assistant", "Best answer.", rank=0, tree="a", review=None),
        row("a3", "a", "assistant", "Deleted answer.", deleted=True, tree="a"),
        row("p1", "a2", "prompter", "Unanswered follow-up.", rank=0, tree="a"),
        row("p2", "a2", "prompter", "Answered follow-up?", rank=1, tree="a"),
        # Skipped trees.
        row("b", None, "prompter", "Deleted root.", deleted=True),
        row("b1", "b", "assistant", "Reply to deleted.", tree="b"),
        row("c", None, "prompter", "Root failed review.", review=False),
        row("d", None, "prompter", "Only a rejected reply."),
        row("d1", "d", "assistant", "Rejected.", review=False, tree="d"),
        row("e", None, "prompter", "Nobody answered yet."),
        # Orphan subtree: o1's parent is not in the file; o2 hangs below it.
        row("o1", "gone", "assistant", "Orphan reply.", tree="gone"),
        row("o2", "o1", "prompter", "Below the orphan.", tree="gone"),
        '{"message_id": "broken", ',                                  # line 16
        row("m1", "a", "moderator", "Unknown role.", tree="a"),       # line 17
        row("f", None, "prompter", "Empty reply follows."),
        row("f1", "f", "assistant", "   ", tree="f"),
        row("g", None, "prompter", "Two prompts in a row."),
        row("g1", "g", "prompter", "Second prompt.", tree="g"),
        row("a", None, "prompter", "Duplicate id."),                  # line 22
        {"message_id": "x", "parent_id": None, "role": "prompter"},   # line 23: no text
    ]


EXPECTED_QUARANTINE = {
    "s:16": "schema.invalid_json", "s:17": "schema.unknown_role", "s:22": "schema.duplicate_id",
    "s:23": "schema.missing_field", "s:o1": "schema.orphan_reply", "s:f": "schema.empty_content",
    "s:g": "schema.not_alternating",
}
EXPECTED_DROPPED = {"s:b": "ingest.oasst_deleted", "s:c": "ingest.oasst_review_failed",
                    "s:d": "ingest.oasst_no_reply", "s:e": "ingest.oasst_no_reply"}


def test_best_path_takes_lowest_rank_and_answered_followups(tmp_path):
    path = write_jsonl(tmp_path / "o.jsonl", tree_rows())
    stats, kept, q, d = ingest(tmp_path, path, "oasst", tier="crowdsourced")
    assert list(kept["origin"]) == ["s:a"]
    assert msgs(kept, "s:a") == [("user", "How do I loop in Python?"), ("assistant", "Best answer."),
                                 ("user", "Answered follow-up?"), ("assistant", "Use a for loop.")]
    assert kept["original_id"].to_list() == ["a"]
    assert q == EXPECTED_QUARANTINE and d == EXPECTED_DROPPED
    assert stats["read"] == 1 + len(EXPECTED_QUARANTINE) + len(EXPECTED_DROPPED)


def test_all_paths_one_record_per_distinct_leaf(tmp_path):
    path = write_jsonl(tmp_path / "o.jsonl", tree_rows())
    _, kept, q, d = ingest(tmp_path, path, "oasst", oasst_paths="all")
    assert sorted(kept["origin"]) == ["s:a/a1", "s:a/a2", "s:a/r1"]
    assert msgs(kept, "s:a/a1") == [("user", "How do I loop in Python?"), ("assistant", "Second best answer.")]
    # The unanswered follow-up p1 is cut, leaving the path that ends at a2.
    assert msgs(kept, "s:a/a2") == [("user", "How do I loop in Python?"), ("assistant", "Best answer.")]
    assert len(msgs(kept, "s:a/r1")) == 4
    assert set(kept["original_id"]) == {"a/a1", "a/a2", "a/r1"}
    # A path that fails is located by root/last message, like a kept one.
    expected = {k: v for k, v in EXPECTED_QUARANTINE.items() if k not in ("s:f", "s:g")}
    assert q == {**expected, "s:f/f1": "schema.empty_content", "s:g/g1": "schema.not_alternating"}
    assert d == EXPECTED_DROPPED


def test_row_order_does_not_matter(tmp_path):
    rows = [r for r in tree_rows()[:7] if r["message_id"] != "a3" and r["message_id"] != "p1"]
    random.Random(0).shuffle(rows)
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    _, kept, q, d = ingest(tmp_path, path, "oasst")
    assert len(msgs(kept, "s:a")) == 4 and q == {} and d == {}


def test_parquet_export_with_nan_ranks(tmp_path):
    rows = [row("a", None, "prompter", "Q?"), row("a1", "a", "assistant", "Unranked.", tree="a"),
            row("a2", "a", "assistant", "Ranked.", rank=0, tree="a")]
    for r in rows:
        r["rank"] = float("nan") if r["rank"] is None else float(r["rank"])
        r.pop("detoxify")
        r.pop("emojis")
    path = tmp_path / "o.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    stats, kept, q, _ = ingest(tmp_path, path, None)
    assert stats["format"] == "oasst" and q == {}
    assert msgs(kept, "s:a")[1] == ("assistant", "Ranked.")


def test_message_id_equal_to_a_bad_line_number_does_not_collide(tmp_path):
    path = write_jsonl(tmp_path / "o.jsonl", ["{broken", row("1", None, "prompter", "Q"),
                                              row("1a", "1", "assistant", "A", tree="1")])
    _, kept, q, _ = ingest(tmp_path, path, "oasst")
    assert q == {"s:1": "schema.invalid_json"} and list(kept["origin"]) == ["s:message:1"]
