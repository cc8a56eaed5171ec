"""quality.placeholder: an assistant turn with an unfilled template variable ({{name}}, {author}, …)."""

from __future__ import annotations

import re
from functools import lru_cache

import polars as pl

from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail
from pipeline.quality.pii import Context
from schemas.config_curation import QualityConfig

#: Template-engine variables left in generated text: {{name}} (Jinja, Mustache), {first_name} (a
#: format-string variable: single braces only with a snake_case name, as `{Company Name}` or
#: `{state}` in a contract template are blanks meant for the reader, like "[Your Name]", and `{x_n}`
#: is set notation), <<name>>, [INSERT NAME], %(name)s. A `$` before braces is a shell or JavaScript
#: expression; anything in code is code.
PLACEHOLDER_PATTERNS = [
    r"(?<![$\w])\{\{\s*[A-Za-z_][\w.\-]*(?:\s+[\w.\-]+){0,3}\s*\}\}",
    r"(?<![\w\\$%}^_{])\{[a-z]{2,}(?:_[a-z0-9]+)+\}(?![{\w])",
    r"<<\s*[A-Za-z_][A-Za-z_ ]{1,30}\s*>>",
    r"\[(?:INSERT|ENTER|ADD|PLACEHOLDER)\b[^\]\n]{0,40}\]",
    r"%\([A-Za-z_]\w*\)s",
]
#: Cheap test before the patterns run (polars' regex has no look-behind).
_GATE = r"\{\{|\{[a-z]{2,}_|<<\s*[A-Za-z_]|\[(?:INSERT|ENTER|ADD|PLACEHOLDER)|%\("


@lru_cache(maxsize=16)
def _regex(extra: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in PLACEHOLDER_PATTERNS + list(extra)))


def unfilled(text: str, earlier: str, rx: re.Pattern, code: bool | None = None) -> list[str]:
    """The placeholders of `text` that are not in code and not already in an earlier turn (a
    template the user gave); `code`: the whole turn is code (found when not given)."""
    ctx = Context(code=code)
    return [m.group(0) for m in rx.finditer(text) if m.group(0) not in earlier and not ctx.in_code(text, m.start())]


def placeholder(b: Batch, cfg: QualityConfig) -> FilterResult:
    """An assistant turn with an unfilled template variable outside code that no earlier turn has."""
    rx = _regex(tuple(cfg.placeholder_patterns))
    gate = _GATE + "".join(f"|{p}" for p in cfg.placeholder_patterns)
    t = b.turns(kind=True).select("row", "turn", "role", "kind", pl.col("content").fill_null(""))
    cand = t.filter((pl.col("role") == "assistant") & pl.col("content").str.contains(gate))
    if cand.height == 0:
        return FilterResult(drop_rows(b.n, []), "quality.placeholder", [None] * b.n)
    earlier = t.filter(pl.col("row").is_in(cand["row"].unique().implode()))
    found: list[tuple[int, int, str]] = []
    for r, turn, text, kind in cand.select("row", "turn", "content", "kind").iter_rows():
        before = "\n".join(earlier.filter((pl.col("row") == r) & (pl.col("turn") < turn))["content"].to_list())
        names = unfilled(text, before, rx, kind == "code")
        if names:
            found.append((r, turn, ", ".join(dict.fromkeys(names))[:120]))
    hits = pl.DataFrame(found, schema={"row": pl.Int64, "turn": pl.Int64, "names": pl.String}, orient="row")
    detail = first_detail(b.n, hits, pl.format("assistant turn {} has unfilled template variable(s) {}", "turn", "names"))
    return FilterResult(drop_rows(b.n, hits["row"]), "quality.placeholder", detail)
