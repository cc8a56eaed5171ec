"""Quality filtering: the configured filters (registry.FILTERS) in order, each on what the previous
kept (`filter_frame`), over Parquet parts in parallel processes (`run_quality`).

Contamination runs first, on every conversation: a benchmark copy is reported as such whatever else
is wrong with it. True in a mask means keep. Every dropped conversation gets a ledger row
`quality.<rule>` with a sentence; PII is redacted (typed placeholders) or drops the conversation, per
kind; every redaction is counted; the detected language is recorded in the `lang` column.

Tiers: each tier's own thresholds ([quality.tiers.<tier>]) apply to its conversations, and a tier
whose heuristics are off (the expert tier by default) is dropped only by the hard rules
(names.HARD_RULES); a heuristic verdict it is spared is recorded in `quality_flags` and counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.parts import PART_PATTERN, part_rows, read_part
from pipeline.core.procpool import pool_map
from pipeline.core.rundir import atomic_write_parquet, claim_run_dir, remove_outputs
from pipeline.core.stage import StageResult
from pipeline.quality.batch import KIND, NORM, Batch, FilterResult, kind_lists, norm_lists
from pipeline.quality.contamination import benchmark_index
from pipeline.quality.names import HEURISTIC_RULES
from pipeline.quality.registry import FILTERS
from schemas.config_curation import QualityConfig

#: What the ledger needs of a dropped conversation.
DROP_COLUMNS = {"origin": pl.String, "source": pl.String, "tier": pl.String, "conversation_id": pl.String,
                "reason": pl.String, "detail": pl.String}


@dataclass
class QualityResult(StageResult):
    """What the quality stage did: besides the common counts, languages, redactions, contamination."""

    lang: dict[str, int] = field(default_factory=dict)  # language of the conversations passed ("und": none)
    redactions: dict[str, int] = field(default_factory=dict)  # PII kind -> redactions
    contamination_hits: dict[str, int] = field(default_factory=dict)  # benchmark -> conversations dropped
    #: benchmark -> items, checked, ngram, contained, exact_only, unchecked, boilerplate_items, hits
    contamination: dict[str, dict[str, int]] = field(default_factory=dict)
    filters: dict[str, dict] = field(default_factory=dict)  # filter -> its own counts (pii, contamination)
    examples: dict[str, list[dict]] = field(default_factory=dict)  # reason -> a few {origin, source, detail}
    redaction_examples: list[dict] = field(default_factory=list)  # {origin, kind, before, after}
    order: list[str] = field(default_factory=list)  # the filters as they ran
    spared: dict[str, dict[str, int]] = field(default_factory=dict)  # heuristic rule -> tier -> kept by policy
    filter_seconds: dict[str, float] = field(default_factory=dict)  # filter -> seconds, summed over workers


@dataclass
class QualitySplit:
    """A frame split by `filter_frame`."""

    kept: pl.DataFrame  # + lang, pii_redactions (and redacted messages)
    dropped: pl.DataFrame  # input columns + reason, detail
    seconds: dict[str, float]  # filter -> seconds
    filters: dict[str, dict]  # filter -> its own counts, when it has any


def filter_order(cfg: QualityConfig) -> list[str]:
    """The filters that run, in order: contamination first (when configured), then the others as listed."""
    off = {"language": not cfg.language.enabled, "pii": not cfg.pii.enabled,
           "contamination": not cfg.contamination.enabled or not cfg.contamination.benchmarks}
    order = (["contamination"] if "contamination" in cfg.filters else []) + [
        f for f in cfg.filters if f != "contamination"]
    return [f for f in order if not off.get(f)]


def _run_filter(name: str, cur: pl.DataFrame, cfg: QualityConfig) -> FilterResult:
    """One filter over the frame; a heuristic rule runs per tier when tiers set thresholds of their own."""
    tiers = cur["tier"].unique().to_list() if name in HEURISTIC_RULES and cfg.tiers else []
    configs = {t: cfg.for_tier(t) for t in tiers}
    if all(c is cfg for c in configs.values()):
        return FILTERS[name](Batch(cur), cfg)
    keep = np.ones(cur.height, dtype=bool)
    detail: list[str | None] = [None] * cur.height
    reason = f"quality.{name}"
    for tier, tcfg in configs.items():
        idx = np.flatnonzero((cur["tier"] == tier).to_numpy())
        res = FILTERS[name](Batch(cur[idx]), tcfg)
        reason = res.reason
        keep[idx] = res.keep
        for j, i in enumerate(idx.tolist()):
            detail[i] = res.detail[j] if res.detail else None
    return FilterResult(keep, reason, detail)


def filter_frame(df: pl.DataFrame, cfg: QualityConfig) -> QualitySplit:
    """Run the configured filters in order (filter_order), each on the rows the previous ones kept.
    The kept frame gets `lang`, `pii_redactions` and `quality_flags` columns (and redacted messages)."""
    cur = df.with_columns(
        pl.lit(None, dtype=pl.String).alias("lang"), pl.lit(0, dtype=pl.Int32).alias("pii_redactions"),
        pl.lit([], dtype=pl.List(pl.String)).alias("quality_flags"),
        norm_lists(df), kind_lists(df),
    )
    dropped: list[pl.DataFrame] = []
    seconds: dict[str, float] = {}
    filters: dict[str, dict] = {}
    spared_tiers = {t for t in cur["tier"].unique().to_list() if not cfg.heuristics_on(t)}
    for name in filter_order(cfg):
        if cur.height == 0:
            break
        t0 = time.perf_counter()
        res = _run_filter(name, cur, cfg)
        for col, values in res.columns.items():
            cur = cur.with_columns(values.alias(col))
        if name in HEURISTIC_RULES and spared_tiers and (~res.keep).any():
            # The tier policy keeps what the rule would drop, and says so in quality_flags.
            spare = ~res.keep & cur["tier"].is_in(list(spared_tiers)).to_numpy()
            if spare.any():
                res.keep = res.keep | spare
                cur = cur.with_columns(
                    pl.when(pl.Series(spare))
                    .then(pl.col("quality_flags").list.concat(pl.lit([name], dtype=pl.List(pl.String))))
                    .otherwise(pl.col("quality_flags"))
                    .alias("quality_flags")
                )
                counts = dict(cur.filter(pl.Series(spare)).group_by("tier").len().iter_rows())
                res.stats = {**res.stats, "spared": {str(k): int(v) for k, v in counts.items()}}
        if (~res.keep).any():
            drop_idx = np.flatnonzero(~res.keep)
            detail = [res.detail[i] if res.detail else None for i in drop_idx.tolist()]
            dropped.append(cur[drop_idx].with_columns(
                pl.lit(res.reason, dtype=pl.String).alias("reason"), pl.Series("detail", detail, dtype=pl.String)
            ))
            cur = cur.filter(pl.Series(res.keep))
        seconds[name] = round(time.perf_counter() - t0, 3)
        if res.stats:
            filters[name] = res.stats
    cur = cur.drop(NORM, KIND)
    schema = cur.schema | {"reason": pl.String, "detail": pl.String}
    out = pl.concat(dropped, how="diagonal_relaxed").drop(NORM, KIND) if dropped else pl.DataFrame(schema=schema)
    return QualitySplit(kept=cur, dropped=out, seconds=seconds, filters=filters)


def _examples(dropped: pl.DataFrame, per_reason: int) -> dict[str, list[dict]]:
    """Up to `per_reason` drops of each reason as {origin, source, detail}, taken in turn from each
    source, the source with most drops of that reason first."""
    examples: dict[str, list[dict]] = {}
    if dropped.height and per_reason:
        ranked = (
            dropped.with_columns(
                pl.len().over("reason", "source").alias("_n"),
                pl.int_range(pl.len()).over("reason", "source").alias("_i"),
            )
            .filter(pl.col("_i") < per_reason)
            .sort(["reason", "_i", "_n", "source"], descending=[False, False, True, False])
            .group_by("reason", maintain_order=True)
            .head(per_reason)
        )
        for reason, origin, source, detail in ranked.select("reason", "origin", "source", "detail").iter_rows():
            examples.setdefault(reason, []).append({"origin": origin, "source": source, "detail": detail})
    return examples


def _spread(examples: list[dict], n: int) -> list[dict]:
    """n examples taken in turn from each source (the source with most examples first)."""
    by: dict[str, list[dict]] = {}
    for e in examples:
        by.setdefault(e.get("source") or "", []).append(e)
    queues = sorted(by.values(), key=len, reverse=True)
    out: list[dict] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _task(args: tuple[str, int, int, str, str]) -> tuple[pl.DataFrame, dict]:
    """Filter rows [offset, offset+length) of one part into out_path; return its drops and counts."""
    in_path, offset, length, out_path, cfg_json = args
    cfg = QualityConfig.model_validate_json(cfg_json)
    df = read_part(in_path, None, offset, length)
    res = filter_frame(df, cfg)
    atomic_write_parquet(res.kept, out_path)
    counts = {"input": df.height, "kept": res.kept.height, "seconds": res.seconds, "filters": res.filters}
    stats = {
        "counts": counts,
        "lang": dict(res.kept.group_by("lang").len().iter_rows()),
        "examples": _examples(res.dropped, cfg.examples_per_reason),
        "redaction_examples": res.filters.get("pii", {}).pop("examples", []),
    }
    return res.dropped.select(*DROP_COLUMNS), stats


def _merge_counts(into: dict, add: dict) -> None:
    """Add the numbers of `add` into `into`, nested dicts key by key."""
    for k, v in add.items():
        if isinstance(v, dict):
            _merge_counts(into.setdefault(k, {}), v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            into[k] = round(into.get(k, 0) + v, 3)


def run_quality(in_paths: list[Path], run_dir: Path, cfg: QualityConfig, rows_per_task: int = 25_000
                ) -> QualityResult:
    """Filter canonical parts into work/quality/part-*.parquet (+ lang, pii_redactions), write
    ledger/quality.parquet and work/quality/stats.json; returns the QualityResult."""
    t0 = time.perf_counter()
    out_dir = claim_run_dir(run_dir).stage_dir("quality")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_outputs(out_dir, PART_PATTERN)
    run_cfg = cfg if cfg.enabled else cfg.model_copy(update={"filters": []})
    coverage: dict[str, dict[str, int]] = {}
    if cfg.enabled and cfg.contamination.enabled and cfg.contamination.benchmarks:
        coverage = benchmark_index(cfg.contamination).coverage  # a bad benchmark file fails here, once
    tasks = []
    for p in in_paths:
        rows = part_rows(p)
        for off in range(0, max(rows, 1), rows_per_task):
            out = out_dir / f"part-{len(tasks):05d}.parquet"
            tasks.append((str(p), off, rows_per_task, str(out), run_cfg.model_dump_json()))
    results = pool_map(_task, tasks, run_cfg.workers)
    drops = pl.concat([r[0] for r in results]) if results else pl.DataFrame(schema=DROP_COLUMNS)
    write_ledger_part(run_dir, "quality", ledger_rows(drops, stage="quality", outcome="dropped",
                                                      reason=pl.col("reason"), detail=pl.col("detail")))
    totals: dict = {"input": 0, "kept": 0, "seconds": {}, "filters": {}}
    lang: dict[str, int] = {}
    examples: dict[str, list[dict]] = {}
    redaction_examples: list[dict] = []
    for _, s in results:
        _merge_counts(totals, s["counts"])
        for lg, n in s["lang"].items():
            key = lg or "und"
            lang[key] = lang.get(key, 0) + n
        for reason, exs in s["examples"].items():
            examples.setdefault(reason, []).extend(exs)
        redaction_examples += s["redaction_examples"]
    hits = totals["filters"].get("contamination", {}).get("hits", {})
    per_kind: dict[str, int] = {}
    shown = []
    for ex in redaction_examples:  # the first `pii.examples` of each kind, in part order
        per_kind[ex["kind"]] = per_kind.get(ex["kind"], 0) + 1
        if per_kind[ex["kind"]] <= cfg.pii.examples:
            shown.append(ex)
    result = QualityResult(
        stage="quality",
        records_in=totals["input"],
        records_out=totals["kept"],
        dropped=dict(sorted(drops.group_by("reason").len().iter_rows())) if drops.height else {},
        lang=lang,
        redactions=totals["filters"].get("pii", {}).get("redacted", {}),
        contamination_hits=hits,
        contamination={b: {**c, "hits": int(hits.get(b, 0))} for b, c in coverage.items()},
        filters=totals["filters"],
        examples={r: _spread(e, cfg.examples_per_reason) for r, e in sorted(examples.items())},
        redaction_examples=shown,
        order=filter_order(run_cfg),
        spared={f: v["spared"] for f, v in totals["filters"].items() if isinstance(v, dict) and "spared" in v},
        filter_seconds=totals["seconds"],
        parts=[t[3] for t in tasks],
        seconds=round(time.perf_counter() - t0, 3),
    )
    result.write(out_dir / "stats.json")
    return result
