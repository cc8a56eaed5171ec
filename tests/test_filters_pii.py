"""quality.pii validates what it finds: correct answers with version numbers, loopback addresses in
code, public helplines, arithmetic, decimals and example addresses stay as they are; real-looking
personal data is still redacted, every redaction kept as a before -> after example."""

from __future__ import annotations

import polars as pl
import pytest
from test_quality_filters import frame

from pipeline.quality.batch import Batch
from pipeline.quality.pii import KINDS, scan
from pipeline.quality.registry import FILTERS
from schemas.config_curation import QualityConfig

REDACT = {k: "redact" for k in KINDS}

UNCHANGED = [
    "The rule is in §15.12.2.7 of the Java Language Specification.",
    "This was fixed in git 1.7.5.4, so upgrade to version 2.0.1.3 or later.",
    "Compare 1.2.3.4.5 with 1.2.3.4-beta.",
    'client = AsyncClient("https://127.0.0.1", "test_user")',
    "```python\nHOST = '192.168.0.10'\nDOC = '203.0.113.7'\n```",
    "Google's ranges are 8.8.8.0/24 and 34.64.0.0/10; its resolver is 8.8.8.8.",
    "If you are in crisis, call the Lifeline at 1-800-273-8255 or the helpline 0800 123 4567.",
    "The arson tip line is toll-free: 800-540-7085.",
    "So Elliot has 2100-400-1300=1700-1300=$400 left. He spent $<<6000-600-150-1200-2000=2050>>2050.",
    "In binary, 6699 is 1 1010 0010 1011.",
    "Name: John Doe Phone: (123) 456-7890 Phone: 111-111-1111",
    "assert surfacearea_sphere(10)==1256.6370614359173",
    "Sender: alerts@info6.citi.com, reply to support@example.org",
    'ssh-keygen -t rsa -b 4096 -C "your_email@example.com"',
    "ftp://username:password@ftp.example.com/Repository",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_correct_answers_are_not_altered(text: str) -> None:
    out, counts, _ = scan(pl.Series([text]), REDACT)
    assert out.to_list() == [text], {k: v.to_list() for k, v in counts.items() if v.sum()}


@pytest.mark.parametrize(("text", "after"), [
    ("It runs on 192.168.10.20 and 203.0.113.7.", "It runs on [IP] and [IP]."),
    ("My home server is 84.12.7.201, log in there.", "My home server is [IP], log in there."),
    ("Call the office at +1 (555) 123-4567 before Friday.", "Call the office at [PHONE] before Friday."),
    ("or phone 020 7946 0123 after six.", "or phone [PHONE] after six."),
    ("You can reach me at anna.smith@example.com if anything is unclear.",
     "You can reach me at [EMAIL] if anything is unclear."),
    ("Pay with 4111 1111 1111 1111 tomorrow.", "Pay with [CREDIT_CARD] tomorrow."),
    ("Write to ebony.moore@gmail.com or call (415) 321-7654.", "Write to [EMAIL] or call [PHONE]."),
    # a person-shaped address in a sample resume is redacted even beside a placeholder phone number
    # (hand labels, bench/filter_labels.jsonl: alpaca-cleaned:780, self-instruct:74)
    ("Ebony Moore Phone: (123) 456-7891 Email: emoore@email.com Applying for: Product Manager",
     "Ebony Moore Phone: (123) 456-7891 Email: [EMAIL] Applying for: Product Manager"),
])
def test_personal_data_is_redacted(text: str, after: str) -> None:
    assert scan(pl.Series([text]), REDACT)[0].to_list() == [after]


def test_examples_in_a_format_task_are_kept() -> None:
    code = 'assert check_email("ankitrai326@gmail.com") == "Valid Email"\nassert check_IP("110.234.52.124") == "Valid"'
    prose = "For example, john.doe@example.com matches, while john.doe@ does not."
    kept, _, _ = scan(pl.Series([code, prose]), REDACT, format_task=[True, True])
    assert kept.to_list() == [code, prose]
    # The same text in a task that is not about formats: the gmail address is someone's.
    assert "[EMAIL]" in scan(pl.Series([code]), REDACT)[0][0]


def test_filter_keeps_examples_and_records_before_after() -> None:
    pairs = [("Write a regular expression that matches e-mail addresses.",
              "Use `^[\\w.]+@[\\w.]+$`; for instance bob@example.org matches it."),
             ("How do I contact Anna?", "Write to anna.smith@corp.example.org or call +44 20 7946 0958.")]
    res = FILTERS["pii"](Batch(frame(pairs)), QualityConfig())
    texts = [m[1]["content"] for m in res.columns["messages"].to_list()]
    assert texts[0] == pairs[0][1]
    assert texts[1] == "Write to [EMAIL] or call [PHONE]."
    ex = res.stats["examples"]
    assert {e["kind"] for e in ex} == {"email", "phone"} and all(e["origin"] == "t:2" for e in ex)
    assert all(e["before"] != e["after"] and f"[{e['kind'].upper()}]" in e["after"] for e in ex)


def test_redaction_keeps_every_other_message_field() -> None:
    msgs = [{"role": "user", "content": "Who?", "name": None},
            {"role": "assistant", "content": "Mail anna.smith@corp.example.org.", "name": "helper"}]
    df = frame([("Who?", "x")]).drop("messages").with_columns(pl.Series("messages", [msgs]))
    res = FILTERS["pii"](Batch(df), QualityConfig())
    assert res.columns["messages"].to_list() == [[msgs[0], {**msgs[1], "content": "Mail [EMAIL]."}]]


def test_redaction_examples_are_capped_per_kind() -> None:
    pairs = [("q", f"Mail person{i}.name@corp.example.org today.") for i in range(5)]
    res = FILTERS["pii"](Batch(frame(pairs)), QualityConfig(pii={"examples": 2}))
    assert len(res.stats["examples"]) == 2 and res.stats["redacted"]["email"] == 5
