"""quality.language on prose only: code, arithmetic and word lists abstain; codes are normalised;
scripts are told even in text far below min_chars; keep names only known codes."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError
from test_quality_filters import frame

from pipeline.quality.batch import Batch
from pipeline.quality.langid import detect_parts, detect_turns
from pipeline.quality.registry import FILTERS
from schemas.config_curation import LanguageConfig, QualityConfig

ENGLISH_ANSWERS = [
    ("Write a python function to sum a nested list.",
     "def recursive_list_sum(data_list):\r\n\ttotal = 0\r\n\tfor element in data_list:\r\n\t\tif type(element) == "
     "type([]):\r\n\t\t\ttotal = total + recursive_list_sum(element)\r\n\t\telse:\r\n\t\t\ttotal = total + element"
     "\r\n\treturn total"),
    ("Print a multiplication table.", "2 x 2 = 4 2 x 3 = 6 2 x 4 = 8 2 x 5 = 10 2 x 6 = 12 3 x 2 = 6 3 x 3 = 9"),
    ("Six erasers and eight pencils: what do they cost?",
     "Six erasers cost $2/eraser x 6 erasers = $<<2*6=12>>12. Eight pencils cost $3/pencil x 8 pencils = $<<3*8=24>>24."),
    ("List five animals.", "1. Lion 2. Elephant 3. Panda 4. Giraffe 5. Dolphin"),
    ("Name some Italian dishes.", "- Ragu alla Bolognese - Risotto - Spaghetti alla Carbonara - Napoletana Pizza - "
                                  "Arancini - Fiorentina Steak - Polenta - Ossobuco - Truffles - Lasagne - Gelato"),
    ("Give the position after 1. e4 c5 2. Nf3.", "rnbqkbnr/pp1ppppp/8/2p5/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2"),
]


def test_code_math_and_lists_do_not_drop_an_english_run() -> None:
    res = FILTERS["language"](Batch(frame(ENGLISH_ANSWERS)), QualityConfig())
    assert res.keep.all(), res.detail
    assert set(res.columns["lang"].to_list()) == {"en"}  # the English prompt decides


def test_code_alone_abstains() -> None:
    labels, _ = detect_turns(pl.Series([ENGLISH_ANSWERS[0][1], "2 x 3 = 6 4 x 5 = 20 6 x 7 = 42"]), LanguageConfig())
    assert labels.to_list() == [None, None]


@pytest.mark.parametrize("keep", [["zh"], ["zh-cn"], ["ZH-TW"]])
def test_zh_matches_both_chinese_labels(keep: list[str]) -> None:
    pairs = [("请用简单的语言解释什么是机器学习。", "机器学习是让计算机从数据中学习规律，而不是由人逐条编写规则的方法。"),
             ("謝謝你的幫助，我今天學到了很多東西。", "不客氣，很高興能幫到你，祝你學習順利。")]
    cfg = QualityConfig(language={"keep": keep})
    assert cfg.language.keep == ["zh"]
    res = FILTERS["language"](Batch(frame(pairs)), cfg)
    assert res.keep.all() and res.columns["lang"].to_list() == ["zh", "zh"]


def test_unknown_code_in_keep_is_a_config_error_naming_valid_ones() -> None:
    with pytest.raises(ValidationError, match=r"unknown language code\(s\) \['english'\]; valid codes: .*en.*zh"):
        QualityConfig(language={"keep": ["english"]})


def test_short_non_latin_pairs_do_not_slip_through_an_english_run() -> None:
    short = [("谢谢", "不客气"), ("ありがとう", "どういたしまして"), ("감사합니다", "천만에요"), ("Привет", "Здравствуйте")]
    res = FILTERS["language"](Batch(frame(short)), QualityConfig())
    assert not res.keep.any(), res.detail
    assert res.columns["lang"].to_list() == ["zh", "ja", "ko", "und-Cyrl"]
    # ... and an undetermined script is kept where a language written in it is.
    assert FILTERS["language"](Batch(frame(short[3:])), QualityConfig(language={"keep": ["ru"]})).keep.all()


def test_mixed_turn_counts_each_script() -> None:
    parts = detect_parts(pl.Series(["不是，这句话语法不正确。这是正确的版本：John visited China after graduating."]),
                         LanguageConfig())
    assert dict(parts.select("lang", "weight").iter_rows()).keys() == {"zh", "en"}


def test_real_foreign_prose_is_still_dropped() -> None:
    bad = [("Explique por qué el cielo es azul, por favor.",
            "La luz del sol se dispersa en la atmósfera y la luz azul se dispersa mucho más que la roja."),
           ("Der Zug nach Berlin fährt heute wegen Bauarbeiten von einem anderen Gleis ab.",
            "Im Herbst fallen die Blätter von den Bäumen und die Tage werden kürzer.")]
    res = FILTERS["language"](Batch(frame(bad)), QualityConfig())
    assert not res.keep.any() and res.columns["lang"].to_list() == ["es", "de"]
