"""Text kinds and the heuristic rules that depend on them: repetition, echo, placeholder, refusal.

Every case is a shape seen in real files (bench/bench_filters.py): MBPP code with CRLF line ends,
GSM8K-style worked solutions, songs with a chorus, classification answers among the prompt's
options, extractive QA spans, FastChat's identity answers, GitHub Actions' ${{ secrets.X }}."""

from __future__ import annotations

import polars as pl
import pytest
from test_quality_filters import CLEAN, check, frame

from pipeline.quality.batch import Batch
from pipeline.quality.filters.echo import is_option
from pipeline.quality.registry import FILTERS
from pipeline.quality.textkind import kinds, prose_of
from schemas.config_curation import QualityConfig

MBPP = ("def is_woodall(x): \r\n\tif (x % 2 == 0): \r\n\t\treturn False\r\n\tif (x == 1): \r\n\t\treturn True\r\n"
        "\tx = x + 1 \r\n\tp = 0\r\n\twhile (x % 2 == 0): \r\n\t\tx = x/2\r\n\t\tp = p + 1\r\n\t\tif (p == x): \r\n"
        "\t\t\treturn True\r\n\treturn False")
GSM = ("The number of downloads in the second month was 3*60 = <<3*60=180>>180\nThe number of downloads in the "
       "third month was 180 - 180 * 30/100 = <<180-180*30/100=126>>126\nThe number of downloads in the three "
       "months was 60 + 180 + 126 = <<60+180+126=366>>366\n#### 366")
SONG = ("Verse 1:\nEvery night I lie awake\nAnd count the stars up in the sky\nHoping that some day I'll find you\n\n"
        "Chorus:\nTime keeps passing by\nBut my longing doesn't die\nA love so strong, so hard to find\n\n"
        "Verse 2:\nAnd when I'm lost in the dark\nMy thoughts drift off to our past\nYour gentle touch, my only one\n\n"
        "Chorus:\nTime keeps passing by\nBut my longing doesn't die\nA love so strong, so hard to find")
# A weekly plan: the same sentence frame for every day, with different contents.
PLAN = "\n".join(f"Day {d}: Start with a 5-minute warm-up, then do 4 sets of 10 reps each of {ex}, followed by a "
                 "5-minute cool down." for d, ex in enumerate(["squats and lunges", "push-ups and dips",
                                                               "crunches and planks", "burpees and jumps"], 1))
CODE_TWICE = "```python\n" + "def my_func():\n    a = 0\n    while a < 5:\n        a = a + 1\n        print(a)\n" * 6 + "```"


@pytest.mark.parametrize(("text", "kind"), [
    (MBPP, "code"), ("```python\ndef f(x):\n    return x\n```", "code"),
    ("void f(int n) {\n  int t;\n  for (int i = 0; i < n; i++) {\n    t = i;\n  }\n}", "code"),
    (GSM, "math"), ("2 x 2 = 4 2 x 3 = 6 2 x 4 = 8 2 x 5 = 10", "math"),
    (SONG, "prose"), ("If you want to go, return the book first. For example: the library.", "prose"),
])
def test_text_kinds(text: str, kind: str) -> None:
    assert kinds(pl.Series([text]))["kind"].to_list() == [kind]


def test_prose_of_keeps_words_and_drops_code_math_and_digits() -> None:
    out = prose_of(pl.Series([
        "Six erasers cost $2/eraser x 6 erasers = $<<2*6=12>>12.",
        "小明每天早上花费10分钟时间走到学校",  # Chinese has no spaces: the sentence stays, the digits go
        "Here is the code you asked for:\ndef f(x):\n    y = x * 2\n    return y",
        "See https://example.org/a/b or mail bob@example.org.",
    ])).to_list()
    assert "Six erasers cost" in out[0] and "12" not in out[0]
    assert out[1] == "小明每天早上花费 分钟时间走到学校"
    assert out[2].strip() == "Here is the code you asked for:"
    assert "https" not in out[3] and "@" not in out[3] and "See" in out[3]


def test_repetition_keeps_code_math_songs_and_plans() -> None:
    good = [("Write a python function to check Woodall numbers.", MBPP),
            ("How many downloads in three months?", GSM), ("Write a song about longing.", SONG),
            ("Give me a four-day workout plan.", PLAN)]
    res = FILTERS["repetition"](Batch(frame(good)), QualityConfig())
    assert res.keep.all(), res.detail


def test_repetition_drops_loops_of_every_kind_and_names_the_kind() -> None:
    loop = " ".join(["I like apples and I like pears, and that is all there is to say."] * 15)
    details = check("repetition", [("Say something", loop), ("Write a function", CODE_TWICE),
                                   ("Ooh?", "Ooh ooh ah ah! *giggle* " * 40)])
    assert "(prose)" in details[0] and "(code) duplicate 10-gram" in details[1]


