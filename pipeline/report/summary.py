"""The data-quality report: what happened to every record, read off the run directory.

The ledger is the source of truth for the funnel and the reason codes (every record has one row),
so the counts always reconcile. The stages' `work/<stage>/stats.json` files add what only they know
(contamination per benchmark, PII redactions, truncation, the mixture), and are read defensively: a
stage may be disabled, absent or older. Writes `report/report.json` and a self-contained
`report/report.html` (inline SVG, no network).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.ledger import read_ledger
from pipeline.core.rundir import RunDir, atomic_write_bytes, atomic_write_json
from pipeline.core.stage import StageResult
from schemas.config import RunConfig

SCHEMA_VERSION = 1
#: The one meaning of "kept" in the report, the funnel and the ledger.
KEPT_MEANS = ("kept = in the train and val shards; curated/ holds exactly these conversations (ledger outcome "
              "'kept'). What passed one stage but left at a later one is counted where it left.")
#: Funnel columns in order: where records leave, by the stage that decided it.
#: in pipeline order: the encode stage (ledger stage "tokenize") runs before the mix
FUNNEL_STEPS = ("read", "quarantined", "ingest_dropped", "duplicates", "filtered", "tokenize_dropped", "mixed_out", "kept")
_STEP_OF_STAGE = {"ingest": "ingest_dropped", "dedup": "duplicates", "quality": "filtered", "mix": "mixed_out",
                  "tokenize": "tokenize_dropped"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line being written while we read
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def histogram(values: list[float] | pl.Series, bins: int) -> dict[str, Any]:
    """Equal-width histogram: {edges: [bins+1], counts: [bins], n, min, max, mean, p50, p95}."""
    s = pl.Series(values, dtype=pl.Float64).drop_nulls() if not isinstance(values, pl.Series) else values.cast(pl.Float64).drop_nulls()
    if s.len() == 0:
        return {"edges": [], "counts": [], "n": 0}
    lo, hi = float(s.min()), float(s.max())
    width = (hi - lo) / bins if hi > lo else 1.0
    idx = ((s - lo) / width).floor().clip(0, bins - 1).cast(pl.Int64)
    counts = [0] * bins
    for i, n in idx.value_counts().iter_rows():
        counts[int(i)] = int(n)
    return {
        "edges": [lo + i * width for i in range(bins + 1)],
        "counts": counts,
        "n": int(s.len()),
        "min": lo,
        "max": hi,
        "mean": float(s.mean()),
        "p50": float(s.quantile(0.5)),
        "p95": float(s.quantile(0.95)),
    }


# --------------------------------------------------------------------------- ledger-based sections


def funnel(ledger: pl.DataFrame) -> list[dict[str, Any]]:
    """One row per source and tier: read, where records left, and kept."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for source, tier, stage, outcome, n in (
        ledger.group_by("source", "tier", "stage", "outcome").len().sort("source", "tier").iter_rows()
    ):
        row = rows.setdefault((source, tier), {"source": source, "tier": tier, **{s: 0 for s in FUNNEL_STEPS}})
        row["read"] += n
        if outcome == "kept":
            row["kept"] += n
        elif outcome == "quarantined":
            row["quarantined"] += n
        else:
            row[_STEP_OF_STAGE.get(stage, "filtered")] += n
    return sorted(rows.values(), key=lambda r: (r["tier"], r["source"]))


def _sum_rows(rows: list[dict[str, Any]], by: str | None) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = r[by] if by else "all"
        acc = out.setdefault(name, {(by or "total"): name, **{s: 0 for s in FUNNEL_STEPS}})
        for s in FUNNEL_STEPS:
            acc[s] += r[s]
    return list(out.values())


def _texts_by(run_dir: Path, column: str, values: list[str], chars: int) -> dict[str, str]:
    """Conversation text (role: content lines) for some origins/ids, looked up in the ingest output."""
    files = sorted((run_dir / "work" / "ingest").rglob("*.parquet")) or sorted((run_dir / "curated").glob("*.parquet"))
    if not files or not values:
        return {}
    try:
        df = (
            pl.scan_parquet(files)
            .select(column, "messages")
            .filter(pl.col(column).is_in(values))
            .unique(column, keep="first")
            .collect()
        )
    except Exception:  # noqa: BLE001 - a report must render even when an intermediate is odd
        return {}
    out: dict[str, str] = {}
    for key, messages in df.iter_rows():
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages or [])
        out[key] = text[:chars] + ("…" if len(text) > chars else "")
    return out


