"""The mix stage: score, select, and how many copies of each conversation go into training
(the plan itself is pipeline.mix.plan).

Order of decisions (each conversation's fate is decided once, by the first step that drops it):

1. selection (pipeline.mix.select): score every conversation; optionally keep the top N / top
   fraction per source, diversified — the rest are `mix.unselected`;
2. weights: copies = floor(w) + 1 if the conversation's seeded hash key u < frac(w), where
   w = source weight × tier weight (w = 0.5 keeps half, w = 2 doubles, w = 1.5 doubles half);
   conversations with 0 copies are `mix.unselected`;
3. caps (max_conversations, max_tokens) per source, then per tier, counting training examples and
   tokens with their copies; kept in `mix.cap_order` (hash sample or best score) — the rest `mix.capped`;
4. shares: exact `share` and upper-bound `max_share` of the final training tokens, solved together
   (solve_share_budgets) and met by subsampling (or, for an exact share that is short, by repeating
   more copies, by hash) — the rest `mix.capped`.

A budget is filled first-fit in priority order: whole conversations (with their copies) are taken
while they fit, so a group lands within one conversation's tokens of its budget. Tokens come from
the encode stage (pipeline.render.encode: exact written tokens) or, without it, from
estimate_tokens (about 4 characters per token plus 4 template tokens per message); a conversation
longer than pack.max_seq_len counts as the tokenize stage will treat it (training_tokens).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.parts import read_part, read_parts
from pipeline.core.rundir import (
    atomic_write_parquet,
    claim_run_dir,
    remove_outputs,
)
from pipeline.core.stage import StageResult
from pipeline.ingest.canonical import CANONICAL_SCHEMA
from pipeline.mix.plan import plan_mix
from pipeline.mix.select import SIGNAL_COLUMNS, score_frame, select
from schemas.config import ConfigError, RunConfig

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
PART_ROWS = 50_000

def estimate_tokens(df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """(tokens, supervised tokens) per conversation, estimated without a tokenizer: ceil(chars / 4)
    plus 4 template tokens per message; supervised = the assistant turns' share of that (their
    text plus one end-of-turn token each)."""
    out = df.select(
        pl.col("messages")
        .list.eval(pl.element().struct.field("content").str.len_chars())
        .list.sum()
        .alias("c"),
        pl.col("messages").list.len().alias("m"),
        pl.col("messages")
        .list.eval(
            pl.when(pl.element().struct.field("role") == "assistant")
            .then(pl.element().struct.field("content").str.len_chars())
            .otherwise(None)
            .drop_nulls()
        )
        .alias("a"),
    ).select(
        ((pl.col("c") / CHARS_PER_TOKEN).ceil() + TOKENS_PER_MESSAGE * pl.col("m"))
        .cast(pl.Int64)
        .alias("tokens"),
        ((pl.col("a").list.sum() / CHARS_PER_TOKEN).ceil() + pl.col("a").list.len())
        .cast(pl.Int64)
        .alias("sup"),
    )
    return out["tokens"], out["sup"]


def supervised_share(df: pl.DataFrame) -> pl.Series:
    """Estimated share of a conversation's tokens that are training targets (assistant turns)."""
    tokens, sup = estimate_tokens(df)
    return (sup.cast(pl.Float64) / tokens.clip(lower_bound=1).cast(pl.Float64)).alias("sup_share")


def training_tokens(tokens: pl.Series, max_seq_len: int, overflow: str) -> pl.Series:
    """The tokens a conversation will put into training: the tokenize stage drops one longer than
    max_seq_len (overflow = "drop") or cuts it to at most max_seq_len ("truncate"), so budgets and
    shares count what the shards will hold."""
    over = tokens > max_seq_len
    return pl.select(
        pl.when(over).then(0 if overflow == "drop" else max_seq_len).otherwise(tokens).cast(pl.Int64)
    ).to_series()


def _validate_names(cfg: RunConfig) -> None:
    known = {s.name for s in cfg.sources}
    bad = [f"mix.sources.{s}" for s in cfg.mix.sources if s not in known]
    bad += [f"select.sources.{s}" for s in cfg.select.sources if s not in known]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)}: no such source; the configured sources are {', '.join(sorted(known))}"
        )


