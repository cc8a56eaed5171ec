"""Tool calling, reasoning and the other real-conversation shapes on tiny inline data: exact messages,
reason codes and origins per reader (OpenAI tool calls and content parts, LLaMA-Factory's v1 parts,
ShareGPT function_call/observation, Alpaca history, Self-Instruct tasks, <think> blocks), column
and tag mapping, LLaMA-Factory dataset_info.json, and the count of fields not read."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.ledger import read_ledger
from pipeline.ingest.canonical import CANONICAL_SCHEMA, MESSAGE_FIELDS, from_records
from pipeline.ingest.inspect import inspect_source, preflight_source
from pipeline.ingest.stage import ingest_source
from pipeline.quality.batch import Batch
from pipeline.quality.registry import FILTERS
from schemas.config_curation import QualityConfig
from schemas.config_sources import SourceConfig
from schemas.conversation import conversation_id


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def ingest(tmp_path: Path, path: Path, fmt: str | None = None, **kw) -> tuple[dict, pl.DataFrame, dict]:
    """Run ingestion; return stats, kept frame and {origin: reason} of quarantined; check the ledger balances."""
    src = SourceConfig(name="s", path=path, format=fmt, tier=kw.pop("tier", "synthetic"), **kw)
    run = tmp_path / "run"
    stats = ingest_source(src, run).to_json()
    kept = (pl.concat([pl.read_parquet(p) for p in stats["parts"]]) if stats["parts"]
            else pl.DataFrame(schema=CANONICAL_SCHEMA))
    assert dict(kept.schema) == CANONICAL_SCHEMA
    ledger = read_ledger(run)
    q = dict(ledger.filter(pl.col("outcome") == "quarantined").select("origin", "reason").iter_rows())
    origins = list(kept["origin"]) + list(ledger["origin"])
    assert len(origins) == len(set(origins)) == stats["read"] == stats["kept"] + stats["quarantined"] + stats["dropped_records"]
    return stats, kept, q


def conv(df: pl.DataFrame, origin: str) -> list[dict]:
    """The messages of one kept conversation, without the fields that are null."""
    row = df.filter(pl.col("origin") == origin)["messages"].to_list()[0]
    return [{k: v for k, v in m.items() if v is not None} for m in row]


def call(name: str, args: str, id_: str | None = None) -> dict:
    return {"id": id_, "name": name, "arguments": args}


# ------------------------------------------------------------------------------------------------ openai


WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_openai_tool_calls_results_reasoning_and_parts(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        # a tau-bench-like trajectory: null content on a call, reused ids, a tool reply without id, trailing tool
        {"messages": [
            {"role": "system", "content": "Policy"},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C"},
            {"role": "assistant", "content": "Checking Lyon too.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Nice"}}}]},
            {"role": "tool", "content": ""},
            {"role": "assistant", "content": "18C in Paris.", "reasoning_content": "The tool said 18C."},
            {"role": "user", "content": "###STOP###"},
            {"role": "tool", "content": "late"},
        ][:8], "tools": WEATHER_TOOLS},
        # no content key at all on the call turn (Azure's samples); tools as a JSON string
        {"messages": [{"role": "user", "content": "Price?"},
                      {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                            "function": {"name": "price", "arguments": "{}"}}]}],
         "tools": json.dumps(WEATHER_TOOLS)},
        # content as a list of text parts
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
                      {"role": "assistant", "content": "Hi"}], "tools": "[]"},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "?"}]},
                      {"role": "assistant", "content": "A cat"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "out"},
                      {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "No call"},
                      {"role": "tool", "content": "out"}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"},
                      {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}]},
        {"messages": [{"role": "user", "content": "Q"},
                      {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "tools": "{not json"},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": []}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "A"}]},
    ])
    stats, kept, q = ingest(tmp_path, path)
    assert stats["format"] == "openai"
    assert conv(kept, "s:1") == [
        {"role": "system", "content": "Policy"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", '{"city":"Paris"}', "call_1")]},
        {"role": "tool", "content": "18C", "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "assistant", "content": "Checking Lyon too.",
         "tool_calls": [call("get_weather", '{"city":"Lyon"}', "call_1"), call("get_weather", '{"city":"Nice"}', "call_2")]},
        {"role": "tool", "content": ""},
        {"role": "assistant", "content": "18C in Paris.", "reasoning": "The tool said 18C."},
    ]  # the trailing ###STOP### user turn is trimmed and counted
    assert orjson.loads(kept.filter(pl.col("origin") == "s:1")["tools"].item()) == WEATHER_TOOLS
    assert conv(kept, "s:2")[1] == {"role": "assistant", "content": "", "tool_calls": [call("price", "{}", "c")]}
    assert orjson.loads(kept.filter(pl.col("origin") == "s:2")["tools"].item()) == WEATHER_TOOLS
    assert conv(kept, "s:3")[0] == {"role": "user", "content": "Hello\nthere"}
    assert kept.filter(pl.col("origin") == "s:3")["tools"].item() is None  # "[]": no tools
    assert q == {
        "s:4": "schema.unsupported_content_part", "s:5": "schema.tool_without_call", "s:6": "schema.tool_without_call",
        "s:7": "schema.invalid_tool_call", "s:8": "schema.invalid_tool_call", "s:9": "schema.invalid_tools",
        "s:10": "schema.wrong_type", "s:11": "schema.empty_content", "s:12": "schema.tool_without_call",
    }
    assert stats["adjusted"] == {"trimmed_trailing_turns": 1}
    errors = dict(pl.read_parquet(tmp_path / "run" / "quarantine" / "s.parquet").select("origin", "errors").iter_rows())
    assert "messages.0.content.0" in errors["s:4"] and "image" in errors["s:4"]
    assert "messages.1.tool_calls.0.arguments" in errors["s:7"]


def test_openai_tool_ids_need_not_pair(tmp_path):
    """Real files reuse ids and omit them: no pairing of tool_call_id with calls is required."""
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x", "function": {"name": "a", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "nope", "content": "1"},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "Done"}]}])
    _, kept, q = ingest(tmp_path, path, "openai")
    assert q == {} and [m["role"] for m in conv(kept, "s:1")] == ["user", "assistant", "tool", "tool", "assistant"]


def test_llamafactory_v1_parts(tmp_path):
    path = write_jsonl(tmp_path / "v1.jsonl", [
        {"messages": [
            {"role": "system", "content": [{"type": "text", "value": "Sys"}]},
            {"role": "user", "content": [{"type": "text", "value": "Movie?"}]},
            {"role": "assistant", "content": [{"type": "reasoning", "value": "Look it up."},
                                              {"type": "tool_call", "value": "{\"name\": \"movie\", \"arguments\": {\"t\": \"X\"}}"}]},
            {"role": "tool", "content": [{"type": "text", "value": "[{\"t\": \"X\"}]"}]},
            {"role": "assistant", "content": [{"type": "reasoning", "value": "Got it."}, {"type": "text", "value": "X is good."}]},
        ], "tools": "[{\"name\": \"movie\"}]"},
        {"messages": [{"role": "user", "content": [{"type": "text", "value": "Q"}]},
                      {"role": "assistant", "content": [{"type": "tool_call", "value": "not json"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "video", "value": "v.mp4"}]},
                      {"role": "assistant", "content": "A"}]},
    ])
    _, kept, q = ingest(tmp_path, path)
    assert conv(kept, "s:1") == [
        {"role": "system", "content": "Sys"}, {"role": "user", "content": "Movie?"},
        {"role": "assistant", "content": "", "reasoning": "Look it up.", "tool_calls": [call("movie", '{"t":"X"}')]},
        {"role": "tool", "content": '[{"t": "X"}]'},
        {"role": "assistant", "content": "X is good.", "reasoning": "Got it."},
    ]
    assert kept["tools"].to_list() == ['[{"name":"movie"}]']
    assert q == {"s:2": "schema.invalid_tool_call", "s:3": "schema.unsupported_content_part"}


def test_think_blocks_become_reasoning(tmp_path):
    path = write_jsonl(tmp_path / "th.jsonl", [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n4"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\n\n</think>\n\nHello"}]},
        {"messages": [{"role": "user", "content": "Tag?"}, {"role": "assistant", "content": "Use <think> tags."}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>only</think>"}]},
    ])
    stats, kept, q = ingest(tmp_path, path)
    assert conv(kept, "s:1")[1] == {"role": "assistant", "content": "4", "reasoning": "Add."}
    assert conv(kept, "s:2")[1] == {"role": "assistant", "content": "Hello"}
    assert conv(kept, "s:3")[1] == {"role": "assistant", "content": "Use <think> tags."}
    assert q == {"s:4": "schema.empty_content"}  # reasoning but no answer
    assert stats["adjusted"] == {"think_block": 2}


# ------------------------------------------------------------------------------------------------ sharegpt


def test_sharegpt_function_call_and_observation(tmp_path):
    tools = json.dumps([{"name": "get_news", "parameters": {"type": "object"}}], ensure_ascii=False)
    records = [
        {"conversations": [
            {"from": "human", "value": "新闻？"},
            {"from": "function_call", "value": "{\"name\": \"get_news\", \"arguments\": {\"country\": \"美国\"}}"},
            {"from": "observation", "value": "{\"data\": []}"},
            {"from": "gpt", "value": "没有新闻。"}], "tools": tools},
        # a gpt turn's text then its call: one assistant turn; a list of calls is parallel calls
        {"conversations": [
            {"from": "human", "value": "Two cities"},
            {"from": "gpt", "value": "Let me check."},
            {"from": "function_call", "value": "[{\"name\": \"w\", \"arguments\": {\"c\": \"A\"}}, {\"name\": \"w\", \"arguments\": {\"c\": \"B\"}}]"},
            {"from": "observation", "value": "A: 1, B: 2"},
            {"from": "gpt", "value": "1 and 2."}], "tools": "[]"},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},
                           {"from": "observation", "value": "stray"}, {"from": "gpt", "value": "B"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "function_call", "value": "get_news()"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "tools": 5},
    ]
    path = tmp_path / "g.json"
    path.write_text(json.dumps(records, ensure_ascii=False))
    _, kept, q = ingest(tmp_path, path)
    assert conv(kept, "s:0") == [
        {"role": "user", "content": "新闻？"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_news", '{"country":"美国"}')]},
        {"role": "tool", "content": '{"data": []}'},
        {"role": "assistant", "content": "没有新闻。"},
    ]
    assert orjson.loads(kept.filter(pl.col("origin") == "s:0")["tools"].item()) == json.loads(tools)
    assert conv(kept, "s:1")[1] == {"role": "assistant", "content": "Let me check.",
                                    "tool_calls": [call("w", '{"c":"A"}'), call("w", '{"c":"B"}')]}
    assert q == {"s:2": "schema.tool_without_call", "s:3": "schema.invalid_tool_call", "s:4": "schema.wrong_type"}


def test_sharegpt_tags_and_messages_column(tmp_path):
    """LLaMA-Factory tags: other turn keys and speaker names."""
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"messages": [{"role": "asker", "text": "Q"}, {"role": "helper", "text": "A"}]},
        {"messages": [{"role": "asker", "text": "Q"}, {"role": "robot", "text": "A"}]},
    ])
    _, kept, q = ingest(tmp_path, path, "sharegpt",
                        tags={"role_tag": "role", "content_tag": "text", "user_tag": "asker", "assistant_tag": "helper"})
    assert conv(kept, "s:1") == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert q == {"s:2": "schema.unknown_role"}


# ------------------------------------------------------------------------------------------------ alpaca


def test_alpaca_history_and_system(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps([
        {"instruction": "And tomorrow?", "input": "", "output": "Rain.", "system": "Be brief.",
         "history": [["Weather today?", "Sun."], ["Warm?", "Yes."]]},
        {"instruction": "Q", "input": "", "output": "A", "history": []},
        {"instruction": "Q", "input": "", "output": "A", "history": [["only the query"]]},
        {"instruction": "Q", "input": "", "output": "A", "history": [["", "A0"]]},
    ]))
    _, kept, q = ingest(tmp_path, path)
    assert conv(kept, "s:0") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather today?"}, {"role": "assistant", "content": "Sun."},
        {"role": "user", "content": "Warm?"}, {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And tomorrow?"}, {"role": "assistant", "content": "Rain."},
    ]
    assert len(conv(kept, "s:1")) == 2
    assert q == {"s:2": "schema.wrong_type", "s:3": "schema.empty_content"}


def test_column_mapping_with_reasoning_and_fields_not_read(tmp_path):
    """huatuogpt-o1's shape: prompt = Question, response = Response, reasoning = Complex_CoT; the other
    text fields are counted, bookkeeping (ids, numbers) is not."""
    path = tmp_path / "h.json"
    path.write_text(json.dumps([
        {"Question": "Q1", "Complex_CoT": "Think 1", "Response": "R1", "answer": "a", "options": {"A": "x"},
         "id": "k1", "score": 3},
        {"Question": "Q2", "Complex_CoT": "Think 2", "Response": "R2", "answer": "b"},
        {"Question": "Q3", "Response": "R3", "instruction": "shadowed"},
    ]))
    stats, kept, q = ingest(tmp_path, path, columns={"prompt": "Question", "response": "Response",
                                                     "reasoning": "Complex_CoT"})
    assert stats["format"] == "alpaca" and q == {}
    assert conv(kept, "s:0") == [{"role": "user", "content": "Q1"},
                                 {"role": "assistant", "content": "R1", "reasoning": "Think 1"}]
    assert stats["fields_not_read"] == {"answer": 2, "instruction": 1, "options": 1}
    assert "fields not read: `answer` in 2 records" in " ".join(stats["warnings"])


def test_strict_fields_quarantines_unread_text(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Q", "output": "A", "note": "extra text"},
        {"instruction": "Q", "output": "A", "weight": 1, "task_id": "t1"},
        {"messages": [{"role": "user", "content": "Q", "comment": "aside"}, {"role": "assistant", "content": "A"}]},
    ])
    _, kept, q = ingest(tmp_path, path, "alpaca", strict_fields=True)
    assert list(kept["origin"]) == ["s:2"] and q["s:1"] == "schema.unread_field"
    path2 = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "Q", "comment": "aside"}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q", "loss": False}, {"role": "assistant", "content": "A"}]},
    ])
    stats, kept, _ = ingest(tmp_path / "m", path2, "openai")
    assert stats["fields_not_read"] == {"messages.comment": 1} and kept.height == 2
    _, _, q = ingest(tmp_path / "m2", path2, "openai", strict_fields=True)
    assert q == {"s:1": "schema.unread_field"}


# ------------------------------------------------------------------------------------------------ self-instruct


def test_self_instruct_one_conversation_per_instance(tmp_path):
    path = write_jsonl(tmp_path / "seed.jsonl", [
        {"id": "seed_task_0", "name": "breakfast", "instruction": "Suggest a breakfast.",
         "instances": [{"input": "", "output": "Oatmeal."}, {"input": "vegan", "output": "Tofu scramble."}],
         "is_classification": False},
        {"id": "seed_task_1", "name": "none", "instruction": "Do.", "instances": [], "is_classification": False},
        {"id": "seed_task_2", "name": "bad", "instruction": "Do.", "instances": [{"input": "x"}, {"input": "", "output": "ok"}]},
        "not json",
    ])
    stats, kept, q = ingest(tmp_path, path)
    assert stats["format"] == "self_instruct" and stats["read"] == 6
    assert conv(kept, "s:1#1") == [{"role": "user", "content": "Suggest a breakfast.\n\nvegan"},
                                   {"role": "assistant", "content": "Tofu scramble."}]
    row = kept.filter(pl.col("origin") == "s:1#0")
    assert row["category"].item() == "breakfast" and row["original_id"].item() == "seed_task_0"
    assert sorted(kept["origin"]) == ["s:1#0", "s:1#1", "s:3#1"]
    assert q == {"s:2": "schema.no_instances", "s:3#0": "schema.missing_field", "s:4": "schema.invalid_json"}


# ------------------------------------------------------------------------------------------------ dataset_info.json


def test_dataset_info_json_is_read_as_its_datasets(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "alpaca_h.json").write_text(json.dumps([{"q": "Q", "a": "A", "hist": [["Q0", "A0"]]}]))
    write_jsonl(d / "chat.jsonl", [{"conversations": [{"from": "human", "value": "Hi"},
                                                      {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {}}"},
                                                      {"from": "observation", "value": "ok"},
                                                      {"from": "gpt", "value": "Done"}], "tools": "[]"}])
    write_jsonl(d / "oai.jsonl", [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}])
    (d / "dataset_info.json").write_text(json.dumps({
        "hist": {"file_name": "alpaca_h.json", "columns": {"prompt": "q", "response": "a", "history": "hist"}},
        "glaive": {"file_name": "chat.jsonl", "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "tools": "tools"}},
        "oai": {"file_name": "oai.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
        "hub_only": {"hf_hub_url": "someone/data"},
        "gone": {"file_name": "missing.json"},
        "mm": {"file_name": "oai.jsonl", "columns": {"images": "images"}},
    }))
    src = SourceConfig(name="s", path=d, tier="expert")
    assert preflight_source(src) == []
    stats, kept, q = ingest(tmp_path, d, tier="expert")
    assert q == {}
    assert sorted(kept["origin"]) == ["s:glaive:1", "s:hist:0", "s:oai:1"]
    assert [m["role"] for m in conv(kept, "s:hist:0")] == ["user", "assistant", "user", "assistant"]
    assert conv(kept, "s:glaive:1")[1]["tool_calls"] == [call("f", "{}")]
    reasons = {f["path"].split("#")[-1]: f["reason"] for f in stats["files_not_read"]}
    assert set(reasons) == {"hub_only", "gone", "mm"} and "hf_hub_url" in reasons["hub_only"]
    assert stats["file_formats"] == {"hist:alpaca_h.json": "alpaca", "glaive:chat.jsonl": "sharegpt",
                                     "oai:oai.jsonl": "openai"}
    ins = inspect_source(src, 1)
    assert [r.origin for r in ins.records] == ["s:hist:0", "s:glaive:1", "s:oai:1"]


def test_dataset_info_with_nothing_local_is_a_clear_error(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"x": {"hf_hub_url": "a/b"}}))
    src = SourceConfig(name="s", path=tmp_path / "dataset_info.json", tier="expert")
    problems = preflight_source(src)
    assert len(problems) == 1 and "hf_hub_url" in problems[0] and "download" in problems[0]


def test_tau_bench_shape_with_a_messages_column(tmp_path):
    path = tmp_path / "tau.json"
    path.write_text(json.dumps([{"task_id": 0, "reward": 1.0, "info": {"instruction": "You are Mia"}, "trial": 0,
                                 "traj": [{"role": "user", "content": "Book it"},
                                          {"role": "assistant", "content": None, "tool_calls": [
                                              {"id": "c1", "type": "function",
                                               "function": {"name": "book", "arguments": "{}"}}]},
                                          {"role": "tool", "tool_call_id": "c1", "name": "book", "content": "ok"}]}]))
    stats, kept, q = ingest(tmp_path, path, "openai", columns={"messages": "traj"})
    assert q == {} and [m["role"] for m in conv(kept, "s:0")] == ["user", "assistant"]
    assert stats["fields_not_read"] == {"info": 1} and stats["adjusted"] == {"trimmed_trailing_turns": 1}


# ------------------------------------------------------------------------------------------------ conversation_id


def test_conversation_id_of_plain_conversations_is_unchanged():
    # the id older versions gave (pinned): caches and dedup indexes rely on it
    plain = [{"role": "user", "content": "  Cafe\u0301 ?"}, {"role": "assistant", "content": "Oui.\n"}]
    assert conversation_id(plain) == "e5eb44558957a33802eb450e21c99b59"
    assert conversation_id([{**m, **dict.fromkeys(["reasoning", "tool_calls", "tool_call_id", "name"])}
                            for m in plain]) == conversation_id(plain)


def test_conversation_id_covers_every_field():
    base = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]
    ids = {
        conversation_id(base),
        conversation_id(base, tools='[{"name":"f"}]'),
        conversation_id([base[0], {**base[1], "reasoning": "r"}]),
        conversation_id([base[0], {**base[1], "tool_calls": [call("f", "{}")]}]),
        conversation_id([base[0], {**base[1], "tool_calls": [call("f", '{"a":1}')]}]),
        conversation_id([base[0], {**base[1], "tool_calls": [call("f", "{}", "id1")]}]),
        conversation_id([base[0], {**base[1], "tool_calls": [call("f", "{}")]}, {"role": "tool", "content": "x"}]),
        conversation_id([base[0], {**base[1], "tool_calls": [call("f", "{}")]},
                         {"role": "tool", "content": "x", "tool_call_id": "id1"}]),
        conversation_id([base[0], {**base[1], "tool_calls": [call("f", "{}")]},
                         {"role": "tool", "content": "x", "name": "f"}]),
    }
    assert len(ids) == 9


@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool"]), st.text(max_size=20)), max_size=6))
def test_conversation_id_ignores_null_fields(pairs):
    msgs = [{"role": r, "content": c} for r, c in pairs]
    full = [{k: m.get(k) for k in MESSAGE_FIELDS} for m in msgs]
    assert conversation_id(msgs) == conversation_id(full) == conversation_id(pairs)


def test_ingested_id_matches_the_curated_row(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "1"}, {"role": "assistant", "content": "A"}], "tools": WEATHER_TOOLS}])
    _, kept, _ = ingest(tmp_path, path)
    row = kept.row(0, named=True)
    assert row["conversation_id"] == conversation_id(row["messages"], row["tools"])


# ------------------------------------------------------------------------------------------------ quality


def _tool_frame() -> pl.DataFrame:
    msgs = [{"role": "user", "content": "What is the weather in Paris today?"},
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", '{"city":"Paris"}')]},
            {"role": "tool", "content": "It is 18 degrees and sunny in Paris today."},
            {"role": "assistant", "content": "It is 18 degrees and sunny in Paris today."}]
    return from_records([{"conversation_id": conversation_id(msgs), "origin": "t:1", "source": "t",
                          "tier": "synthetic", "messages": msgs}])


@pytest.mark.parametrize("name", ["empty", "length", "echo"])
def test_quality_keeps_a_turn_that_only_calls_a_tool(name):
    """A call-only assistant turn is not an empty answer, and quoting a tool's result is not an echo."""
    res = FILTERS[name](Batch(_tool_frame()), QualityConfig())
    assert res.keep.tolist() == [True], res.detail