def _quarantine_texts(run_dir: Path, origins: list[str], chars: int) -> dict[str, str]:
    files = sorted((run_dir / "quarantine").glob("*.parquet"))
    if not files or not origins:
        return {}
    out: dict[str, str] = {}
    for f in files:
        try:
            df = pl.read_parquet(f)
        except Exception:  # noqa: BLE001
            continue
        if "origin" not in df.columns:
            continue
        text_col = next((c for c in ("raw", "raw_text", "text", "record", "line") if c in df.columns), None)
        err_col = next((c for c in ("errors", "error", "detail") if c in df.columns), None)
        for row in df.filter(pl.col("origin").is_in(origins)).iter_rows(named=True):
            raw = str(row.get(text_col) or "") if text_col else ""
            err = row.get(err_col) if err_col else None
            err_s = "; ".join(map(str, err)) if isinstance(err, list) else (str(err) if err else "")
            text = (raw[:chars] + ("…" if len(raw) > chars else "")) if raw else ""
            out[row["origin"]] = f"{text}\n[errors: {err_s}]" if err_s else text
    return out


def _spread_examples(dropped: pl.DataFrame, n: int) -> pl.DataFrame:
    """Up to n rows of each (stage, outcome, reason), taken in turn from each source, the source that
    lost most to that reason first (so the worst-hit source always shows, and several do)."""
    keys = ["stage", "outcome", "reason"]
    return (
        dropped.sort("origin")
        .with_columns(pl.len().over(*keys, "source").alias("_lost"),
                      pl.int_range(pl.len()).over(*keys, "source").alias("_i"))
        .filter(pl.col("_i") < n)
        .sort([*keys, "_i", "_lost", "source"], descending=[False, False, False, False, True, False],
              nulls_last=True)
        .group_by(*keys, maintain_order=True)
        .head(n)
        .drop("_lost", "_i")
    )


def reasons(ledger: pl.DataFrame, run_dir: Path, n_examples: int, chars: int) -> list[dict[str, Any]]:
    """Every reason code with its count, the sources it took records from (most first) and a few
    examples (origin, source, detail, the record's text) drawn from several sources, the worst-hit first."""
    dropped = ledger.filter(pl.col("outcome") != "kept")
    if dropped.height == 0:
        return []
    table = dropped.group_by("stage", "outcome", "reason").len("count").sort(["count", "reason"], descending=[True, False])
    by_source = dropped.group_by("stage", "outcome", "reason", "source").len("n").sort(
        ["n", "source"], descending=[True, False])
    examples = _spread_examples(dropped, n_examples) if n_examples else dropped.clear()
    q_texts = _quarantine_texts(run_dir, examples.filter(pl.col("outcome") == "quarantined")["origin"].to_list(), chars)
    d_texts = _texts_by(run_dir, "origin", examples.filter(pl.col("outcome") == "dropped")["origin"].to_list(), chars)
    out = []
    for stage, outcome, reason, count in table.iter_rows():
        same = (pl.col("stage") == stage) & (pl.col("outcome") == outcome) & (pl.col("reason").eq_missing(reason))
        ex = examples.filter(same)
        out.append({
            "reason": reason or f"{stage}.(no code)",
            "stage": stage,
            "outcome": outcome,
            "count": int(count),
            "sources": {src: int(n) for src, n in by_source.filter(same).select("source", "n").iter_rows()},
            "examples": [
                {"origin": r["origin"], "source": r["source"], "detail": r["detail"],
                 "text": q_texts.get(r["origin"]) or d_texts.get(r["origin"], "")}
                for r in ex.iter_rows(named=True)
            ],
        })
    return out


