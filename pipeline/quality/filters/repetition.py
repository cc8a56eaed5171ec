"""quality.repetition: Gopher-style repetition in assistant turns (Rae et al. 2021, table A1), each
kind of text (prose, math, code) by the checks that suit it."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.core.textnorm import fold_ngrams, owners, word_hashes
from pipeline.quality.batch import Batch, FilterResult, drop_rows, first_detail, keep_all
from pipeline.quality.textkind import math_kind
from schemas.config_curation import QualityConfig


def _ngram_fracs(fh: np.ndarray, lens: np.ndarray, wchars: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gopher repetition signals per text for word n-grams: (characters of the repeated n-gram that
    covers most characters / all word characters, characters of words inside any repeated n-gram /
    all word characters). Gopher's "top n-gram" takes the most frequent n-gram; the one covering the
    most characters is used here (no sort needed), which can only flag more."""
    owner = owners(lens)
    total = np.maximum(np.bincount(owner, weights=wchars, minlength=len(lens)), 1)
    top = np.zeros(len(lens))
    h, doc, start = fold_ngrams(fh, lens, n, short=False)
    if len(h) == 0:
        return top, top.copy()
    csum = np.concatenate([[0], np.cumsum(wchars)])
    chars = csum[start + n] - csum[start]
    # Runs of equal (document, hash) after one sort are the repeated n-grams (polars sorts the
    # 64-bit keys with the columns that go with them ~5x faster than np.argsort). One key per
    # (document, n-gram); a collision would need 2^64 luck. Equal keys are the same words, so the
    # order within a run does not matter.
    key = h.astype(np.uint64) + doc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    srt = pl.DataFrame({"k": key, "d": doc, "c": chars, "s": start}).sort("k")
    ks, ds, cs, ss = (srt[c].to_numpy() for c in ("k", "d", "c", "s"))
    eq = ks[1:] == ks[:-1]
    repeated = np.zeros(len(ks), dtype=bool)  # per sorted n-gram: in a run of two or more
    repeated[1:] = eq
    repeated[:-1] |= eq
    heads = np.flatnonzero(np.concatenate([[True], ~eq]))
    run_len = np.diff(np.append(heads, len(ks)))
    heads, run_len = heads[run_len > 1], run_len[run_len > 1]
    np.maximum.at(top, ds[heads], run_len * cs[heads] / total[ds[heads]])
    dup_start = ss[repeated]
    size = len(wchars) + 1
    cover = np.bincount(dup_start, minlength=size) - np.bincount(dup_start + n, minlength=size)
    covered = np.cumsum(cover)[:-1] > 0
    dup_frac = np.bincount(owner, weights=wchars * covered, minlength=len(lens)) / total
    return top, dup_frac


#: Words per call of `_ngram_fracs`: its arrays then stay small enough to be reused from the heap
#: (fresh memory is slow to fault in on some VMs: one 4.4M-word call took 5.3 s the first time, 0.9 s after).
_MAX_WORDS = 1 << 20