def test_quality_still_drops_an_empty_turn_without_calls():
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
    df = from_records([{"conversation_id": "x", "origin": "t:1", "source": "t", "tier": "synthetic", "messages": msgs}])
    assert FILTERS["empty"](Batch(df), QualityConfig()).keep.tolist() == [False]


def test_mapping_must_fit_the_format():
    with pytest.raises(ValueError, match="columns: prompt not read by format 'openai'"):
        SourceConfig(name="s", path="x.jsonl", tier="expert", format="openai", columns={"prompt": "Q"})
    with pytest.raises(ValueError, match="tags: only a sharegpt source"):
        SourceConfig(name="s", path="x.jsonl", tier="expert", format="alpaca", tags={"role_tag": "r"})


def test_turn_order_with_tools_and_trim():
    from schemas.conversation import TurnOrderError, check_turn_order

    roles = ["system", "user", "assistant", "tool", "tool", "assistant", "user"]
    calls = [False, False, True, False, False, False, False]
    assert check_turn_order(roles, calls, trim=True) == 1
    with pytest.raises(TurnOrderError) as e:  # without trim the contract is unchanged: end with the assistant
        check_turn_order(roles, calls)
    assert e.value.code == "schema.no_assistant_reply"
    assert check_turn_order(["user", "assistant", "tool"], [False, True, False], trim=True) == 1
    for roles, calls, code in [
        (["user", "assistant", "tool"], [False, False, False], "schema.tool_without_call"),
        (["user", "tool", "assistant"], None, "schema.tool_without_call"),
        (["user", "assistant", "tool", "user", "assistant"], [False, True, False, False, False], "schema.not_alternating"),
        (["user", "user"], None, "schema.not_alternating"),
        (["user"], None, "schema.no_assistant_reply"),
    ]:
        with pytest.raises(TurnOrderError) as e:
            check_turn_order(roles, calls, trim=True)
        assert e.value.code == code, roles


