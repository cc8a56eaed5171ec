"""Personal data and secrets in message text: detection with validation, typed redaction, counts per kind.

Candidates are found with regexes (polars, Rust) over every turn; the kinds whose shape alone says
too little are then validated one match at a time, in Python, on the few texts that have one:

- **ip**: IPv4 octets 0-255 without leading zeros, not in a version or section number (`git 1.7.5.4`,
  `§15.12.2.7`, `version 2.0.1.3`, `1.2.3.4.5`, `1.2.3.4-beta`). Loopback, unspecified, broadcast,
  netmasks, CIDR networks (`8.8.8.0/24`) and well-known public resolvers are never personal; private,
  link-local and documentation ranges (RFC 1918, 3927, 5737; `2001:db8::/32`) are kept in code;
- **phone**: at least ten digits in a phone shape, not part of arithmetic (`2100-400-1300=…`), not a
  binary number or a repeated digit; a 3-3-4 (North American) number needs a valid area code
  (`(123) 456-7890` is a placeholder); toll-free and helpline numbers (800, 888, …, 0800, or after
  "helpline", "hotline", "toll-free", "crisis line") are public, not personal;
- **credit_card**: 13-19 digits passing Luhn, not the digits of a decimal (`1256.6370614359173`);
- **email**: role addresses (`alerts@`, `support@`, `noreply@`) and placeholder ones (`your_email@`,
  `user@`, `email@xxx.com`) are not a person's; an address at a reserved example domain (example.com,
  *.test, *.invalid, …) is kept inside code or in a task about formats (regex, validation, parsing),
  and any address in the code of such a task is kept; URL credentials (`ftp://user:pass@host`) are
  not e-mail addresses. Likewise any IP address in the code of a task about IP addresses.

Every redaction is counted per kind; `scan` also returns a few (before, after) snippets per kind
for the report.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import polars as pl

from pipeline.quality.textkind import CODE_LINE

#: kind -> (candidate pattern, placeholder). Order matters: longer, more specific shapes are replaced
#: first (a private-key block before the API-key shapes inside it; an e-mail before the IP-like digits).
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
#: Kinds whose matches are validated one by one (the others are replaced as found).
VALIDATED = ("email", "ip", "credit_card", "phone")

_CODE_LINE = re.compile(CODE_LINE.removeprefix("(?m)"))
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE = re.compile(r"`[^`\n]{1,200}`")
_VERSION_BEFORE = re.compile(
    r"(?i)(?:§|\bv|\b(?:versions?|ver|release[sd]?|rel|build|revision|rev|patch|update[sd]?|upgraded?|"
    r"downgraded?|install(?:ed)?|sp|service pack|sections?|sec|chapter|ch|clause|article|art|paragraph|para|"
    r"rule|fig|figure|table|step|item|part|no|git|python|java|jdk|jre|node|nodejs|npm|pip|gcc|clang|llvm|kernel|"
    r"linux|windows|macos|ios|android|chrome|firefox|safari|edge|ubuntu|debian|centos|fedora|rhel|firmware|bios|"
    r"driver|sdk|api|php|ruby|perl|rails|django|flask|numpy|pandas|tensorflow|pytorch|torch|cuda|openssl|nginx|"
    r"apache|mysql|postgres|postgresql|redis|docker|kubernetes|helm|terraform|unity|office|excel|dotnet|\.net)"
    r")[\s:=#-]*$"
)
_VERSION_AFTER = re.compile(r"(?i)^(?:\.\d|-?(?:alpha|beta|rc|dev|snapshot|final|pre|post|preview|stable|lts)\b|[ab]\d)")
_PUBLIC_RESOLVERS = {"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222",
                     "208.67.220.220"}
_DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
_RESERVED_DOMAIN = re.compile(
    r"(?i)(?:^|\.)(?:example(?:\.(?:com|net|org|edu))?|test|invalid|localhost|local)$"
)
_ROLE_LOCAL = re.compile(
    r"(?i)^(?:alerts?|info|support|help|helpdesk|noreply|no-reply|donotreply|do-not-reply|contact|admin|"
    r"administrator|sales|service|services|team|hello|webmaster|postmaster|hostmaster|abuse|billing|press|news|"
    r"newsletter|marketing|jobs|careers|hr|office|enquiries|inquiries|feedback|notifications?|security|privacy|"
    r"legal|orders?|customerservice|customer\.service)$"
)
#: Local parts that stand for "an address" (your_email@…, user@…, email@xxx.com), not a person.
_PLACEHOLDER_LOCAL = re.compile(
    r"(?i)^(?:your[._-]?\w*|my[._-]?\w*|user(?:name)?\d*|e-?mail|name|someone|somebody|test\d*|foo|bar|xxx+|"
    r"example|sample|me|you|abc|xyz|sender|receiver|recipient|from|to)$"
)
#: A task about formats or addresses (a regex, validation, parsing, IP addresses): the addresses in
#: its code are the subject of the task, not anyone's data.
FORMAT_TASK = (
    r"(?i)\b(?:regex|regexp|regular expression|validat\w*|email format|e-mail format|pattern|pars(?:e|es|ing|er)|"
    r"ip address(?:es)?|ipv[46]|e-?mail address(?:es)?)\b"
)
_PHONE_PUBLIC_BEFORE = re.compile(
    r"(?i)(?:help ?line|hot ?line|life ?line|crisis(?: text)? line|toll[- ]free|tip line|samaritans|"
    r"emergency|customer (?:service|care|support)|support line|call cent(?:er|re))[^.\n]{0,40}$"
)
_TOLL_FREE_NANP = {"800", "833", "844", "855", "866", "877", "888"}
_UK_PUBLIC = ("0800", "0808", "0300", "0345", "0845", "0870", "116", "111")
_NANP_INVALID_AREA = re.compile(r"^(?:[01]\d\d|\d11)$")


@dataclass
class Context:
    """What surrounds a text: whether the task is about formats, and (found when first asked) whether
    the whole turn is code."""

    format_task: bool = False
    code: bool | None = None
    _spans: list[tuple[int, int]] | None = field(default=None, repr=False)

    def in_code(self, text: str, start: int) -> bool:
        """Inside a fenced block, inline code, or on a line that looks like code; or the turn is code."""
        if self.code is None:
            from pipeline.quality.textkind import kinds

            self.code = kinds(pl.Series([text]))["kind"][0] == "code"
        if self.code:
            return True
        if self._spans is None:
            self._spans = [m.span() for m in _FENCE.finditer(text)] + [m.span() for m in _INLINE.finditer(text)]
        if any(a <= start < b for a, b in self._spans):
            return True
        lo = text.rfind("\n", 0, start) + 1
        hi = text.find("\n", start)
        return bool(_CODE_LINE.match(text[lo: hi if hi >= 0 else len(text)]))


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


def _decimal_neighbour(text: str, start: int, end: int) -> bool:
    """The match is the digits of a decimal or of a longer number (`1256.637…`, `11,600`)."""
    before = text[max(0, start - 2):start]
    after = text[end:end + 2]
    return bool(re.search(r"\d[.,]$|\d$", before) or re.match(r"^[.,]\d|^\d", after))


def valid_ip(text: str, start: int, end: int, ctx: Context) -> bool:
    """Is this IP-shaped match a host address worth redacting?"""
    s = text[start:end]
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    if ip.version == 4:
        if any(len(o) > 1 and o[0] == "0" for o in s.split(".")):
            return False
        before, after = text[max(0, start - 40):start], text[end:end + 12]
        if (start and text[start - 1] in ".§") or _VERSION_BEFORE.search(before) or _VERSION_AFTER.match(after):
            return False
        if re.match(r"^/\d{1,2}\b", after) or s in _PUBLIC_RESOLVERS:
            return False
        if s.startswith("255.") or ip.is_unspecified or ip.is_loopback or ip.is_multicast:
            return False
    elif ip.is_loopback or ip.is_unspecified:
        return False
    in_doc = any(ip in n for n in _DOC_NETS if n.version == ip.version)
    # Kept: a private or documentation address in code; any address in the code of an IP task.
    return not ((ip.is_private or ip.is_link_local or in_doc or ctx.format_task) and ctx.in_code(text, start))


def valid_phone(text: str, start: int, end: int, ctx: Context) -> bool:
    """Is this phone-shaped match a plausible personal phone number?"""
    s = text[start:end]
    digits = re.sub(r"\D", "", s)
    if len(digits) < 10 or len(set(digits)) <= 2 or digits in "01234567890123456789":
        return False
    before = text[max(0, start - 60):start]
    after = text[end:end + 8]
    # Arithmetic or a longer number: an operator, digit or decimal mark right before or after.
    if re.search(r"(?:[=+*/×÷<>^$%]\s*|\d[\-.,]?)$", before) and not re.search(r"(?:^|[^\d\-])1[ .\-]$", before):
        return False
    if re.match(r"^\s*[=+*/×÷<>^%]|^[.,]?\d", after):
        return False
    if _PHONE_PUBLIC_BEFORE.search(before):
        return False
    groups = re.findall(r"\d+", s)
    if s.startswith("+"):
        cc, rest = groups[0], groups[1:]
        return not (cc == "1" and rest and (_NANP_INVALID_AREA.match(rest[0]) or rest[0] in _TOLL_FREE_NANP))
    area = groups[0]
    if [len(g) for g in groups] == [3, 3, 4]:  # North American shape
        return not _NANP_INVALID_AREA.match(area) and area not in _TOLL_FREE_NANP
    if area.startswith(_UK_PUBLIC) or digits.startswith(_UK_PUBLIC):
        return False
    return area.startswith("0")  # a trunk prefix (020 7946 0123, 03-1234-5678)


def valid_card(text: str, start: int, end: int, ctx: Context) -> bool:
    return luhn_ok(text[start:end]) and not _decimal_neighbour(text, start, end)


def valid_email(text: str, start: int, end: int, ctx: Context) -> bool:
    """Is this address someone's? Not a role address, URL credentials, or an example in code/format tasks."""
    s = text[start:end]
    local, _, domain = s.rpartition("@")
    if _ROLE_LOCAL.match(local) or _PLACEHOLDER_LOCAL.match(local) or re.search(
            r"://[^\s/@]*:?$", text[max(0, start - 40):start]):
        return False
    reserved = bool(_RESERVED_DOMAIN.search(domain))
    in_code = ctx.in_code(text, start)
    if reserved and (in_code or ctx.format_task):
        return False
    return not (ctx.format_task and in_code)


