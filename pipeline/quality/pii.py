"""Personal data and secrets in message text: detection, typed redaction, counts per kind.

Patterns run in polars (Rust regex) over every turn. Credit-card-like digit runs are confirmed with
the Luhn checksum before they count, which keeps order numbers and ISBNs out.
"""

from __future__ import annotations

import re

import polars as pl

#: kind -> (pattern, placeholder). Order matters: longer, more specific shapes are replaced first
#: (a private-key block before the API-key shapes inside it; an e-mail before the IP-like digits).
PATTERNS: dict[str, tuple[str, str]] = {
    "private_key": (
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
        "[PRIVATE_KEY]",
    ),
    "api_key": (
        r"(?i:bearer)\s+[A-Za-z0-9\-._~+/]{16,}=*"
        r"|\b(?:sk-[A-Za-z0-9_\-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abposr]-[A-Za-z0-9\-]{10,}"
        r"|AIza[0-9A-Za-z_\-]{35}|hf_[A-Za-z0-9]{30,})\b",
        "[API_KEY]",
    ),
    "aws_key": (r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", "[AWS_KEY]"),
    "email": (r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b", "[EMAIL]"),
    "ip": (
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
        r"|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"
        r"|\b(?:[0-9A-Fa-f]{1,4}:){2,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}\b",
        "[IP]",
    ),
    "credit_card": (r"\b(?:\d[ \-]?){12,18}\d\b", "[CREDIT_CARD]"),
    "phone": (
        r"(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?|\b\d{2,4}[ .\-])\d{3,4}[ .\-]\d{4}\b",
        "[PHONE]",
    ),
}
KINDS = tuple(PATTERNS)
#: A cheap test a text must pass before a kind's full pattern runs on it (most text has no "@").
GATES: dict[str, tuple[str, bool]] = {  # kind -> (pattern, literal)
    "private_key": ("PRIVATE KEY-----", True),
    "api_key": (r"(?i:bearer)|sk-|gh[pousr]_|xox|AIza|hf_", False),
    "aws_key": (r"AKIA|ASIA", False),
    "email": ("@", True),
    "ip": (r"\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f:]", False),
    "credit_card": (r"\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d[ \-]?\d", False),
    "phone": (r"\d[ .\-]\d", False),
}
_CARD = re.compile(PATTERNS["credit_card"][0])


def luhn_ok(candidate: str) -> bool:
    """Luhn checksum over the digits of a 13-19 digit candidate."""
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _cards(text: str, placeholder: str | None) -> tuple[str, int]:
    """(text with Luhn-valid card numbers replaced when placeholder is given, how many)."""
    n = 0

    def sub(m: re.Match) -> str:
        nonlocal n
        if luhn_ok(m.group(0)):
            n += 1
            return placeholder if placeholder is not None else m.group(0)
        return m.group(0)

    out = _CARD.sub(sub, text)
    return out, n


def scan(contents: pl.Series, policies: dict[str, str]) -> tuple[pl.Series, dict[str, pl.Series]]:
    """Redact the kinds whose policy is "redact" and count every kind (whatever its policy).

    Returns the new contents and, per kind, the number of matches in each content string.
    """
    counts: dict[str, pl.Series] = {}
    out = contents.fill_null("").clone()
    zeros = pl.Series([0] * out.len(), dtype=pl.Int64)
    for kind, (pattern, placeholder) in PATTERNS.items():
        policy = policies.get(kind, "keep")
        gate, literal = GATES[kind]
        idx = out.str.contains(gate, literal=literal).arg_true()
        counts[kind] = zeros
        if idx.len() == 0:
            continue
        texts = out.gather(idx)
        if kind == "credit_card":
            pairs = [_cards(t, placeholder if policy == "redact" else None) for t in texts.to_list()]
            found = pl.Series([k for _, k in pairs], dtype=pl.Int64)
            new = pl.Series([t for t, _ in pairs], dtype=pl.String)
        else:
            found = texts.str.count_matches(pattern).cast(pl.Int64)
            new = texts.str.replace_all(pattern, placeholder) if policy == "redact" else texts
        counts[kind] = zeros.clone().scatter(idx, found)
        if policy == "redact" and (found > 0).any():
            out = out.scatter(idx, new)
    return out, counts