def source_reason_matrix(ledger: pl.DataFrame) -> dict[str, Any]:
    """Where each source's records went: a row per source (its tier, read, kept in the shards) and a
    column per reason code, with counts and shares of what the source read. Reasons are ordered by
    how many records they took in all."""
    if ledger.height == 0:
        return {"reasons": [], "rows": []}
    lost = ledger.filter(pl.col("outcome") != "kept").with_columns(
        pl.coalesce(pl.col("reason"), pl.col("stage") + ".(no code)").alias("reason"))
    order = lost.group_by("reason").len().sort(["len", "reason"], descending=[True, False])["reason"].to_list()
    read = ledger.group_by("source", "tier").agg(pl.len().alias("read"),
                                                (pl.col("outcome") == "kept").sum().alias("kept"))
    counts = lost.group_by("source", "reason").len()
    cells: dict[str, dict[str, int]] = {}
    for src, reason, n in counts.iter_rows():
        cells.setdefault(src, {})[reason] = int(n)
    rows = []
    for src, tier, n_read, n_kept in read.sort("source").iter_rows():
        c = cells.get(src, {})
        rows.append({"source": src, "tier": tier, "read": int(n_read), "kept": int(n_kept),
                     "kept_share": n_kept / n_read if n_read else 0.0,
                     "counts": {r: c[r] for r in order if r in c},
                     "shares": {r: c[r] / n_read for r in order if r in c}})
    total = {r: int(sum(row["counts"].get(r, 0) for row in rows)) for r in order}
    return {"reasons": order, "rows": rows, "total": total, "read": int(ledger.height),
            "kept": int(sum(row["kept"] for row in rows))}


def quality_section(quality: Any) -> dict[str, Any]:
    """What the quality stage says about itself: the order its filters ran in, what the tier policy
    spared, PII redactions (counts and before -> after examples), and contamination per benchmark."""
    if quality is None:
        return {}
    pii = quality.filters.get("pii", {}) if isinstance(quality.filters, dict) else {}
    cont = quality.filters.get("contamination", {}) if isinstance(quality.filters, dict) else {}
    return {
        "order": list(quality.order),
        "spared": {k: dict(v) for k, v in (quality.spared or {}).items()},
        "pii": {"redactions": dict(quality.redactions), "detected": dict(pii.get("detected") or {}),
                "conversations_redacted": int(pii.get("conversations_redacted") or 0),
                "examples": list(quality.redaction_examples)},
        "contamination": {"benchmarks": {k: dict(v) for k, v in (quality.contamination or {}).items()},
                          "by_rule": dict(cont.get("by_rule") or {})},
    }


def duplicate_clusters(ledger: pl.DataFrame, run_dir: Path, limit: int, chars: int) -> dict[str, Any]:
    """Dedup drops grouped by the conversation kept in their place, largest clusters first."""
    dups = ledger.filter((pl.col("stage") == "dedup") & pl.col("dup_of").is_not_null())
    if dups.height == 0:
        return {"clusters": 0, "duplicates": int(ledger.filter(pl.col("stage") == "dedup").height), "largest": []}
    grouped = (
        dups.group_by("dup_of")
        .agg(pl.len().alias("dropped"), pl.col("reason").unique().sort(), pl.col("origin").sort().head(5),
             pl.col("source").unique().sort())
        .sort(["dropped", "dup_of"], descending=[True, False])
    )
    top = grouped.head(limit)
    texts = _texts_by(run_dir, "conversation_id", top["dup_of"].to_list(), chars)
    kept_origin = dict(
        ledger.filter(pl.col("conversation_id").is_in(top["dup_of"].to_list()) & (pl.col("stage") != "dedup"))
        .select("conversation_id", "origin").unique("conversation_id", keep="first").iter_rows()
    )
    return {
        "clusters": grouped.height,
        "duplicates": int(dups.height),
        "largest": [
            {"kept": cid, "kept_origin": kept_origin.get(cid), "dropped": int(n), "reasons": list(rs),
             "dropped_origins": list(origins), "sources": list(srcs), "text": texts.get(cid, "")}
            for cid, n, rs, origins, srcs in top.iter_rows()
        ],
    }


# --------------------------------------------------------------------------- data-based sections


