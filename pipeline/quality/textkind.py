r"""What kind of text a turn is (prose, code or math), and its prose without the code and math.

Rules that read language (repetition, language identification, PII, placeholders) go wrong on code
and step-by-step arithmetic: a loop body repeats n-grams, `def f(x): return x` reads as Catalan to
langdetect, `127.0.0.1` in a config is not a person's address. So each turn is classified first:

- **code**: most of its non-blank lines are inside fenced blocks (```), or at least 30% of them
  (and at least two) look like code (a line ending in `;`, `{`, `}` or `):`, or starting with a
  keyword shape such as `def name(`, `return`, `import x`, `#include`, `if …:`);
- **math**: at least two arithmetic expressions (`3 * 4`, `= 12`, `<<2*6=12>>`, `x^2`) and digits or
  operators making up at least 12% of its characters;
- **prose**: everything else.

`prose_of` removes fenced blocks, inline code, code-like lines and arithmetic tokens, leaving the
words a language identifier should see. All of it is polars (Rust) regex over whole columns.
"""

from __future__ import annotations

import numpy as np
import polars as pl

FENCE = r"(?s)```.*?(?:```|\z)"
INLINE_CODE = r"`[^`\n]{1,200}`"
#: A line that looks like code (multi-line mode; \r? for CRLF files such as MBPP's).
CODE_LINE = (
    r"(?m)^[ \t]*(?:"
    r"(?:def|class|fn|func|function)[ \t]+\w+[ \t]*[(:<{]"
    r"|(?:import|from)[ \t]+[\w.]+(?:[ \t]+import\b|[ \t]*;?[ \t]*\r?$|[ \t]+as\b)"
    r"|#include\b|#define\b|#!/|package[ \t]+[\w.]+;"
    r"|(?:return|yield|raise|assert)\b(?:[ \t]*|[ \t]+[^\n]*[\w)\]}\"'])[ \t]*\r?$"
    r"|(?:if|elif|while|for|with|except|try|else|finally)\b[^\n]*:[ \t]*\r?$"
    r"|(?:public|private|protected|static|const|let|var|val|using|namespace)[ \t]+[\w<>\[\],]+[ \t]*[\w(=<{;]"
    r"|(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP)[ \t]+\S[^\n]*"
    r"|[^\n]*[;{}][ \t]*\r?$"
    r"|[^\n]*\)[ \t]*:[ \t]*\r?$"
    r"|[})\]]+[;,)]?[ \t]*\r?$"
    r"|(?:print|console\.log|System\.out\.\w+|printf|echo)[ \t]*\("
    r"|[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?[ \t]*(?:[+\-*/%|&]|//|\*\*)?=[ \t]*[\w\"'(\[{-](?:[^\n]*[\w\"')\]}])?[ \t]*\r?$"
    r")"
)
NONBLANK_LINE = r"(?m)^[ \t]*\S"
#: An arithmetic expression: two numbers (or a letter variable) around an operator, or a number after "=".
ARITH = (
    r"(?:\d[\d.,]*|\b[a-z]\b)[ \t]*(?:[-+*/×÷^=<>≤≥≈]|\bx\b)[ \t]*(?:\$?\d|\b[a-z]\b|\()"
    r"|=[ \t]*\$?-?\d|<<[^<>\n]{1,80}>>"
)
MATH_CHAR = r"[\d+\-*/=×÷^%<>√π±≈≤≥()]"
#: Removed before language identification: arithmetic, numbers, URLs, e-mail, paths and symbols
#: (ASCII token characters only: Chinese has no spaces, and a sentence must not go with its digits).
_TOK = r"[A-Za-z0-9_.,:;/\\+\-*=^%()\[\]'\"]"
MATH_TOKEN = (
    r"<<[^<>\n]{0,80}>>|https?://[^\s<>\"']+|[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+"
    rf"|[A-Za-z0-9_.\-]*[/\\][A-Za-z0-9_./\\\-]+|{_TOK}*\d{_TOK}*|[-+*/=×÷^%<>√π±≈≤≥|#$€£¥&~_]+"
)
#: In a code turn, a line with any of these characters is code, not prose.
CODE_CHARS = r"[(){}\[\];=<>$#@|\\]"
#: ... and a line without them is prose when it has non-ASCII letters (a comment, a sentence in
#: Chinese) or reads like a sentence (four words or more ending in punctuation).
PROSE_LINE = r"[\p{L}&&[^\x00-\x7F]]|^\s*\S+(?:\s+\S+){3,}[.!?:。！？：]\s*$"

CODE_MIN_LINE_SHARE = 0.3
CODE_MIN_LINES = 2
MATH_MIN_EXPRESSIONS = 2
MATH_MIN_CHAR_SHARE = 0.12