def test_openai_legacy_function_call_refusal_and_reasoning_key(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [
        {"messages": [{"role": "user", "content": "Time?"},
                      {"role": "assistant", "content": None, "function_call": {"name": "now", "arguments": "{}"}},
                      {"role": "function", "name": "now", "content": "12:00"},
                      {"role": "assistant", "content": "Noon.", "reasoning": "Read the clock."}]},
        {"messages": [{"role": "user", "content": "Hack it"}, {"role": "assistant", "content": None,
                                                              "refusal": "I can't help with that."}]},
        {"messages": [{"role": "user", "content": "Q", "tool_calls": [{"function": {"name": "f"}}]},
                      {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "tool_calls": "f()"}]},
    ])
    _, kept, q = ingest(tmp_path, path, "openai")
    assert conv(kept, "s:1") == [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "", "tool_calls": [call("now", "{}")]},
        {"role": "tool", "content": "12:00", "name": "now"},
        {"role": "assistant", "content": "Noon.", "reasoning": "Read the clock."},
    ]
    assert conv(kept, "s:2")[1] == {"role": "assistant", "content": "I can't help with that."}
    assert q == {"s:3": "schema.wrong_type", "s:4": "schema.wrong_type"}


def test_sharegpt_system_twice_and_unread_turn_keys(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"system": "A", "conversations": [{"from": "system", "value": "B"}, {"from": "human", "value": "Q"},
                                          {"from": "gpt", "value": "A"}]},
        {"conversations": [{"from": "human", "value": "Q", "note": "aside"}, {"from": "gpt", "value": "A", "weight": 0}]},
    ])
    stats, kept, q = ingest(tmp_path, path, "sharegpt")
    assert q == {"s:1": "schema.misplaced_system"} and list(kept["origin"]) == ["s:2"]
    assert stats["fields_not_read"] == {"conversations.note": 1}