def curated_profile(run_dir: Path, bins: int) -> dict[str, Any]:
    """Language mix, characters and turns per kept conversation, from curated/."""
    files = sorted((run_dir / "curated").glob("*.parquet"))
    if not files:
        return {}
    lf = pl.scan_parquet(files)
    cols = lf.collect_schema().names()
    exprs = [
        pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum().alias("chars"),
        pl.col("messages").list.len().alias("turns"),
    ]
    if "repeat" in cols:
        exprs.append(pl.col("repeat"))
    if "lang" in cols:
        exprs.append(pl.col("lang"))
    df = lf.select(exprs).collect()
    out: dict[str, Any] = {
        "conversations": df.height,
        "chars": histogram(df["chars"], bins),
        "turns": histogram(df["turns"], min(bins, max(int(df["turns"].max() or 1), 2))),
    }
    if "repeat" in df.columns:
        out["training_copies"] = int(df["repeat"].sum())
    if "lang" in df.columns:
        out["languages"] = {str(k): int(v) for k, v in df["lang"].fill_null("unknown").value_counts(sort=True).iter_rows()}
    return out


def shard_profile(run_dir: Path, max_seq_len: int, bins: int) -> dict[str, Any]:
    """Tokens per conversation, supervised share and packing efficiency, measured on the shards."""
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        files = sorted((run_dir / "shards").glob(f"{split}-*.parquet"))
        if not files:
            continue
        lf = pl.scan_parquet(files)
        cols = lf.collect_schema().names()
        if "input_ids" not in cols:
            continue
        agg = lf.select(
            pl.len().alias("rows"),
            pl.col("input_ids").list.len().sum().alias("tokens"),
            (pl.col("loss_mask").list.sum().sum() if "loss_mask" in cols else pl.lit(None)).alias("supervised"),
        ).collect().row(0, named=True)
        seg = lf.select(pl.col("seq_lens").explode()).collect().to_series() if "seq_lens" in cols else pl.Series([], dtype=pl.Int64)
        rows, tokens = int(agg["rows"]), int(agg["tokens"] or 0)
        sup = agg["supervised"]
        out[split] = {
            "rows": rows,
            "segments": int(seg.len()),
            "tokens": tokens,
            "supervised_tokens": int(sup) if sup is not None else None,
            "supervised_share": (int(sup) / tokens) if sup is not None and tokens else None,
            "packing_efficiency": tokens / (rows * max_seq_len) if rows else None,
            "tokens_per_conversation": histogram(seg, bins),
        }
    return out


def training_section(run_dir: Path) -> dict[str, Any]:
    """Loss curves (train/metrics.jsonl), the evaluations (train/eval.json history, `points`: series
    that are separate evaluations, drawn as points) and the evaluation before/after."""
    rows = _read_jsonl(run_dir / "train" / "metrics.jsonl")
    curves: dict[str, list[list[float]]] = {}
    for i, r in enumerate(rows):
        x = r.get("step", i)
        for k, v in r.items():
            if "loss" in k and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                curves.setdefault(k, []).append([float(x), float(v)])
    ev = _read_json(run_dir / "train" / "eval.json")
    history = ev.get("history") if isinstance(ev, dict) else None
    if isinstance(history, list):  # the trainer's evaluations: the validation loss over steps
        val = [[float(h["step"]), float(h["loss"])] for h in history
               if isinstance(h, dict) and isinstance(h.get("step"), int | float) and isinstance(h.get("loss"), int | float)]
        if val:
            curves["val_loss"] = val
    out: dict[str, Any] = {}
    if curves:
        out["curves"] = curves
        out["steps"] = len(rows)
        # Evaluations are a few separate measurements, not a trend: drawn as points, never joined.
        out["points"] = [k for k in curves if k == "val_loss" or k.startswith("eval")]
    if ev is not None:
        out["eval"] = ev
    if (run_dir / "model").is_dir():
        out["model"] = str(run_dir / "model")
    return out


#: the scores shown in the selection section, when the run has them
_SCORE_PLOTS = (("score", "selection score"), ("ifd", "IFD (reference model)"), ("ref_ppl", "perplexity (reference model)"))


