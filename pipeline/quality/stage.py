"""Quality filters: plain functions over a batch of conversations, each returning a keep mask and a
reason code, named in one registry (FILTERS). `filter_frame` runs the configured ones in order, each
on what the previous kept; `run_quality` runs it over Parquet parts in parallel processes.

True in a mask means keep. Every dropped conversation gets a ledger row `quality.<rule>` with a
sentence; PII is redacted (typed placeholders) or drops the conversation, per kind; every redaction
is counted; the detected language is recorded in the `lang` column.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.procpool import pool_map
from pipeline.core.rundir import RunDir, atomic_write_json, atomic_write_parquet
from pipeline.core.textnorm import fold_ngrams, normalized_turns, word_hashes
from pipeline.ingest.canonical import MESSAGE
from schemas.config_curation import ContaminationConfig, QualityConfig


@dataclass
class Batch:
    """The conversations a filter looks at (`df`, rows 0..n-1) and their turns, one row per turn."""

    df: pl.DataFrame

    @property
    def n(self) -> int:
        return self.df.height

    def turns(self, *roles: str) -> pl.DataFrame:
        """row, turn, role, content, norm (normalised content); only `roles` when given. `norm`
        comes from the hidden `_norm` column when filter_frame made one, else it is computed."""
        if "_norm" not in self.df.columns:
            t = normalized_turns(self.df)
        else:
            t = (
                self.df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "messages", "_norm")
                .explode(["messages", "_norm"])
                .with_columns(pl.int_range(pl.len()).over("row").alias("turn"))
                .unnest("messages")
                .filter(pl.col("role").is_not_null())
                .rename({"_norm": "norm"})
                .select("row", "turn", "role", "content", "norm")
            )
        return t.filter(pl.col("role").is_in(list(roles))) if roles else t


@dataclass
class FilterResult:
    keep: np.ndarray  # bool per row of the batch
    reason: str  # the ledger code of the drops
    detail: list[str | None] | None = None  # per row: why (for dropped rows)
    columns: dict[str, pl.Series] = field(default_factory=dict)  # replaced / added columns
    stats: dict = field(default_factory=dict)


def _rows_with(n: int, rows: pl.Series | np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    return mask


def _first_detail(n: int, rows: pl.DataFrame, text: pl.Expr) -> list[str | None]:
    """Per row, the first of the given (row, …) rows' sentences."""
    out: list[str | None] = [None] * n
    firsts = rows.group_by("row", maintain_order=True).first().select("row", text.alias("d"))
    for r, d in firsts.iter_rows():
        out[r] = d
    return out


# --- filters ------------------------------------------------------------------------------------


def empty(b: Batch, cfg: QualityConfig) -> FilterResult:
    """An assistant turn that is empty or whitespace only."""
    t = b.turns("assistant").filter(pl.col("content").fill_null("").str.strip_chars() == "")
    detail = _first_detail(b.n, t, pl.format("assistant turn {} is empty or whitespace only", pl.col("turn")))
    return FilterResult(~_rows_with(b.n, t["row"]), "quality.empty", detail)


def echo(b: Batch, cfg: QualityConfig) -> FilterResult:
    """An assistant turn that only repeats its prompt: equal to it after normalisation, or (when at
    least `echo_min_chars` long) contained in it."""
    t = b.turns().rename({"norm": "n"})
    # Turns are in conversation order, so the previous row is the prompt when it has the same row.
    same = pl.col("row") == pl.col("row").shift(1)
    t = t.with_columns(pl.when(same).then(pl.col("n").shift(1)).alias("prev")).filter(
        (pl.col("role") == "assistant") & pl.col("prev").is_not_null() & (pl.col("n") != "")
    )
    hit = t.filter(
        (pl.col("n") == pl.col("prev"))
        | ((pl.col("n").str.len_chars() >= cfg.echo_min_chars) & pl.col("prev").str.contains(pl.col("n"), literal=True))
    )
    detail = _first_detail(b.n, hit, pl.format("assistant turn {} only repeats the prompt", pl.col("turn")))
    return FilterResult(~_rows_with(b.n, hit["row"]), "quality.echo", detail)


