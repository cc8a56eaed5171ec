"""The ledger: one row per input record saying where its fate was decided and why.

Every stage writes the rows it decides into `ledger/<part>.parquet` (its drops and quarantines);
the rows of records that survive every stage are written last as `ledger/kept.parquet`. Read
together, the parts hold every origin exactly once (`check_balance`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core.rundir import atomic_write_parquet

LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "origin": pl.String,
    "source": pl.String,
    "tier": pl.String,
    "stage": pl.String,
    "outcome": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "conversation_id": pl.String,
    "dup_of": pl.String,
}
STAGES = ("ingest", "dedup", "quality", "mix", "tokenize")
OUTCOMES = ("kept", "quarantined", "dropped")


class LedgerImbalance(RuntimeError):
    """read != kept + quarantined + dropped, or an origin appears twice: a record was lost."""


def empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER_SCHEMA)


def ledger_rows(
    df: pl.DataFrame,
    *,
    stage: str,
    outcome: str,
    reason: str | pl.Expr | None,
    detail: str | pl.Expr | None = None,
    dup_of: str | pl.Expr | None = None,
) -> pl.DataFrame:
    """Ledger rows for the records of `df` (which has origin, source, tier, conversation_id).

    reason, detail and dup_of are a constant or an expression over `df` (e.g. pl.col("reason")).
    """
    assert stage in STAGES and outcome in OUTCOMES, (stage, outcome)

    def lit(v: str | pl.Expr | None) -> pl.Expr:
        return v if isinstance(v, pl.Expr) else pl.lit(v, dtype=pl.String)

    cid = pl.col("conversation_id") if "conversation_id" in df.columns else pl.lit(None, dtype=pl.String)
    return df.select(
        pl.col("origin").cast(pl.String),
        pl.col("source").cast(pl.String),
        pl.col("tier").cast(pl.String),
        pl.lit(stage, dtype=pl.String).alias("stage"),
        pl.lit(outcome, dtype=pl.String).alias("outcome"),
        lit(reason).cast(pl.String).alias("reason"),
        lit(detail).cast(pl.String).alias("detail"),
        cid.cast(pl.String).alias("conversation_id"),
        lit(dup_of).cast(pl.String).alias("dup_of"),
    )


def write_ledger_part(run_dir: str | Path, part: str, rows: pl.DataFrame) -> Path:
    """Write (replace) one part of the ledger, atomically."""
    rows = rows.select([pl.col(c).cast(t) for c, t in LEDGER_SCHEMA.items()])
    return atomic_write_parquet(rows, Path(run_dir) / "ledger" / f"{part}.parquet")


def read_ledger(run_dir: str | Path) -> pl.DataFrame:
    parts = sorted((Path(run_dir) / "ledger").glob("*.parquet"))
    if not parts:
        return empty_ledger()
    return pl.concat([pl.read_parquet(p) for p in parts], how="vertical")


def check_balance(ledger: pl.DataFrame, records_read: int) -> dict[str, int]:
    """Raise LedgerImbalance unless every record read has exactly one row; return outcome counts."""
    counts = {o: 0 for o in OUTCOMES}
    for outcome, n in ledger.group_by("outcome").len().iter_rows():
        counts[outcome] = n
    total = sum(counts.values())
    dupes = ledger.height - ledger.select(pl.col("origin").n_unique()).item() if ledger.height else 0
    if total != records_read or dupes:
        raise LedgerImbalance(
            f"ledger does not balance: read {records_read}, but kept {counts['kept']} + quarantined "
            f"{counts['quarantined']} + dropped {counts['dropped']} = {total}; {dupes} origin(s) appear twice"
        )
    return counts


def finalize_ledger(run_dir: str | Path, records_read: int, final_stage: str = "tokenize") -> dict[str, int]:
    """Write `ledger/kept.parquet` for the curated conversations no later stage dropped, then check
    that the whole ledger balances against `records_read`. Returns the outcome counts."""
    run_dir = Path(run_dir)
    (run_dir / "ledger" / "kept.parquet").unlink(missing_ok=True)
    decided = read_ledger(run_dir)
    curated = sorted((run_dir / "curated").glob("*.parquet"))
    if curated:
        kept = pl.concat(
            [pl.read_parquet(p, columns=["origin", "source", "tier", "conversation_id"]) for p in curated]
        )
        kept = kept.join(decided.select("origin"), on="origin", how="anti")
    else:
        kept = pl.DataFrame(schema={k: LEDGER_SCHEMA[k] for k in ("origin", "source", "tier", "conversation_id")})
    write_ledger_part(run_dir, "kept", ledger_rows(kept, stage=final_stage, outcome="kept", reason=None))
    return check_balance(read_ledger(run_dir), records_read)
