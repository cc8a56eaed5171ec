"""Language codes the language filter knows, and the scripts they are written in.

Imports nothing, so the configuration (schemas.config_curation) can validate `language.keep` without
loading langdetect. Codes are langdetect 1.0.9's, with its two Chinese labels (zh-cn, zh-tw) folded
into `zh`: which script variant a short text uses is not something langdetect tells reliably, and a
`keep = ["zh"]` must match both.
"""

from __future__ import annotations

#: langdetect 1.0.9's 55 profiles.
LANGDETECT_CODES = (
    "af", "ar", "bg", "bn", "ca", "cs", "cy", "da", "de", "el", "en", "es", "et", "fa", "fi", "fr", "gu", "he",
    "hi", "hr", "hu", "id", "it", "ja", "kn", "ko", "lt", "lv", "mk", "ml", "mr", "ne", "nl", "no", "pa", "pl",
    "pt", "ro", "ru", "sk", "sl", "so", "sq", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi",
    "zh-cn", "zh-tw",
)
ALIASES = {"zh-cn": "zh", "zh-tw": "zh", "zh-hans": "zh", "zh-hant": "zh", "iw": "he", "nb": "no"}

#: script -> (its Unicode class in Rust regex, the languages written in it). A script with one
#: language names it even in a text too short for langdetect; the others need langdetect.
SCRIPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Hani": (r"\p{Han}", ("zh", "ja")),
    "Kana": (r"[\p{Hiragana}\p{Katakana}]", ("ja",)),
    "Hang": (r"\p{Hangul}", ("ko",)),
    "Cyrl": (r"\p{Cyrillic}", ("ru", "uk", "bg", "mk")),
    "Arab": (r"\p{Arabic}", ("ar", "fa", "ur")),
    "Deva": (r"\p{Devanagari}", ("hi", "mr", "ne")),
    "Grek": (r"\p{Greek}", ("el",)),
    "Hebr": (r"\p{Hebrew}", ("he",)),
    "Thai": (r"\p{Thai}", ("th",)),
    "Beng": (r"\p{Bengali}", ("bn",)),
    "Gujr": (r"\p{Gujarati}", ("gu",)),
    "Guru": (r"\p{Gurmukhi}", ("pa",)),
    "Knda": (r"\p{Kannada}", ("kn",)),
    "Mlym": (r"\p{Malayalam}", ("ml",)),
    "Taml": (r"\p{Tamil}", ("ta",)),
    "Telu": (r"\p{Telugu}", ("te",)),
}
#: Every language code the filter can output or `keep` can name.
LANGUAGE_CODES: tuple[str, ...] = tuple(sorted({ALIASES.get(c, c) for c in LANGDETECT_CODES}))
#: Languages written in the Latin script (the rest are in SCRIPTS).
LATIN = tuple(c for c in LANGUAGE_CODES if not any(c in langs for _, langs in SCRIPTS.values()))


def normalize_code(code: str) -> str:
    """A language code as the filter uses it: lower case, aliases folded (zh-cn, zh-tw -> zh)."""
    c = code.strip().lower().replace("_", "-")
    return ALIASES.get(c, c)


def script_languages(label: str) -> tuple[str, ...]:
    """The languages an undetermined-script label (`und-Cyrl`) may be; () for a plain code."""
    if label.startswith("und-"):
        return SCRIPTS.get(label[4:], ("", ()))[1]
    return ()