def selection_section(run_dir: Path, bins: int, per_side: int = 2) -> dict[str, Any] | None:
    """Score distributions per source and tier, the margin of the cut (per source, the lowest-scored
    kept and the highest-scored left out by selection), the reference scoring and the ablation."""
    rd = RunDir.of(run_dir)
    path = rd.stage_dir("mix") / "scores.parquet"
    ablation = _read_json(rd.stage_dir("ablation") / "stats.json")
    if isinstance(ablation, dict) and not ablation.get("enabled"):
        ablation = None
    scoring = _read_json(rd.stage_dir("score") / "stats.json")
    if isinstance(scoring, dict) and not scoring.get("reference_model"):
        scoring = None
    try:
        df = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError):
        return {"ablation": ablation, "scoring": scoring} if ablation or scoring else None
    out: dict[str, Any] = {"candidates": df.height, "kept": int((df["repeat"] > 0).sum()),
                           "distributions": {}, "margin": [], "scoring": scoring, "ablation": ablation}
    for col, label in _SCORE_PLOTS:
        if col not in df.columns or df[col].null_count() == df.height:
            continue
        vals = df[col].cast(pl.Float64)
        if col == "ref_ppl":  # perplexities span orders of magnitude: plot their log
            vals, label = vals.log(), "log perplexity (reference model)"
        frame = df.with_columns(vals.alias("_v"))
        out["distributions"][col] = {
            "label": label,
            **{by: {str(k[0]): histogram(g["_v"], bins) for k, g in sorted(frame.group_by(by), key=lambda kg: str(kg[0][0]))}
               for by in ("source", "tier")},
        }  # fmt: skip
    left = df.filter(pl.col("reason").is_in(["mix.unselected", "mix.ifd_above_one"]))
    kept = df.filter(pl.col("repeat") > 0)
    if left.height:  # only a cut has a margin
        show = [c for c in ("origin", "source", "tier", "score", "ifd", "ref_ppl", "reason", "prompt", "response")
                if c in df.columns]
        for source in sorted(set(left["source"].to_list())):
            k = kept.filter(pl.col("source") == source).sort("score", "origin").head(per_side)
            o = left.filter(pl.col("source") == source).sort("score", "origin", descending=[True, False]).head(per_side)
            out["margin"] += [{"side": "kept (lowest scores)", **r} for r in k.select(show).iter_rows(named=True)]
            out["margin"] += [{"side": "left out (highest scores)", **r} for r in o.select(show).iter_rows(named=True)]
    return out


def stage_results(run_dir: Path) -> dict[str, StageResult]:
    """The typed results of the stages that ran (ingest per source summed into one), in stage order."""
    from pipeline.dedup.stage import DedupResult
    from pipeline.quality.stage import QualityResult
    from pipeline.render.encode import EncodeResult
    from pipeline.render.pack import PackResult

    rd = RunDir.of(run_dir)
    out: dict[str, StageResult] = {}
    ingest = [StageResult.read(p) for p in sorted(rd.stage_dir("ingest").glob("*/stats.json"))]
    ingest = [r for r in ingest if r is not None and r.seconds and r.records_in]
    if ingest:
        out["ingest"] = StageResult(stage="ingest", records_in=sum(r.records_in for r in ingest),
                                    records_out=sum(r.records_out for r in ingest),
                                    seconds=max(r.seconds for r in ingest))  # sources run in parallel
    for name, cls in (("dedup", DedupResult), ("quality", QualityResult), ("encode", EncodeResult),
                      ("score", StageResult), ("mix", StageResult), ("pack", PackResult), ("ablation", StageResult)):
        r = cls.read(rd.stage_dir(name) / "stats.json")
        if r is not None and (name not in ("score", "ablation") or r.records_in):  # those two: only when on
            out[name] = r
    return out


def stage_stats(run_dir: Path) -> dict[str, Any]:
    """Every stage's own stats.json, as written (nothing the stages measured is left out)."""
    work = run_dir / "work"
    stats = {}
    for p in sorted(work.glob("*/stats.json")) if work.is_dir() else []:
        data = _read_json(p)
        if data is not None:
            stats[p.parent.name] = data
    for p in sorted((work / "ingest").glob("*/stats.json")) if (work / "ingest").is_dir() else []:
        data = _read_json(p)
        if data is not None:
            stats.setdefault("ingest", {})[p.parent.name] = data
    return stats