def test_repetition_thresholds_still_apply_to_prose() -> None:
    text = " ".join(["The meeting was moved to Thursday afternoon at three."] * 3) + " " + " ".join(
        f"Point {w} is new." for w in ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
    assert FILTERS["repetition"](Batch(frame([("q", text)])), QualityConfig()).keep.all()
    strict = FILTERS["repetition"](Batch(frame([("q", text)])), QualityConfig(max_dup_10gram_frac=0.2))
    assert not strict.keep.any()


def test_echo_understands_options_and_extracted_spans() -> None:
    good = [
        ("Categorize the given product into one of Electronics, Computers, Smart Home, or Arts & Crafts "
         "departments.\n\nGoogle Nest Learning Thermostat", "Smart Home"),
        ("Label the news article as either \"Political\" or \"Entertainment\".\n\nAnsel Elgort has been cast "
         "in a new romantic summer movie.", "Entertainment"),
        ("I know that the answer to the question \"Which library is the largest?\" is in \"114th Street is the "
         "location of Butler Library, which is the University's largest.\". Can you tell me what it is?",
         "Butler Library"),
        ("Which one? A) The Declaration of Independence B) The United States Constitution",
         "B) The United States Constitution"),
    ]
    res = FILTERS["echo"](Batch(frame(good)), QualityConfig())
    assert res.keep.all(), res.detail
    check("echo", [("what should i call you?", "What should I call you?"),
                   ("Please rewrite: the quick brown fox jumps over the lazy dog near the river",
                    "the quick brown fox jumps over the lazy dog near the river")])


def test_is_option() -> None:
    assert is_option("Smart Home", "one of Electronics, Computers, Smart Home, or Arts & Crafts")
    assert is_option("b. article i", "A. The Preamble\nB. Article I\nC. The Bill of Rights")
    assert not is_option("Smart", "one of Electronics, Computers, Smart Home, or Arts & Crafts")


def test_placeholder_drops_unfilled_template_variables() -> None:
    details = check("placeholder", [
        ("Write a short bio.", "{{name}} is a writer whose latest book, {{title}}, came out in spring."),
        ("Write a thank-you note.", "Dear {first_name}, thank you for your order."),
        ("Write an intro.", "Hello, I am [INSERT NAME] and I work at <<company>>."),
    ])
    assert "{{name}}" in details[0] and "{first_name}" in details[1]


def test_placeholder_keeps_code_given_templates_and_maths() -> None:
    good = [
        ("How do I pass the token?", "Set it in the workflow:\n```yaml\nenv:\n  GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}\n```"),
        ("Fill in this template: Dear {{name}}, welcome.", "Dear {{name}}, welcome aboard, we are glad to have you."),
        ("Print a greeting.", "print(f\"Hello {user_name}, you have {count} messages\")"),
        ("State Bolzano-Weierstrass.", "Every bounded sequence {x_n} has a convergent subsequence {x_nk}."),
        ("Draft a contract.", "This Agreement is between {Company Name} and {Customer Name}, signed on [date]."),
    ]
    res = FILTERS["placeholder"](Batch(frame(good)), QualityConfig())
    assert res.keep.all(), res.detail
    custom = FILTERS["placeholder"](Batch(frame([("q", "Welcome, $$USER$$!")])),
                                    QualityConfig(placeholder_patterns=[r"\$\$[A-Z]+\$\$"]))
    assert not custom.keep.any()


def test_refusal_spares_identity_answers_but_not_refusals() -> None:
    good = [("Who are you?", "My name is Vicuna, and I'm a language model developed by LMSYS."),
            ("Tell me who you are.", "As a language model, I go by the name Vicuna."),
            ("Do you call OpenAI APIs?", "No, I am a language model trained by LMSYS and call no APIs.")]
    assert FILTERS["refusal"](Batch(frame(good + CLEAN)), QualityConfig()).keep.all()
    check("refusal", [("Who are you? Also write my essay.",
                       "I'm sorry, but I cannot fulfill this request as it goes against my programming."),
                      ("What is your favourite food?", "As an AI language model, I do not have personal opinions.")])


def test_repetition_signals_by_groups_of_documents_equal_one_call(monkeypatch) -> None:
    """The repetition filter computes its n-gram signals over groups of documents (small arrays):
    each document's values are those of one call over all documents, for any group size."""
    import numpy as np

    from pipeline.quality.filters import repetition as rep

    rng = np.random.default_rng(5)
    lens = rng.integers(1, 60, 300)
    fh = rng.integers(0, 12, int(lens.sum())).astype(np.uint64)  # few distinct words: many repeats
    wchars = rng.integers(1, 9, int(lens.sum())).astype(np.uint32)
    for n in (2, 3, 5, 10):
        whole = rep._ngram_fracs(fh, lens, wchars, n)
        for max_words in (1, 37, 500, 10_000):
            monkeypatch.setattr(rep, "_MAX_WORDS", max_words)
            got = rep._ngram_fracs_by_docs(fh, lens, wchars, n)
            assert np.array_equal(got[0], whole[0]) and np.array_equal(got[1], whole[1]), (n, max_words)
