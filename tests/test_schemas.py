"""Raw-record models: strict types, ignored extra keys, aliases; the canonical conversation's rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.ingest.files import RecordError
from pipeline.ingest.formats import detect_format, parse
from schemas.conversation import conversation_id
from schemas.records import (
    AlpacaRecord,
    DollyRecord,
    OasstMessage,
    OpenAIRecord,
    PromptCompletionRecord,
    ShareGPTRecord,
)


def test_alpaca_is_strict_and_ignores_extra_keys():
    rec = AlpacaRecord.model_validate({"instruction": "Q", "output": "A", "text": "ignored", "label": True})
    assert rec.input is None and rec.output == "A"
    with pytest.raises(ValidationError):
        AlpacaRecord.model_validate({"instruction": "Q", "output": 5})  # no silent int -> str


def test_sharegpt_turn_speaker_comes_from_the_from_key():
    rec = ShareGPTRecord.model_validate({"id": 3, "conversations": [{"from": "human", "value": "Q"}]})
    assert rec.conversations[0].speaker == "human" and rec.id == 3


def test_oasst_message_accepts_int_or_float_rank_and_null_review():
    m = OasstMessage.model_validate({"message_id": "m", "parent_id": None, "text": "t", "role": "prompter",
                                     "rank": 1, "review_result": None, "emojis": {"+1": 2}})
    assert m.rank == 1.0 and m.review_result is None and m.deleted is None
    with pytest.raises(ValidationError):
        OasstMessage.model_validate({"message_id": "", "text": "t", "role": "prompter"})


@pytest.mark.parametrize("model, value, code, field", [
    (DollyRecord, {"instruction": "Q"}, "schema.missing_field", "'response' is missing"),
    (OpenAIRecord, {"messages": [{"role": "user", "content": ["part"]}]}, "schema.wrong_type", "messages.0.content"),
    (PromptCompletionRecord, {"prompt": None, "completion": "A"}, "schema.wrong_type", "'prompt'"),
    (AlpacaRecord, [1, 2], "schema.wrong_type", "expected a JSON object, got array"),
])
def test_parse_errors_name_the_field_and_pick_the_code(model, value, code, field):
    with pytest.raises(RecordError) as e:
        parse(model, value)
    assert e.value.code == code and field in e.value.message


@pytest.mark.parametrize("record, fmt", [
    ({"messages": []}, "openai"),
    ({"conversations": []}, "sharegpt"),
    ({"message_id": "m", "parent_id": None}, "oasst"),
    ({"instruction": "", "input": "", "output": ""}, "alpaca"),
    ({"instruction": "", "context": "", "response": ""}, "dolly"),
    ({"prompt": "", "completion": ""}, "prompt_completion"),
    ({"inputs": "", "targets": ""}, "prompt_completion"),
    ({"text": ""}, None),
    ([1], None),
])
def test_detect_format_from_keys(record, fmt):
    assert detect_format(record) == fmt


def test_conversation_id_is_stable_under_surrounding_whitespace_and_nfc():
    a = conversation_id([("user", "  Cafe\u0301 ?"), ("assistant", "Oui.\n")])
    b = conversation_id([{"role": "user", "content": "Caf\u00e9 ?"}, {"role": "assistant", "content": "Oui."}])
    assert a == b
    assert a != conversation_id([("user", "Café ?"), ("assistant", "Non.")])


