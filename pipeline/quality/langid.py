"""Language of text turns: langdetect with a fixed seed, made fast enough for a whole run.

langdetect costs about a millisecond per call, so a turn is only sent to it when it must be:
- turns with fewer than `min_chars` letters abstain (None): too short to tell;
- with `precheck`, plain-ASCII text in which English function words make up a large share of the
  words is labelled "en" directly (bench/bench_curation.py measures how often this agrees with
  langdetect on the full text);
- langdetect reads at most `max_chars` characters;
- results are cached by a hash of the text read, per process.
`DetectorFactory.seed = 0` makes langdetect's sampling repeatable, so labels are the same every run.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import xxhash

from schemas.config_curation import LanguageConfig

#: English function words and instruction verbs. A few also occur in other languages ("a", "in",
#: "on"), but a foreign text does not reach the share below from them alone; words that are
#: frequent in German, Spanish, French or Portuguese ("was", "die", "so", "as", "de") are left out.
_EN_WORDS = (
    "the|and|of|to|is|that|for|with|are|this|you|it|be|have|not|by|from|at|can|your|which|their|they|we|"
    "has|what|how|why|would|should|there|these|its|if|but|been|will|more|about|than|them|when|who|an|"
    "write|describe|explain|generate|given|create|give|make|list|provide|following|some|my|me|our|"
    "could|into|each|other|also|many|most|way|people|new|time|like|just|because|do|does|any|a|in|on|i|"
    "suggest|design|classify|find|build|construct|evaluate|identify|compare|summarize|summarise|translate|"
    "rewrite|name|convert|calculate|analyze|analyse|develop|sentence|following|story|article|about|between"
)
#: On lower-cased text; ASCII word boundaries keep the regex on its fast (DFA) engine, which Unicode
#: \b would not.
_EN_RE = rf"(?-u:\b)(?:{_EN_WORDS})(?-u:\b)"
PRECHECK_MIN_WORDS = 4
PRECHECK_MIN_SHARE = 0.15
#: Accented letters above this share of all letters send the text to langdetect (quotes and
#: dashes are not letters and do not count).
PRECHECK_MAX_NON_ASCII_LETTERS = 0.03

_cache: dict[bytes, str | None] = {}


def _detector():
    try:
        from langdetect import DetectorFactory, detect
    except ImportError as e:  # pragma: no cover - langdetect is a dependency
        raise ImportError("language filtering needs langdetect: pip install langdetect==1.0.9") from e
    DetectorFactory.seed = 0
    return detect


def detect_text(text: str) -> str | None:
    """Plain langdetect on the text as given (None when it cannot tell)."""
    from langdetect.lang_detect_exception import LangDetectException

    detect = _detector()
    try:
        return detect(text)
    except LangDetectException:
        return None


def detect_turns(
    texts: pl.Series, cfg: LanguageConfig, norm: pl.Series | None = None
) -> tuple[pl.Series, np.ndarray]:
    """Language label of each text (None = abstain) and its number of letters. `norm` is the
    texts normalised (textnorm.normalize_texts), when the caller has it already."""
    if norm is None:
        from pipeline.core.textnorm import normalize_texts

        norm = normalize_texts(texts)
    feats = pl.DataFrame({"t": texts.fill_null(""), "n": norm}).select(
        pl.col("t").str.count_matches(r"\p{L}").alias("letters"),
        pl.col("t").str.count_matches(r"[\p{L}&&[^\x00-\x7F]]").alias("non_ascii"),
        (pl.col("n").str.count_matches(" ", literal=True) + (pl.col("n") != "").cast(pl.UInt32)).alias("words"),
        pl.col("n").str.count_matches(_EN_RE).alias("en_words"),
    )
    letters = feats["letters"].to_numpy()
    labels: list[str | None] = [None] * texts.len()
    precheck = (
        (feats["non_ascii"].to_numpy() <= PRECHECK_MAX_NON_ASCII_LETTERS * letters)
        & (feats["words"].to_numpy() >= PRECHECK_MIN_WORDS)
        & (feats["en_words"].to_numpy() >= PRECHECK_MIN_SHARE * feats["words"].to_numpy())
    ) if cfg.precheck else np.zeros(texts.len(), dtype=bool)
    values = texts.to_list()
    for i in np.flatnonzero(letters >= cfg.min_chars).tolist():
        if precheck[i]:
            labels[i] = "en"
            continue
        head = values[i][: cfg.max_chars]
        key = xxhash.xxh3_128_digest(head.encode())
        if key not in _cache:
            _cache[key] = detect_text(head)
        labels[i] = _cache[key]
    return pl.Series(labels, dtype=pl.String), letters