VALIDATORS = {"ip": valid_ip, "phone": valid_phone, "credit_card": valid_card, "email": valid_email}
_COMPILED = {k: re.compile(p) for k, (p, _) in PATTERNS.items()}


def _validated(text: str, kind: str, placeholder: str | None, ctx: Context) -> tuple[str, int]:
    """(text with the valid matches of `kind` replaced when placeholder is given, how many were valid)."""
    n = 0
    check = VALIDATORS[kind]

    def sub(m: re.Match) -> str:
        nonlocal n
        if check(text, m.start(), m.end(), ctx):
            n += 1
            return placeholder if placeholder is not None else m.group(0)
        return m.group(0)

    return _COMPILED[kind].sub(sub, text), n


def snippet(before: str, after: str, width: int = 50) -> tuple[str, str]:
    """The first changed stretch of a text, before and after, with `width` characters around it."""
    i = 0
    while i < min(len(before), len(after)) and before[i] == after[i]:
        i += 1
    j = 0
    while j < min(len(before), len(after)) - i and before[-1 - j] == after[-1 - j]:
        j += 1
    lo = max(0, i - width)

    def cut(t: str) -> str:
        hi = min(len(t), len(t) - j + width)
        return ("…" if lo else "") + t[lo:hi].replace("\n", " ") + ("…" if hi < len(t) else "")

    return cut(before), cut(after)


