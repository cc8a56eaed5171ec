"""Language of text turns: on prose only, by script first, then langdetect (fixed seed), with an
abstain outcome (None) that never drops anything.

Per turn:
1. the prose is what `textkind.prose_of` leaves: code (fenced or not), arithmetic, numbers, URLs and
   symbols removed. A code answer has no prose and abstains; `2 x 3 = 6` is not Somali;
2. a turn whose letters are mostly in one non-Latin script is labelled by the script even when it
   is short (`谢谢` is zh, `ありがとう` ja, `감사` ko) from `script_min_chars` letters on; a script several
   languages share (Cyrillic, Arabic, Devanagari) goes to langdetect when long enough, and is
   `und-<Script>` (for instance `und-Cyrl`) when not;
3. Latin-script prose with fewer than `min_chars` letters abstains; with `precheck`, plain-ASCII text
   dense in English function words is `en` without langdetect (bench/bench_curation.py measures the
   agreement); else langdetect reads at most `max_chars` characters, and a label other than English is
   believed only when at least `confirm_share` of the words are that language's function words
   (stopwords.py): a list of nouns, a table or a chess position abstains instead of being "de" or "sv";
4. codes are normalised (langcodes.normalize_code: zh-cn and zh-tw are zh).

langdetect costs about a millisecond per call; results are cached per process by a hash of the text
read. `DetectorFactory.seed = 0` makes its sampling repeatable, so labels are the same every run.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import xxhash

from pipeline.quality.langcodes import LATIN, SCRIPTS, normalize_code
from pipeline.quality.stopwords import STOPWORDS
from pipeline.quality.textkind import prose_of
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
#: A non-Latin script "dominates" a turn when it holds at least this share of its letters.
SCRIPT_MIN_SHARE = 0.5
#: Japanese mixes Han with kana: this share of kana among Han + kana letters makes Han text Japanese.
KANA_SHARE = 0.1

#: A CJK character carries about a word, where a Latin letter carries a fifth of one: in a turn
#: mixing scripts, a Han or Hangul character weighs this many Latin letters.
CJK_WEIGHT = 3

_cache: dict[bytes, str | None] = {}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def _detector():
    try:
        from langdetect import DetectorFactory, detect
    except ImportError as e:  # pragma: no cover - langdetect is a dependency
        raise ImportError("language filtering needs langdetect: pip install langdetect==1.0.9") from e
    DetectorFactory.seed = 0
    return detect


def detect_text(text: str) -> str | None:
    """Plain langdetect on the text as given (None when it cannot tell), its label normalised."""
    from langdetect.lang_detect_exception import LangDetectException

    detect = _detector()
    try:
        return normalize_code(detect(text))
    except LangDetectException:
        return None


def _cached_detect(text: str) -> str | None:
    key = xxhash.xxh3_128_digest(text.encode())
    if key not in _cache:
        _cache[key] = detect_text(text)
    return _cache[key]


def confirm_latin(label: str, text: str, share: float) -> bool:
    """A Latin-script label other than en is believed when `share` of the words are its function words."""
    words = _WORD.findall(text.lower())
    stop = STOPWORDS.get(label)
    if not words or stop is None:
        return False
    return sum(w in stop for w in words) >= share * len(words)


def _scripts(prose: pl.Series) -> dict[str, np.ndarray]:
    """Letters per non-Latin script of each text (only texts with non-ASCII letters are scanned)."""
    out = {s: np.zeros(prose.len(), dtype=np.int64) for s in SCRIPTS}
    idx = prose.str.contains(r"[\p{L}&&[^\p{Latin}]]").arg_true()
    if idx.len():
        sub = pl.DataFrame({"t": prose.gather(idx)})
        counts = sub.select([pl.col("t").str.count_matches(rx).alias(s) for s, (rx, _) in SCRIPTS.items()])
        for s in SCRIPTS:
            out[s][idx.to_numpy()] = counts[s].to_numpy()
    return out


def _script_label(script: str, letters: int, prose: str, cfg: LanguageConfig, kana: int, han: int) -> str:
    langs = SCRIPTS[script][1]
    if script == "Hani":
        return "ja" if kana >= KANA_SHARE * (kana + han) and kana else "zh"
    if len(langs) == 1:
        return langs[0]
    if letters >= cfg.min_chars:
        found = _cached_detect(prose[: cfg.max_chars])
        if found in langs:
            return found
    return f"und-{script}"


#: Every non-Latin script letter (Rust regex).
_NON_LATIN = "[" + "".join(rx.removeprefix("[").removesuffix("]") for rx, _ in SCRIPTS.values()) + "]"


def _NON_LATIN_SUB(text: str) -> str:  # noqa: N802 - reads as the constant it wraps
    """The text with its non-Latin letters removed (the Latin part of a mixed turn)."""
    return pl.Series([text]).str.replace_all(_NON_LATIN, " ")[0]


def detect_parts(
    texts: pl.Series, cfg: LanguageConfig, norm: pl.Series | None = None, kind: pl.Series | None = None
) -> pl.DataFrame:
    """The language parts of each text: one row per (turn, lang) with its `weight`, the letters of
    that part (a CJK character counts CJK_WEIGHT letters: it carries about a word). A turn mixing
    scripts has a part per script (a Chinese answer quoting an English sentence is mostly Chinese);
    a turn that cannot be told has no row. `norm` (the texts normalised) and `kind` (textkind.kinds)
    are reused when the caller has them."""
    from pipeline.core.textnorm import normalize_texts

    texts = texts.fill_null("")
    prose = prose_of(texts, kind)
    # The normalised text is reused where nothing was removed from it; for the rest, lower case and
    # single spaces are all the word counts below need.
    if norm is None:
        pnorm = normalize_texts(prose)
    else:
        changed = (prose != texts).arg_true()
        redo = prose.gather(changed).str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars(" ")
        pnorm = norm.scatter(changed, redo) if changed.len() else norm
    feats = pl.DataFrame({"t": prose, "n": pnorm}).select(
        pl.col("t").str.count_matches(r"\p{L}").alias("letters"),
        pl.col("t").str.count_matches(r"[\p{L}&&[^\x00-\x7F]]").alias("non_ascii"),
        (pl.col("n").str.count_matches(" ", literal=True) + (pl.col("n") != "").cast(pl.UInt32)).alias("words"),
        pl.col("n").str.count_matches(_EN_RE).alias("en_words"),
    )
    letters = feats["letters"].to_numpy()
    non_ascii = feats["non_ascii"].to_numpy()
    scripts = _scripts(prose) if non_ascii.any() else {s: np.zeros(texts.len(), dtype=np.int64) for s in SCRIPTS}
    other = sum(scripts.values())
    latin = letters - other
    precheck = (
        (non_ascii <= PRECHECK_MAX_NON_ASCII_LETTERS * letters)
        & (feats["words"].to_numpy() >= PRECHECK_MIN_WORDS)
        & (feats["en_words"].to_numpy() >= PRECHECK_MIN_SHARE * feats["words"].to_numpy())
    ) if cfg.precheck else np.zeros(texts.len(), dtype=bool)
    values = prose.to_list()
    turn: list[int] = []
    lang: list[str] = []
    weight: list[int] = []
    for i in np.flatnonzero(other >= cfg.script_min_chars).tolist():
        kana, han = int(scripts["Kana"][i]), int(scripts["Hani"][i])
        for script in SCRIPTS:
            n = int(scripts[script][i])
            if n < cfg.script_min_chars or script == "Kana" or (script == "Hani" and not n + kana):
                continue
            label = _script_label(script, n, values[i], cfg, kana, han)
            turn.append(i)
            lang.append(label)
            weight.append(n * (CJK_WEIGHT if script in ("Hani", "Hang") else 1))
        if kana >= cfg.script_min_chars and not han:
            turn.append(i)
            lang.append("ja")
            weight.append(kana * CJK_WEIGHT)
    for i in np.flatnonzero(latin >= cfg.min_chars).tolist():
        if precheck[i]:
            found: str | None = "en"
        else:
            text = values[i] if not other[i] else _NON_LATIN_SUB(values[i])
            found = _cached_detect(text[: cfg.max_chars])
            if found in LATIN and found != "en" and not confirm_latin(found, text[: cfg.max_chars], cfg.confirm_share):
                found = None
            elif found is not None and found not in LATIN:
                found = None  # a non-Latin label for Latin letters: langdetect guessing
        if found is not None:
            turn.append(i)
            lang.append(found)
            weight.append(int(latin[i]))
    return pl.DataFrame({"turn": turn, "lang": lang, "weight": weight},
                        schema={"turn": pl.Int64, "lang": pl.String, "weight": pl.Int64})


def detect_turns(
    texts: pl.Series, cfg: LanguageConfig, norm: pl.Series | None = None, kind: pl.Series | None = None
) -> tuple[pl.Series, np.ndarray]:
    """The main language of each text (its heaviest part; None = abstain) and that part's weight."""
    parts = detect_parts(texts, cfg, norm, kind)
    labels: list[str | None] = [None] * texts.len()
    weights = np.zeros(texts.len(), dtype=np.int64)
    for i, lg, w in parts.sort(["turn", "weight", "lang"], descending=[False, True, False]).unique(
        "turn", keep="first", maintain_order=True
    ).iter_rows():
        labels[i], weights[i] = lg, w
    return pl.Series(labels, dtype=pl.String), weights
