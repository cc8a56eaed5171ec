"""Quality filtering: the configured filters (registry.FILTERS) in order, each on what the previous
kept (`filter_frame`), over Parquet parts in parallel processes (`run_quality`).

True in a mask means keep. Every dropped conversation gets a ledger row `quality.<rule>` with a
sentence; PII is redacted (typed placeholders) or drops the conversation, per kind; every redaction
is counted; the detected language is recorded in the `lang` column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.parts import PART_PATTERN
from pipeline.core.procpool import pool_map
from pipeline.core.rundir import atomic_write_parquet, claim_run_dir, remove_outputs
from pipeline.core.stage import StageResult
from pipeline.quality.batch import NORM, Batch, norm_lists
from pipeline.quality.contamination import benchmark_index
from pipeline.quality.registry import FILTERS
from schemas.config_curation import QualityConfig

#: What the ledger needs of a dropped conversation.
DROP_COLUMNS = {"origin": pl.String, "source": pl.String, "tier": pl.String, "conversation_id": pl.String,
                "reason": pl.String, "detail": pl.String}


@dataclass
class QualityResult(StageResult):
    """What the quality stage did: besides the common counts, languages, redactions, contamination."""

    lang: dict[str, int] = field(default_factory=dict)  # language of the kept conversations ("und": none)
    redactions: dict[str, int] = field(default_factory=dict)  # PII kind -> redactions
    contamination_hits: dict[str, int] = field(default_factory=dict)  # benchmark -> conversations dropped
    filters: dict[str, dict] = field(default_factory=dict)  # filter -> its own counts (pii, contamination)
    examples: dict[str, list[dict]] = field(default_factory=dict)  # reason -> the first few {origin, detail}
    filter_seconds: dict[str, float] = field(default_factory=dict)  # filter -> seconds, summed over workers


@dataclass
class QualitySplit:
    """A frame split by `filter_frame`."""

    kept: pl.DataFrame  # + lang, pii_redactions (and redacted messages)
    dropped: pl.DataFrame  # input columns + reason, detail
    seconds: dict[str, float]  # filter -> seconds
    filters: dict[str, dict]  # filter -> its own counts, when it has any


def filter_frame(df: pl.DataFrame, cfg: QualityConfig) -> QualitySplit:
    """Run the configured filters in order, each on the rows the previous ones kept. The kept frame
    gets `lang` and `pii_redactions` columns (and redacted messages)."""
    cur = df.with_columns(
        pl.lit(None, dtype=pl.String).alias("lang"), pl.lit(0, dtype=pl.Int32).alias("pii_redactions"),
        norm_lists(df),
    )
    dropped: list[pl.DataFrame] = []
    seconds: dict[str, float] = {}
    filters: dict[str, dict] = {}
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
        seconds[name] = round(time.perf_counter() - t0, 3)
        if res.stats:
            filters[name] = res.stats
    cur = cur.drop(NORM)
    schema = cur.schema | {"reason": pl.String, "detail": pl.String}
    out = pl.concat(dropped, how="diagonal_relaxed").drop(NORM) if dropped else pl.DataFrame(schema=schema)
    return QualitySplit(kept=cur, dropped=out, seconds=seconds, filters=filters)


def _examples(dropped: pl.DataFrame, per_reason: int) -> dict[str, list[dict]]:
    """The first `per_reason` drops of each reason, as {origin, detail}."""
    examples: dict[str, list[dict]] = {}
    if dropped.height and per_reason:
        ex = dropped.group_by("reason", maintain_order=True).head(per_reason)
        for reason, origin, detail in ex.select("reason", "origin", "detail").iter_rows():
            examples.setdefault(reason, []).append({"origin": origin, "detail": detail})
    return examples


def _task(args: tuple[str, int, int, str, str]) -> tuple[pl.DataFrame, dict]:
    """Filter rows [offset, offset+length) of one part into out_path; return its drops and counts."""
    in_path, offset, length, out_path, cfg_json = args
    cfg = QualityConfig.model_validate_json(cfg_json)
    df = pl.read_parquet(in_path).slice(offset, length)
    res = filter_frame(df, cfg)
    atomic_write_parquet(res.kept, out_path)
    counts = {"input": df.height, "kept": res.kept.height, "seconds": res.seconds, "filters": res.filters}
    stats = {
        "counts": counts,
        "lang": dict(res.kept.group_by("lang").len().iter_rows()),
        "examples": _examples(res.dropped, cfg.examples_per_reason),
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
    if cfg.enabled and cfg.contamination.enabled and cfg.contamination.benchmarks:
        benchmark_index(cfg.contamination)  # a bad benchmark file fails here, once
    tasks = []
    for p in in_paths:
        rows = pl.scan_parquet(p).select(pl.len()).collect().item()
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
    for _, s in results:
        _merge_counts(totals, s["counts"])
        for lg, n in s["lang"].items():
            key = lg or "und"
            lang[key] = lang.get(key, 0) + n
        for reason, exs in s["examples"].items():
            examples.setdefault(reason, []).extend(exs)
    result = QualityResult(
        stage="quality",
        records_in=totals["input"],
        records_out=totals["kept"],
        dropped=dict(sorted(drops.group_by("reason").len().iter_rows())) if drops.height else {},
        lang=lang,
        redactions=totals["filters"].get("pii", {}).get("redacted", {}),
        contamination_hits=totals["filters"].get("contamination", {}).get("hits", {}),
        filters=totals["filters"],
        examples={r: e[: cfg.examples_per_reason] for r, e in sorted(examples.items())},
        filter_seconds=totals["seconds"],
        parts=[t[3] for t in tasks],
        seconds=round(time.perf_counter() - t0, 3),
    )
    result.write(out_dir / "stats.json")
    return result