def _group_stats(frame: pl.DataFrame, by: str, copies: str) -> dict[str, dict[str, Any]]:
    total = max(float((frame[copies] * frame["_tokens"]).sum()), 1.0) if frame.height else 1.0
    rows = (
        frame.group_by(by)
        .agg(
            pl.len().alias("conversations"),
            pl.col(copies).sum().alias("examples"),
            (pl.col(copies) * pl.col("_tokens")).sum().alias("tokens"),
            (pl.col(copies) * pl.col("_tokens") * pl.col("_sup_share"))
            .sum()
            .round(0)
            .alias("supervised_tokens"),
        )
        .sort(by)
    )
    return {
        str(r[by]): {
            "conversations": int(r["conversations"]),
            "examples": int(r["examples"]),
            "tokens": int(r["tokens"]),
            "supervised_tokens": int(r["supervised_tokens"]),
            "share": round(float(r["tokens"]) / total, 6),
        }
        for r in rows.iter_rows(named=True)
    }


@dataclass
class MixResult(StageResult):
    """What the mix stage did: the mixture before and after (per source and tier), the share rules
    and how close they came, what was left out per reason and source."""

    token_counter: str = ""
    tokens_note: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    share_targets: list[dict[str, Any]] = field(default_factory=list)
    dropped_by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    over_max_seq_len: int = 0


def mix_stats(planned: pl.DataFrame, cfg: RunConfig, counter: str) -> MixResult:
    """Before/after view: conversations, examples (copies), tokens, supervised tokens, token share,
    per source and per tier; plus the drops per reason and each share rule's target vs result."""
    before = planned.with_columns(pl.lit(1, dtype=pl.Int32).alias("_one"))
    after = planned.filter(pl.col("repeat") > 0)

    def view(frame: pl.DataFrame, copies: str) -> dict[str, Any]:
        total = {
            "conversations": frame.height,
            "examples": int(frame[copies].sum()) if frame.height else 0,
            "tokens": int((frame[copies] * frame["_tokens"]).sum()) if frame.height else 0,
        }
        return {
            "total": total,
            "sources": _group_stats(frame, "source", copies),
            "tiers": _group_stats(frame, "tier", copies),
        }

    after_view = view(after, "repeat")
    targets = []
    for key, shares in (("sources", cfg.mix.sources), ("tiers", cfg.mix.tiers)):
        for name, rule in shares.items():
            got = after_view[key].get(str(name), {}).get("share", 0.0)
            if rule.has_share():
                targets.append(
                    {
                        "rule": f"mix.{key}.{name}",
                        "share": rule.share,
                        "max_share": rule.max_share,
                        "result": got,
                    }
                )
    dropped = planned.filter(pl.col("_reason").is_not_null()).group_by("_reason", "source").len()
    drops: dict[str, dict[str, int]] = {}
    for r, s, k in dropped.sort("_reason", "source").iter_rows():
        drops.setdefault(r, {})[s] = int(k)
    return MixResult(
        stage="mix",
        token_counter=counter,
        tokens_note="training tokens: copies counted; with encoded tokens, exactly what the shards hold "
        "(truncation included); estimated tokens over pack.max_seq_len count 0 when dropped, max_seq_len "
        "when truncated; supervised_tokens is an estimate (the assistant turns' share of each "
        "conversation's characters)",
        before=view(before, "_one"),
        after=after_view,
        share_targets=targets,
        dropped={r: sum(v.values()) for r, v in drops.items()},
        dropped_by_source=drops,
        settings={
            "mix": cfg.mix.model_dump(mode="json"),
            "select": cfg.select.model_dump(mode="json"),
            "seed": cfg.seed,
        },
    )


#: per candidate, for the report's selection section (score distributions, the margin of the cut)
SCORE_VIEW = ("score", "score_heuristic", "ifd", "ref_ppl", "ref_loss", "ref_loss_alone")
SNIPPET_CHARS = 300


def write_scores(planned: pl.DataFrame, path: Path) -> Path:
    """`work/mix/scores.parquet`: every candidate's scores, fate and the start of its prompt and answer."""
    from pipeline.ingest.canonical import role_text

    cols = [c for c in SCORE_VIEW if c in planned.columns]
    view = planned.select(
        "conversation_id", "origin", "source", pl.col("tier").cast(pl.String), *cols, "repeat",
        pl.col("_reason").alias("reason"),
    ).with_columns(
        role_text(planned, "user").str.slice(0, SNIPPET_CHARS).alias("prompt"),
        role_text(planned, "assistant").str.slice(0, SNIPPET_CHARS).alias("response"),
    )
    return atomic_write_parquet(view, path)