def ingest_notes(stats: dict[str, Any]) -> tuple[list[dict[str, str]], list[str]]:
    """Files under directory sources that were not read ({source, path, reason}) and the ingest warnings."""
    per_source = stats.get("ingest")
    files: list[dict[str, str]] = []
    warnings: list[str] = []
    for name, st in sorted(per_source.items()) if isinstance(per_source, dict) else []:
        if not isinstance(st, dict):
            continue
        for f in st.get("files_not_read") or []:
            if isinstance(f, dict):
                files.append({"source": str(st.get("source", name)), "path": str(f.get("path", "")),
                              "reason": str(f.get("reason", ""))})
        warnings += [str(w) for w in st.get("warnings") or []]
    return files, warnings


def summarize(run_dir: str | Path, cfg: RunConfig, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as a dict (what report.json holds); `manifest`: the one about to be written (the
    manifest is the run's last file, so the report is built before it lands)."""
    run_dir = Path(run_dir)
    rc = cfg.report
    ledger = read_ledger(run_dir)
    rows = funnel(ledger)
    totals = _sum_rows(rows, None)[0] if rows else {"total": "all", **{s: 0 for s in FUNNEL_STEPS}}
    totals["dropped"] = sum(totals[s] for s in FUNNEL_STEPS if s not in ("read", "quarantined", "kept"))
    stats = stage_stats(run_dir)
    files_not_read, ingest_warnings = ingest_notes(stats)
    results = stage_results(run_dir)
    quality = results.get("quality")
    encode = results.get("encode")
    # the gate judges this number: the ledger's rows are the truth, the quality stage says per benchmark
    n = ledger.filter(pl.col("reason") == "quality.contamination").height if ledger.height else 0
    contamination = {k: int(v) for k, v in quality.contamination_hits.items()} if quality else {}
    if n != sum(contamination.values()):
        contamination = {"all benchmarks": n} if n else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "run_dir": str(run_dir),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "kept_means": KEPT_MEANS,
        "totals": totals,
        "matrix": source_reason_matrix(ledger),
        "quality": quality_section(quality),
        "funnel": rows,
        "funnel_by_tier": _sum_rows(rows, "tier"),
        "reasons": reasons(ledger, run_dir, rc.examples_per_reason, rc.example_chars),
        "files_not_read": files_not_read,
        "ingest_warnings": ingest_warnings,
        "duplicates": duplicate_clusters(ledger, run_dir, rc.duplicate_clusters, rc.example_chars),
        "contamination": contamination,
        "pii_redactions": dict(quality.redactions) if quality else {},
        "languages_after_quality": dict(quality.lang) if quality else {},
        "curated": curated_profile(run_dir, rc.histogram_bins),
        "shards": shard_profile(run_dir, cfg.pack.max_seq_len, rc.histogram_bins),
        "truncation": encode.truncation if encode else None,
        "stage_times": [{"stage": name, "seconds": r.seconds, "records_in": r.records_in,
                         "records_out": r.records_out, "records_per_s": round(r.records_per_s, 1)}
                        for name, r in results.items()],
        "mix": stats.get("mix"),
        "selection": selection_section(run_dir, rc.histogram_bins),
        "manifest": manifest if manifest is not None else _read_json(run_dir / "manifest.json"),
        "training": training_section(run_dir),
        "before_after": _read_json(run_dir / "report" / "before_after.json"),
        "stage_stats": stats,
    }


def build_report(run_dir: str | Path, cfg: RunConfig, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report/report.json and the self-contained report/report.html; return the summary."""
    from pipeline.report.html import render_html

    run_dir = Path(run_dir)
    summary = summarize(run_dir, cfg, manifest)
    rd = RunDir.of(run_dir)
    atomic_write_json(rd.report / "report.json", summary)
    atomic_write_bytes(rd.report / "report.html", render_html(summary).encode("utf-8"))
    return summary


# --------------------------------------------------------------------------- text forms


def _pct(n: int, d: int) -> str:
    return f"{n / d:.1%}" if d else "-"


def _matrix_text(m: dict[str, Any], top: int = 6) -> list[str]:
    """The source x reason matrix for a terminal: the `top` reasons that took most records."""
    reasons_, rows = (m.get("reasons") or [])[:top], m.get("rows") or []
    if not reasons_ or not rows:
        return []
    # every column as wide as its full name (reason codes and source names are never cut)
    src_w = max(len("source"), *(len(row["source"]) for row in rows))
    widths = [max(len(r), 6) for r in reasons_]
    out = ["", "  where records went (share of each source's records; kept = in the shards):",
           "  " + f"{'source':<{src_w}}  {'kept':>6}" + "".join(f"  {r:>{w}}" for r, w in zip(reasons_, widths, strict=True))]
    for row in rows:
        out.append("  " + f"{row['source']:<{src_w}}  {row['kept_share']:>6.1%}"
                   + "".join(f"  {row['shares'].get(r, 0.0):>{w}.1%}" for r, w in zip(reasons_, widths, strict=True)))
    return out


def _funnel_table(rows: list[dict[str, Any]]) -> list[str]:
    """The funnel per source with full column and source names: each column as wide as its widest
    entry, never cut."""
    cols = ["source", "tier", *FUNNEL_STEPS]
    widths = {c: max([len(c), *(len(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c])) for r in rows)])
              for c in cols}

    def fmt(c: str, v: Any) -> str:
        text = f"{v:,}" if isinstance(v, int) else str(v)
        return text.ljust(widths[c]) if c in ("source", "tier") else text.rjust(widths[c])

    return ["  " + "  ".join(fmt(c, c) if c in ("source", "tier") else c.rjust(widths[c]) for c in cols)] + [
        "  " + "  ".join(fmt(c, r[c]) for c in cols) for r in rows]


def summary_text(summary: dict[str, Any]) -> str:
    """The summary for a terminal: totals, the funnel per source, top reasons, data profile."""
    t = summary["totals"]
    lines = [
        f"Run {summary['name']}  ({summary['run_dir']})",
        f"  read {t['read']}  kept {t['kept']} ({_pct(t['kept'], t['read'])})  quarantined {t['quarantined']}  "
        f"dropped {t['dropped']}",
        "",
        *_funnel_table(summary["funnel"]),
    ]
    lines += _matrix_text(summary.get("matrix") or {})
    if summary["reasons"]:
        lines += ["", "  reasons:"]
        lines += [f"    {r['count']:>8}  {r['reason']}  ({r['outcome']} at {r['stage']})" for r in summary["reasons"]]
    order = (summary.get("quality") or {}).get("order")
    if order:
        lines.append("  quality filters, in order: " + " -> ".join(order))
    not_read = summary.get("files_not_read") or []
    if not_read:
        lines += ["", f"  files not read ({len(not_read)}):"]
        lines += [f"    {f['source']}: {f['path']}  ({f['reason']})" for f in not_read[:20]]
        lines += [f"    … and {len(not_read) - 20} more (report.json)"] if len(not_read) > 20 else []
    if summary.get("ingest_warnings"):
        lines += ["", "  ingest warnings:"] + [f"    {w}" for w in summary["ingest_warnings"][:20]]
    sh = (summary.get("shards") or {}).get("train") or {}
    if sh:
        share = sh.get("supervised_share")
        eff = sh.get("packing_efficiency")
        lines += ["", f"  train shards: {sh['rows']} rows, {sh['tokens']} tokens"
                      + (f", supervised {share:.1%}" if share is not None else "")
                      + (f", packing efficiency {eff:.1%}" if eff is not None else "")]
    if summary.get("contamination"):
        lines.append("  contamination hits: " + ", ".join(f"{k} {v}" for k, v in summary["contamination"].items()))
    if summary.get("pii_redactions"):
        lines.append("  PII redactions: " + ", ".join(f"{k} {v}" for k, v in summary["pii_redactions"].items()))
    langs = (summary.get("curated") or {}).get("languages")
    if langs:
        lines.append("  languages kept: " + ", ".join(f"{k} {v}" for k, v in list(langs.items())[:8]))
    ab = (summary.get("selection") or {}).get("ablation") or {}
    if ab.get("arms"):
        lines.append(f"  proxy ablation ({ab.get('tokens_per_arm', 0):,} tokens per arm), validation loss: " + ", ".join(
            f"{k} {v['loss']:.4f}" for k, v in ab["arms"].items() if isinstance(v.get("loss"), int | float)))
    tr = summary.get("training") or {}
    for name, pts in (tr.get("curves") or {}).items():
        what = f" ({len(pts)} evaluations)" if name in (tr.get("points") or []) else ""
        lines.append(f"  {name}: {pts[0][1]:.4f} at step {pts[0][0]:g} -> {pts[-1][1]:.4f} at step {pts[-1][0]:g}{what}")
    times = summary.get("stage_times") or []
    if times:
        lines.append("  stage times: " + ", ".join(
            f"{t['stage']} {t['seconds']:.1f} s" + (f" ({t['records_per_s']:,.0f}/s)" if t["records_per_s"] else "")
            for t in times))
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown, for the Prefect UI (a markdown artifact)."""
    t = summary["totals"]
    md = [
        f"# Data-quality report: {summary['name']}",
        "",
        f"**{t['read']}** records read, **{t['kept']}** kept ({_pct(t['kept'], t['read'])}), "
        f"**{t['quarantined']}** quarantined, **{t['dropped']}** dropped.",
        "",
        "## Funnel per source",
        "",
        "| source | tier | " + " | ".join(FUNNEL_STEPS) + " |",
        "|---|---|" + "---:|" * len(FUNNEL_STEPS),
    ]
    md += [f"| {r['source']} | {r['tier']} | " + " | ".join(str(r[s]) for s in FUNNEL_STEPS) + " |" for r in summary["funnel"]]
    m = summary.get("matrix") or {}
    if m.get("reasons"):
        top = m["reasons"][:8]
        md += ["", "## Where records went (share of each source)", "",
               "| source | tier | read | kept | " + " | ".join(f"`{r}`" for r in top) + " |",
               "|---|---|---:|---:|" + "---:|" * len(top)]
        md += [f"| {r['source']} | {r['tier']} | {r['read']} | {r['kept_share']:.1%} | "
               + " | ".join(f"{r['counts'].get(x, 0)} ({r['shares'].get(x, 0.0):.1%})" for x in top) + " |"
               for r in m["rows"]]
    if summary["reasons"]:
        md += ["", "## Reasons", "", "| reason | stage | outcome | count |", "|---|---|---|---:|"]
        md += [f"| `{r['reason']}` | {r['stage']} | {r['outcome']} | {r['count']} |" for r in summary["reasons"]]
    if summary.get("files_not_read"):
        md += ["", "## Files not read", ""]
        md += [f"- {f['source']}: `{f['path']}` ({f['reason']})" for f in summary["files_not_read"][:50]]
    if summary.get("ingest_warnings"):
        md += ["", "## Ingest warnings", ""] + [f"- {w}" for w in summary["ingest_warnings"][:50]]
    sh = (summary.get("shards") or {}).get("train") or {}
    if sh:
        md += ["", "## Shards", "", f"- train rows {sh['rows']}, tokens {sh['tokens']}"]
        if sh.get("supervised_share") is not None:
            md.append(f"- supervised token share {sh['supervised_share']:.1%}")
        if sh.get("packing_efficiency") is not None:
            md.append(f"- packing efficiency {sh['packing_efficiency']:.1%}")
    for title, key in (("Contamination hits", "contamination"), ("PII redactions", "pii_redactions")):
        if summary.get(key):
            md += ["", f"## {title}", ""] + [f"- {k}: {v}" for k, v in summary[key].items()]
    tr = summary.get("training") or {}
    curves = tr.get("curves") or {}
    if curves:
        md += ["", "## Training", ""]
        md += [f"- {n}: {p[0][1]:.4f} → {p[-1][1]:.4f} over {len(p)} "
               + ("evaluations" if n in (tr.get("points") or []) else "points") for n, p in curves.items()]
    md += ["", f"Full report: `{summary['run_dir']}/report/report.html`"]
    return "\n".join(md)