@dataclass
class Redaction:
    """One redacted text: its position in the scanned column, the kind, and the changed stretch."""

    position: int
    kind: str
    before: str
    after: str


def scan(
    contents: pl.Series, policies: dict[str, str], format_task: list[bool] | None = None, examples: int = 0,
    code: list[bool] | None = None,
) -> tuple[pl.Series, dict[str, pl.Series], list[Redaction]]:
    """Redact the kinds whose policy is "redact" and count every kind (whatever its policy).

    `format_task` (one per content) marks texts of a task about formats (their example addresses are
    kept), `code` the texts that are code as a whole (textkind; found per text when not given).
    Returns the new contents, per kind the number of (valid) matches in each content string, and up
    to `examples` redactions per kind as before -> after snippets."""
    counts: dict[str, pl.Series] = {}
    shown: list[Redaction] = []
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
        if kind in VALIDATED:
            has = texts.str.contains(pattern).arg_true()
            idx, texts = idx.gather(has), texts.gather(has)
            if idx.len() == 0:
                continue
            ph = placeholder if policy == "redact" else None
            pairs = [_validated(t, kind, ph, Context(format_task=bool(format_task[i]) if format_task else False,
                                                     code=code[i] if code else None))
                     for t, i in zip(texts.to_list(), idx.to_list(), strict=True)]
            found = pl.Series([k for _, k in pairs], dtype=pl.Int64)
            new = pl.Series([t for t, _ in pairs], dtype=pl.String)
        else:
            found = texts.str.count_matches(pattern).cast(pl.Int64)
            new = texts.str.replace_all(pattern, placeholder) if policy == "redact" else texts
        counts[kind] = zeros.clone().scatter(idx, found)
        if policy == "redact" and (found > 0).any():
            if examples:
                hit = (found > 0).arg_true().head(examples)
                for pos, b, a in zip(idx.gather(hit).to_list(), texts.gather(hit).to_list(), new.gather(hit).to_list(),
                                     strict=True):
                    shown.append(Redaction(pos, kind, *snippet(b, a)))
            out = out.scatter(idx, new)
    return out, counts, shown