def run_mix(
    in_paths: list[Path], run_dir: Path, cfg: RunConfig, encoded: list[Path] | None = None,
    scores: list[Path] | None = None,
) -> MixResult:
    """Score, select and mix the quality-filtered conversations; write `curated/part-*.parquet`
    (input columns + score + signal_* + repeat), `ledger/mix.parquet` and `work/mix/stats.json`.

    `encoded`: the encode stage's parts (pipeline.render.encode): each conversation's exact written
    tokens, truncation included; a conversation absent from them was dropped there (its ledger row
    says why) and takes no part in the mix. Without them tokens are estimated (estimate_tokens).
    `scores`: the score stage's parts (pipeline.score.stage): the reference model's scores, joined in
    and ranked by as `select.score` says (pipeline.mix.model_scores); curated/ then also holds
    `score_heuristic` and the reference scores."""
    t0 = time.perf_counter()
    _validate_names(cfg)
    rd = claim_run_dir(run_dir)
    df = read_parts([Path(p) for p in in_paths])
    source_tiers = {s.name: str(s.tier) for s in cfg.sources}
    if encoded is not None:
        # only the two columns: the parts also hold every conversation's ids and mask (~1 GB at 200k)
        counts = pl.concat([read_part(p, ["origin", "tokens"]) for p in encoded]) if encoded else None
        if counts is None or not counts.height:
            counts = pl.DataFrame(schema={"origin": pl.String, "tokens": pl.Int64})
        df = df.join(counts, on="origin", how="inner", maintain_order="left")
        tokens = df.get_column("tokens")
        df = df.drop("tokens")
        counter = "encoded tokens (exact, after truncation)"
    else:
        tokens = estimate_tokens(df)[0]
        counter = f"estimate: ceil(chars / {CHARS_PER_TOKEN}) + {TOKENS_PER_MESSAGE} per message"
    df = score_frame(df, cfg.select)
    df = df.with_columns(
        training_tokens(pl.Series(tokens).cast(pl.Int64), cfg.pack.max_seq_len, cfg.pack.overflow).alias(
            "_tokens"
        ),
        supervised_share(df).alias("_sup_share"),
    )
    over_long = int((pl.Series(tokens) > cfg.pack.max_seq_len).sum())
    model_cols: tuple[str, ...] = ()
    if scores:
        from pipeline.mix.model_scores import MODEL_COLUMNS, apply_model_scores

        df = apply_model_scores(df, read_parts([Path(p) for p in scores]), cfg.select)
        model_cols = MODEL_COLUMNS
    df = select(df, cfg.select, cfg.seed)
    planned = plan_mix(df, cfg.mix, source_tiers, cfg.seed)

    left_out = planned.filter(pl.col("repeat") == 0)
    write_ledger_part(
        run_dir,
        "mix",
        ledger_rows(
            left_out, stage="mix", outcome="dropped", reason=pl.col("_reason"), detail=pl.col("_detail")
        ),
    )
    kept = planned.filter(pl.col("repeat") > 0)
    helper = [c for c in kept.columns if c.startswith("_")]
    first = [
        *CANONICAL_SCHEMA,
        *[c for c in df.columns if c not in CANONICAL_SCHEMA and not c.startswith("_")],
    ]
    ordered = [c for c in first if c not in ("score", *SIGNAL_COLUMNS, *model_cols)]
    ordered += ["score", *SIGNAL_COLUMNS, *model_cols, "repeat"]
    kept = kept.drop(helper).select(ordered)
    rd.curated.mkdir(parents=True, exist_ok=True)
    remove_outputs(rd.curated, "part-[0-9][0-9][0-9][0-9][0-9].parquet")
    parts = [
        atomic_write_parquet(kept.slice(i, PART_ROWS), rd.curated / f"part-{i // PART_ROWS:05d}.parquet")
        for i in range(0, max(kept.height, 1), PART_ROWS)
    ]
    write_scores(planned, rd.stage_dir("mix") / "scores.parquet")
    result = mix_stats(planned, cfg, counter)
    result.parts = [str(p) for p in parts]
    result.over_max_seq_len = over_long
    result.records_in = df.height
    result.records_out = kept.height
    result.seconds = round(time.perf_counter() - t0, 3)
    result.write(rd.stage_dir("mix") / "stats.json")
    return result


def shares_within(stats: MixResult, points: float = 1.0) -> bool:
    """True when every share rule's result is within `points` percentage points of its target
    (exact share) or at most the bound plus `points` (max_share)."""
    for t in stats.share_targets:
        got = t["result"] * 100
        if t["share"] is not None and not math.isclose(got, t["share"] * 100, abs_tol=points):
            return False
        if t["max_share"] is not None and got > t["max_share"] * 100 + points:
            return False
    return True