def kinds(texts: pl.Series, math: bool = True) -> pl.DataFrame:
    """Per text: `kind` ("code", "math" or "prose"), `fenced` (characters inside ``` blocks),
    `code_lines`, `lines` (non-blank) and `math_share` (digits and operators / characters).
    Without `math`, math is not looked for (it is "prose"; `math_kind` tells it later).

    The costly patterns only run where they can matter: code lines in multi-line texts with a code
    character, arithmetic in texts with an operator."""
    t = texts.fill_null("")
    f = pl.DataFrame({"t": t}).select(
        pl.col("t").str.contains("```", literal=True).alias("has_fence"),
        pl.col("t").str.count_matches("\n", literal=True).alias("newlines"),
        pl.col("t").str.contains(r"[;{}=]|\):").alias("code_char"),
        pl.col("t").str.contains(r"[=+*/×÷^<>]").alias("operator"),
        pl.col("t").str.len_chars().alias("chars"),
    )
    n = t.len()
    fenced = np.zeros(n, dtype=np.int64)
    idx = f["has_fence"].arg_true()
    if idx.len():
        inside = t.gather(idx).str.extract_all(FENCE).list.eval(pl.element().str.len_chars()).list.sum()
        fenced[idx.to_numpy()] = inside.fill_null(0).to_numpy()
    newlines = f["newlines"].to_numpy()
    code_lines = np.zeros(n, dtype=np.int64)
    lines = np.minimum(newlines + 1, 1)
    cand = (f["code_char"] & (f["newlines"] > 0)).arg_true()
    if cand.len():
        sub = t.gather(cand)
        code_lines[cand.to_numpy()] = sub.str.count_matches(CODE_LINE).to_numpy()
        lines[cand.to_numpy()] = sub.str.count_matches(NONBLANK_LINE).to_numpy()
    expr = np.zeros(n, dtype=np.int64)
    mchars = np.zeros(n, dtype=np.int64)
    math_cand = f["operator"].arg_true() if math else pl.Series([], dtype=pl.UInt32)
    if math_cand.len():
        sub = t.gather(math_cand)
        expr[math_cand.to_numpy()] = sub.str.count_matches(ARITH).to_numpy()
        mchars[math_cand.to_numpy()] = sub.str.count_matches(MATH_CHAR).to_numpy()
    chars = np.maximum(f["chars"].to_numpy(), 1)
    math_share = mchars / chars
    is_code = (fenced >= 0.5 * chars) | (
        (code_lines >= CODE_MIN_LINES) & (code_lines >= CODE_MIN_LINE_SHARE * np.maximum(lines, 1))
    )
    is_math = ~is_code & (expr >= MATH_MIN_EXPRESSIONS) & (math_share >= MATH_MIN_CHAR_SHARE)
    kind = np.where(is_code, "code", np.where(is_math, "math", "prose"))
    return pl.DataFrame({"kind": kind, "fenced": fenced, "code_lines": code_lines, "lines": lines,
                         "math_share": math_share})


def math_kind(texts: pl.Series, kind: pl.Series) -> pl.Series:
    """`kind` (from kinds(math=False)) with the prose texts that are math marked "math"."""
    idx = (kind == "prose").arg_true()
    if idx.len() == 0:
        return kind
    return kind.scatter(idx, kinds(texts.gather(idx))["kind"])


def prose_of(texts: pl.Series, kind: pl.Series | None = None) -> pl.Series:
    """The texts without fenced blocks, inline code, code-like lines, arithmetic, numbers, URLs and
    symbols: what is left to tell the language by. In a code turn (`kind`, computed when not given)
    only the lines without any code character are prose (comments in another language, the
    sentence before the code)."""
    t = texts.fill_null("")
    if kind is None:
        kind = kinds(t)["kind"]
    special = t.str.contains(r"[`;{}()=\[\]#:\d/@<>|$]")
    code_line_filter = (
        pl.col("t").str.split("\n").list.eval(pl.element().filter(
            ~pl.element().str.contains(CODE_CHARS) & pl.element().str.contains(PROSE_LINE)
            & ~pl.element().str.contains(CODE_LINE.removeprefix("(?m)"))
        ))
        .list.join("\n")
    )
    stripped = (
        pl.when(pl.col("code")).then(code_line_filter).otherwise(pl.col("t"))
        .str.replace_all(FENCE, " ")
        .str.replace_all(INLINE_CODE, " ")
        .str.replace_all(MATH_TOKEN, " ")
    )
    out = (
        pl.DataFrame({"t": t, "special": special, "code": kind == "code"})
        .select(pl.when(pl.col("special")).then(stripped).otherwise(pl.col("t")))
        .to_series()
    )
    return out.alias(texts.name)