def length(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Characters and words per turn and per conversation within the configured bounds."""
    t = b.turns().with_columns(
        pl.col("content").fill_null("").str.len_chars().alias("chars"),
        # norm has single spaces between words: counting them needs no regex.
        (pl.col("norm").str.count_matches(" ", literal=True) + (pl.col("norm") != "").cast(pl.UInt32)).alias("words"),
    )
    per_turn = t.with_columns(
        pl.when(pl.col("chars") > cfg.max_turn_chars)
        .then(pl.format("turn {} has {} characters > max_turn_chars {}", "turn", "chars", pl.lit(cfg.max_turn_chars)))
        .when(pl.col("words") > cfg.max_turn_words)
        .then(pl.format("turn {} has {} words > max_turn_words {}", "turn", "words", pl.lit(cfg.max_turn_words)))
        .when((pl.col("role") == "assistant") & (pl.col("chars") < cfg.min_turn_chars))
        .then(pl.format("assistant turn {} has {} characters < min_turn_chars {}", "turn", "chars",
                        pl.lit(cfg.min_turn_chars)))
        .alias("why")
    ).filter(pl.col("why").is_not_null())
    conv = t.group_by("row").agg(pl.col("chars").sum(), pl.col("words").sum()).with_columns(
        pl.when(pl.col("chars") > cfg.max_conversation_chars)
        .then(pl.format("{} characters > max_conversation_chars {}", "chars", pl.lit(cfg.max_conversation_chars)))
        .when(pl.col("words") > cfg.max_conversation_words)
        .then(pl.format("{} words > max_conversation_words {}", "words", pl.lit(cfg.max_conversation_words)))
        .when(pl.col("words") < cfg.min_conversation_words)
        .then(pl.format("{} words < min_conversation_words {}", "words", pl.lit(cfg.min_conversation_words)))
        .alias("why")
    ).filter(pl.col("why").is_not_null())
    hits = pl.concat([per_turn.select("row", "why"), conv.select("row", "why")]).sort("row", maintain_order=True)
    return FilterResult(~_rows_with(b.n, hits["row"]), "quality.length", _first_detail(b.n, hits, pl.col("why")))


def _ngram_fracs(fh: np.ndarray, lens: np.ndarray, wchars: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gopher repetition signals per text for word n-grams: (characters of the repeated n-gram that
    covers most characters / all word characters, characters of words inside any repeated n-gram /
    all word characters). Gopher's "top n-gram" takes the most frequent n-gram; the one covering the
    most characters is used here (no sort needed), which can only flag more."""
    owner = np.repeat(np.arange(len(lens)), lens)
    total = np.maximum(np.bincount(owner, weights=wchars, minlength=len(lens)), 1)
    top = np.zeros(len(lens))
    h, doc, start = fold_ngrams(fh, lens, n, short=False)
    if len(h) == 0:
        return top, top.copy()
    csum = np.concatenate([[0], np.cumsum(wchars)])
    chars = csum[start + n] - csum[start]
    # Runs of equal (document, hash) after one sort are the repeated n-grams.
    # One 64-bit key per (document, n-gram); a collision would need 2^64 luck.
    key = h.astype(np.uint64) + doc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    order = np.argsort(key)
    ks, ds = key[order], doc[order]
    new_run = np.concatenate([[True], ks[1:] != ks[:-1]])
    run_id = np.cumsum(new_run) - 1
    run_len = np.bincount(run_id)
    repeated = run_len[run_id] > 1  # per sorted n-gram
    heads = np.flatnonzero(new_run & repeated)
    np.maximum.at(top, ds[heads], run_len[run_id[heads]] * chars[order[heads]] / total[ds[heads]])
    dup_start = start[order[repeated]]
    size = len(wchars) + 1
    cover = np.bincount(dup_start, minlength=size) - np.bincount(dup_start + n, minlength=size)
    covered = np.cumsum(cover)[:-1] > 0
    dup_frac = np.bincount(owner, weights=wchars * covered, minlength=len(lens)) / total
    return top, dup_frac


def repetition(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Gopher-style repetition in assistant turns: duplicate lines, most frequent 2/3/4-grams and
    characters in repeated 5- and 10-grams, each against its configured maximum."""
    t = b.turns("assistant").with_columns(pl.col("content").fill_null("").alias("content"))
    # norm has single spaces: counting them counts words without a regex.
    t = t.filter(pl.col("norm").str.count_matches(" ", literal=True) + 1 >= cfg.repetition_min_words)
    if t.height == 0:
        return FilterResult(np.ones(b.n, dtype=bool), "quality.repetition", [None] * b.n)
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
    dup_line = np.zeros(t.height)
    dup_line[lines["i"].to_numpy()] = lines["f"].to_numpy()
    # Hashes only compared within this batch: polars' fast hash will do.
    fh, lens, wchars = word_hashes(t["norm"], bits=64, stable=False, spaces=True)
    top2, dup2 = _ngram_fracs(fh, lens, wchars, 2)
    checks = [
        ("duplicate-line fraction", dup_line, cfg.max_dup_line_frac),
        ("top 2-gram character fraction", top2, cfg.max_top_2gram_frac),
    ]
    # Every word inside a repeated n-gram (n >= 2) is inside a repeated 2-gram, so a turn whose
    # repeated 2-grams cover little cannot fail the longer checks; only the others are computed
    # (half the smallest limit leaves room for overlapping occurrences in the top-n counts).
    longer = [(3, cfg.max_top_3gram_frac, 0), (4, cfg.max_top_4gram_frac, 0), (5, cfg.max_dup_5gram_frac, 1),
              (10, cfg.max_dup_10gram_frac, 1)]
    gate = dup2 > 0.5 * min(limit for _, limit, _ in longer)
    owner_gate = np.repeat(gate, lens)
    sub = (fh[owner_gate], lens[gate], wchars[owner_gate])
    for n, limit, which in longer:
        values = np.zeros(t.height)
        if gate.any():
            values[gate] = _ngram_fracs(*sub, n)[which]
        name = f"top {n}-gram character fraction" if which == 0 else f"duplicate {n}-gram character fraction"
        checks.append((name, values, limit))
    why: list[str | None] = [None] * t.height
    for name, values, limit in reversed(checks):  # the first failing check names the reason
        for i in np.flatnonzero(values > limit).tolist():
            why[i] = f"{name} {values[i]:.2f} > {limit}"
    hits = t.select("row", "turn").with_columns(pl.Series("why", why, dtype=pl.String)).filter(
        pl.col("why").is_not_null()
    )
    detail = _first_detail(b.n, hits, pl.format("assistant turn {}: {}", "turn", "why"))
    return FilterResult(~_rows_with(b.n, hits["row"]), "quality.repetition", detail)


#: Refusals and AI boilerplate (case-insensitive), from the phrases lists that SFT cleaning passes
#: commonly use (e.g. the "unfiltered" ShareGPT/WizardLM cleaning scripts).
REFUSAL_PATTERNS = [
    r"\bas an ai(?: language model| assistant| model)?\b",
    r"\bas a language model\b",
    r"\bi(?:'m| am) (?:just )?an? (?:ai|artificial intelligence|language model)\b",
    r"\bi (?:cannot|can't|can not|am unable to|am not able to|won't) (?:fulfill|comply with|assist with|help with) "
    r"(?:this|that|your) request\b",
    r"\b(?:goes|go) against my (?:programming|guidelines|principles)\b",
    r"\bi (?:do not|don't) have (?:the ability|personal (?:opinions|feelings|experiences)|access to real-time)\b",
    r"\bi(?:'m| am) not able to browse the internet\b",
    r"\bmy (?:knowledge|training data) (?:cutoff|cut-off)\b",
    r"\bi(?:'m| am) sorry, but i (?:cannot|can't|am unable to|am not able to)\b",
    r"\bopenai\b.{0,40}\b(?:policy|policies|guidelines)\b",
]


@lru_cache(maxsize=16)
def _refusal_regex(extra: tuple[str, ...]) -> str:
    return "(?i)(?:" + "|".join(REFUSAL_PATTERNS + list(extra)) + ")"


def refusal(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Assistant turns that are mostly refusal or AI boilerplate: more than `refusal_min_share` of
    their characters sit in sentences containing one of the phrases."""
    rx = _refusal_regex(tuple(cfg.refusal_patterns))
    t = b.turns("assistant").with_columns(pl.col("content").fill_null("").alias("content"))
    t = t.filter(pl.col("content").str.contains(rx))  # most turns have none: skip the sentence split
    s = (
        t.with_columns(pl.col("content").str.extract_all(r"[^.!?\n]+[.!?]*").alias("s"))
        .explode("s")
        .with_columns(pl.col("s").str.len_chars().fill_null(0).alias("c"), pl.col("s").str.extract(f"({rx})", 1).alias("m"))
        .group_by("row", "turn", maintain_order=True)
        .agg(
            (pl.col("c").filter(pl.col("m").is_not_null()).sum() / pl.col("c").sum().clip(1)).alias("share"),
            pl.col("m").drop_nulls().first(),
        )
    )
    hits = s.filter(pl.col("share") > cfg.refusal_min_share)
    detail = _first_detail(
        b.n, hits, pl.format("assistant turn {} is {}% refusal / AI boilerplate (\"{}\")", "turn",
                             (pl.col("share") * 100).round(0).cast(pl.Int64), "m")
    )
    return FilterResult(~_rows_with(b.n, hits["row"]), "quality.refusal", detail)


def language(b: Batch, cfg: QualityConfig) -> FilterResult:
    """Language of each user and assistant turn (langdetect, seed 0); drop when more than
    `max_foreign_share` of the detected letters are in languages not kept. `lang` = the language
    with the most letters (null when every turn abstained)."""
    from pipeline.quality.langid import detect_turns

    lc = cfg.language
    t = b.turns("user", "assistant")
    labels, letters = detect_turns(t["content"].fill_null(""), lc, norm=t["norm"])
    t = t.select("row").with_columns(labels.alias("lang"), pl.Series("letters", letters, dtype=pl.Int64))
    t = t.filter(pl.col("lang").is_not_null())
    per = t.group_by("row", "lang").agg(pl.col("letters").sum())
    main = per.sort(["row", "letters", "lang"], descending=[False, True, False]).group_by(
        "row", maintain_order=True
    ).first()
    share = per.group_by("row").agg(
        (pl.col("letters").filter(~pl.col("lang").is_in(lc.keep)).sum() / pl.col("letters").sum()).alias("foreign"),
        pl.col("lang").filter(~pl.col("lang").is_in(lc.keep)).unique().sort().str.join(",").alias("other"),
    )
    lang = [None] * b.n
    for r, lg in main.select("row", "lang").iter_rows():
        lang[r] = lg
    bad = share.filter(pl.col("foreign") > lc.max_foreign_share)
    detail: list[str | None] = [None] * b.n
    for r, f, other in bad.select("row", "foreign", "other").iter_rows():
        detail[r] = f"{f:.0%} of the text is in {other}, not in {lc.keep}"
    return FilterResult(
        ~_rows_with(b.n, bad["row"]), "quality.language", detail, columns={"lang": pl.Series("lang", lang,
                                                                                             dtype=pl.String)}
    )


def pii(b: Batch, cfg: QualityConfig) -> FilterResult:
    """PII and secrets in any turn: redacted with a typed placeholder, or dropping the conversation,
    per kind (quality.pii.<kind> = redact | drop | keep)."""
    from pipeline.quality.pii import KINDS, scan

    policies = {k: cfg.pii.policy(k) for k in KINDS}
    t = b.turns()
    new, counts = scan(t["content"].fill_null(""), policies)
    per_turn = t.select("row").with_columns([counts[k].alias(k) for k in KINDS])
    per_row = per_turn.group_by("row").agg([pl.col(k).sum() for k in KINDS]).sort("row")
    rows = per_row["row"].to_numpy()
    found = {k: np.zeros(b.n, dtype=np.int64) for k in KINDS}
    for k in KINDS:
        found[k][rows] = per_row[k].to_numpy()
    drop_kinds = [k for k in KINDS if policies[k] == "drop"]
    keep = np.ones(b.n, dtype=bool)
    detail: list[str | None] = [None] * b.n
    for k in drop_kinds:
        for r in np.flatnonzero(found[k] > 0).tolist():
            if keep[r]:
                detail[r] = f"contains {found[k][r]} {k.replace('_', ' ')} item(s) (policy: drop)"
            keep[r] = False
    redact_kinds = [k for k in KINDS if policies[k] == "redact"]
    redactions = sum((found[k] for k in redact_kinds), np.zeros(b.n, dtype=np.int64))
    columns = {"pii_redactions": pl.Series("pii_redactions", redactions, dtype=pl.Int32)}
    if redactions.any():
        msgs = (
            t.select("row", "role").with_columns(new.alias("content"))
            .group_by("row", maintain_order=True)
            .agg(pl.struct("role", "content").alias("messages"))
        )
        columns["messages"] = msgs["messages"].cast(pl.List(MESSAGE))
    stats = {
        "detected": {k: int(found[k].sum()) for k in KINDS},
        "redacted": {k: int(found[k].sum()) for k in redact_kinds},
        "conversations_redacted": int((redactions > 0).sum()),
    }
    return FilterResult(keep, "quality.pii", detail, columns=columns, stats=stats)


@lru_cache(maxsize=4)
def _benchmark_index(cfg_json: str):
    from pipeline.quality.contamination import build_index

    return build_index(ContaminationConfig.model_validate_json(cfg_json))


def contamination(b: Batch, cfg: QualityConfig) -> FilterResult:
    """User turns sharing a word n-gram (default 13) with a configured benchmark's questions."""
    from pipeline.quality.contamination import find_contaminated

    cc = cfg.contamination
    if not cc.enabled or not cc.benchmarks:
        return FilterResult(np.ones(b.n, dtype=bool), "quality.contamination", [None] * b.n)
    index = _benchmark_index(cc.model_dump_json())
    user = b.turns("user").group_by("row", maintain_order=True).agg(pl.col("norm").str.join(" "))
    found = find_contaminated(user["norm"], index)
    keep = np.ones(b.n, dtype=bool)
    detail: list[str | None] = [None] * b.n
    hits: dict[str, int] = {}
    for r, f in zip(user["row"].to_list(), found, strict=True):
        if f is not None:
            bench, item, k = f
            keep[r] = False
            hits[bench] = hits.get(bench, 0) + 1
            detail[r] = (
                f"user turns share {k} {cc.ngram}-word sequence(s) with benchmark {bench!r} item {item}"
            )
    return FilterResult(keep, "quality.contamination", detail, stats={"hits": hits})


#: Every filter by name; QualityConfig.filters picks and orders them.
FILTERS: dict[str, Callable[[Batch, QualityConfig], FilterResult]] = {
    "empty": empty,
    "echo": echo,
    "length": length,
    "repetition": repetition,
    "refusal": refusal,
    "language": language,
    "contamination": contamination,
    "pii": pii,
}


# --- running ------------------------------------------------------------------------------------


@dataclass
class QualityResult:
    kept: pl.DataFrame
    dropped: pl.DataFrame  # input columns + reason, detail
    stats: dict


def filter_frame(df: pl.DataFrame, cfg: QualityConfig) -> QualityResult:
    """Run the configured filters in order, each on the rows the previous ones kept. The kept frame
    gets `lang` and `pii_redactions` columns (and redacted messages)."""
    cur = df.with_columns(
        pl.lit(None, dtype=pl.String).alias("lang"), pl.lit(0, dtype=pl.Int32).alias("pii_redactions"),
        _norm_lists(df),
    )
    dropped: list[pl.DataFrame] = []
    stats: dict = {"input": df.height, "seconds": {}, "filters": {}}
    switched_off = {"language": not cfg.language.enabled, "pii": not cfg.pii.enabled,
                    "contamination": not cfg.contamination.enabled}
    for name in cfg.filters:
        if cur.height == 0:
            break
        if switched_off.get(name):
            continue
        t0 = time.perf_counter()
        res = FILTERS[name](Batch(cur), cfg)
        for col, values in res.columns.items():
            cur = cur.with_columns(values.alias(col))
        if (~res.keep).any():
            drop_idx = np.flatnonzero(~res.keep)
            detail = [res.detail[i] if res.detail else None for i in drop_idx.tolist()]
            dropped.append(cur[drop_idx].with_columns(
                pl.lit(res.reason, dtype=pl.String).alias("reason"), pl.Series("detail", detail, dtype=pl.String)
            ))
            cur = cur.filter(pl.Series(res.keep))
        stats["seconds"][name] = round(time.perf_counter() - t0, 3)
        if res.stats:
            stats["filters"][name] = res.stats
    cur = cur.drop("_norm")
    schema = cur.schema | {"reason": pl.String, "detail": pl.String}
    out = pl.concat(dropped, how="diagonal_relaxed").drop("_norm") if dropped else pl.DataFrame(schema=schema)
    return QualityResult(kept=cur, dropped=out, stats=stats)


def _norm_lists(df: pl.DataFrame) -> pl.Series:
    """The normalised content of every message, as a list aligned with `messages` (computed once
    for all filters)."""
    t = normalized_turns(df)
    lists = t.group_by("row", maintain_order=True).agg("norm")
    full = pl.DataFrame({"row": np.arange(df.height, dtype=np.int64)}).join(lists, on="row", how="left")
    return full["norm"].fill_null([]).cast(pl.List(pl.String)).alias("_norm")


def _task(args: tuple[str, int, int, str, str]) -> tuple[pl.DataFrame, dict]:
    """Filter rows [offset, offset+length) of one part into out_path; return its drops and stats."""
    in_path, offset, length_, out_path, cfg_json = args
    cfg = QualityConfig.model_validate_json(cfg_json)
    df = pl.read_parquet(in_path).slice(offset, length_)
    res = filter_frame(df, cfg)
    atomic_write_parquet(res.kept, out_path)
    examples = {}
    if res.dropped.height and cfg.examples_per_reason:
        ex = res.dropped.group_by("reason", maintain_order=True).head(cfg.examples_per_reason)
        for reason, origin, detail in ex.select("reason", "origin", "detail").iter_rows():
            examples.setdefault(reason, []).append({"origin": origin, "detail": detail})
    stats = res.stats | {
        "kept": res.kept.height,
        "lang": dict(res.kept.group_by("lang").len().iter_rows()),
        "examples": examples,
    }
    return res.dropped.select("origin", "source", "tier", "conversation_id", "reason", "detail"), stats


def _merge_counts(into: dict, add: dict) -> None:
    for k, v in add.items():
        if isinstance(v, dict):
            _merge_counts(into.setdefault(k, {}), v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            into[k] = round(into.get(k, 0) + v, 3)


def run_quality(in_paths: list[Path], run_dir: Path, cfg: QualityConfig, rows_per_task: int = 25_000) -> dict:
    """Filter canonical parts into work/quality/part-*.parquet (+ lang, pii_redactions), write
    ledger/quality.parquet and work/quality/stats.json; returns the stats (with `parts`)."""
    t0 = time.perf_counter()
    out_dir = RunDir.of(run_dir).stage_dir("quality")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    run_cfg = cfg if cfg.enabled else cfg.model_copy(update={"filters": []})
    if cfg.enabled and cfg.contamination.enabled and cfg.contamination.benchmarks:
        _benchmark_index(cfg.contamination.model_dump_json())  # a bad benchmark file fails here, once
    tasks = []
    for p in in_paths:
        rows = pl.scan_parquet(p).select(pl.len()).collect().item()
        for off in range(0, max(rows, 1), rows_per_task):
            out = out_dir / f"part-{len(tasks):05d}.parquet"
            tasks.append((str(p), off, rows_per_task, str(out), run_cfg.model_dump_json()))
    results = pool_map(_task, tasks, run_cfg.workers)
    drops = pl.concat([r[0] for r in results]) if results else pl.DataFrame(
        schema={"origin": pl.String, "source": pl.String, "tier": pl.String, "conversation_id": pl.String,
                "reason": pl.String, "detail": pl.String})
    write_ledger_part(run_dir, "quality", ledger_rows(drops, stage="quality", outcome="dropped",
                                                      reason=pl.col("reason"), detail=pl.col("detail")))
    stats: dict = {"input": 0, "kept": 0, "seconds": {}, "filters": {}, "lang": {}}
    examples: dict[str, list] = {}
    for _, s in results:
        _merge_counts(stats, {k: s[k] for k in ("input", "kept", "seconds", "filters")})
        for lg, n in s["lang"].items():
            key = lg or "und"
            stats["lang"][key] = stats["lang"].get(key, 0) + n
        for reason, exs in s["examples"].items():
            examples.setdefault(reason, []).extend(exs)
    stats["dropped"] = dict(sorted(drops.group_by("reason").len().iter_rows())) if drops.height else {}
    stats["examples"] = {r: e[: cfg.examples_per_reason] for r, e in sorted(examples.items())}
    stats["redactions"] = stats["filters"].get("pii", {}).get("redacted", {})
    stats["contamination_hits"] = stats["filters"].get("contamination", {}).get("hits", {})
    stats["wall_seconds"] = round(time.perf_counter() - t0, 3)
    stats["parts"] = [t[3] for t in tasks]
    atomic_write_json(out_dir / "stats.json", stats)
    return stats