def _ngram_fracs_by_docs(fh: np.ndarray, lens: np.ndarray, wchars: np.ndarray, n: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """`_ngram_fracs` over consecutive groups of documents of about `_MAX_WORDS` words: the same
    values, as each document's signals depend on its own n-grams only."""
    if len(fh) <= _MAX_WORDS:
        return _ngram_fracs(fh, lens, wchars, n)
    ends = np.cumsum(lens)
    cuts = [0]
    while cuts[-1] < len(lens):  # the next group ends where its words pass _MAX_WORDS (one document at least)
        base = ends[cuts[-1] - 1] if cuts[-1] else 0
        cuts.append(max(cuts[-1] + 1, int(np.searchsorted(ends, base + _MAX_WORDS, "right"))))
    tops, dups = [], []
    for d0, d1 in zip(cuts, cuts[1:], strict=False):
        w0, w1 = (int(ends[d0 - 1]) if d0 else 0), int(ends[d1 - 1])
        top, dup = _ngram_fracs(fh[w0:w1], lens[d0:d1], wchars[w0:w1], n)
        tops.append(top)
        dups.append(dup)
    return np.concatenate(tops), np.concatenate(dups)


def _dup_line_fracs(t: pl.DataFrame) -> np.ndarray:
    """Per turn of `t`, the share of its non-blank lines that repeat an earlier line."""
    multi = t.select(pl.int_range(pl.len()).alias("i"), "content").filter(
        pl.col("content").str.contains("\n", literal=True)
    )
    lines = (
        multi.select("i", pl.col("content").str.split("\n").alias("l"))
        .explode("l")
        .with_columns(pl.col("l").str.strip_chars())
        .filter(pl.col("l") != "")
        .group_by("i")
        .agg(((pl.len() - pl.col("l").n_unique()) / pl.len()).alias("f"))
    )
    out = np.zeros(t.height)
    out[lines["i"].to_numpy()] = lines["f"].to_numpy()
    return out


def repetition(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Gopher-style repetition in assistant turns, by the kind of text (textkind.kinds): prose gets
    every check (duplicate lines, most frequent 2/3/4-grams, characters in repeated 5- and
    10-grams); math the duplicate lines and 10-grams (a worked solution repeats its phrases by
    design); code only the repeated 10-grams (loop bodies and branches repeat short n-grams, a
    function written out again does not pass)."""
    t = b.turns("assistant", kind=True).with_columns(pl.col("content").fill_null("").alias("content"))
    # norm has single spaces: counting them counts words without a regex.
    t = t.filter(pl.col("norm").str.count_matches(" ", literal=True) + 1 >= cfg.repetition_min_words)
    if t.height == 0:
        return keep_all(b.n, "quality.repetition")
    kind = math_kind(t["content"], t["kind"]).to_numpy()
    prose, code = kind == "prose", kind == "code"
    # Hashes only compared within this batch: polars' fast hash will do.
    fh, lens, wchars = word_hashes(t["norm"], bits=64, stable=False, spaces=True)
    top2, dup2 = _ngram_fracs_by_docs(fh, lens, wchars, 2)
    checks = [
        ("duplicate-line fraction", np.where(code, 0.0, _dup_line_fracs(t)), cfg.max_dup_line_frac),
        ("top 2-gram character fraction", np.where(prose, top2, 0.0), cfg.max_top_2gram_frac),
    ]
    # Every word inside a repeated n-gram (n >= 2) is inside a repeated 2-gram, so a turn whose
    # repeated 2-grams cover little cannot fail the longer checks; only the others are computed
    # (half the smallest limit leaves room for overlapping occurrences in the top-n counts).
    longer = [(3, cfg.max_top_3gram_frac, 0, prose), (4, cfg.max_top_4gram_frac, 0, prose),
              (5, cfg.max_dup_5gram_frac, 1, prose), (10, cfg.max_dup_10gram_frac, 1, None)]
    gate = dup2 > 0.5 * min(limit for _, limit, _, _ in longer)
    owner_gate = gate[owners(lens)]
    sub = (fh[owner_gate], lens[gate], wchars[owner_gate])
    for n, limit, which, applies in longer:
        values = np.zeros(t.height)
        if gate.any():
            values[gate] = _ngram_fracs_by_docs(*sub, n)[which]
        if applies is not None:
            values = np.where(applies, values, 0.0)
        name = f"top {n}-gram character fraction" if which == 0 else f"duplicate {n}-gram character fraction"
        checks.append((name, values, limit))
    why: list[str | None] = [None] * t.height
    for name, values, limit in reversed(checks):  # the first failing check names the reason
        for i in np.flatnonzero(values > limit).tolist():
            why[i] = f"({kind[i]}) {name} {values[i]:.2f} > {limit}"
    hits = t.select("row", "turn").with_columns(pl.Series("why", why, dtype=pl.String)).filter(
        pl.col("why").is_not_null()
    )
    detail = first_detail(b.n, hits, pl.format("assistant turn {} {}", "turn", "why"))
    return FilterResult(drop_rows(b.n, hits["row"]), "quality.repetition", detail)
