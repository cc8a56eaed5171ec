"""The source mixture: how many copies of each conversation go into training.

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

import numpy as np
import polars as pl

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.parts import read_parts
from pipeline.core.rundir import (
    atomic_write_parquet,
    claim_run_dir,
    remove_outputs,
)
from pipeline.core.stage import StageResult
from pipeline.ingest.canonical import CANONICAL_SCHEMA
from pipeline.mix.select import SIGNAL_COLUMNS, priority_order, sample_keys, score_frame, select
from schemas.config import ConfigError, RunConfig
from schemas.config_mix import MixConfig, MixRule

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


def copies_for_weight(weight: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """floor(w) copies, plus one when the hash key falls below the fractional part."""
    base = np.floor(weight)
    return (base + (keys < (weight - base))).astype(np.int64)


def first_fit(order: np.ndarray, costs: list[np.ndarray], budgets: list[float]) -> np.ndarray:
    """Boolean mask of the items taken when walking `order` and taking each item whose costs
    still fit every budget. Fast path: the longest prefix that fits, then a loop over the rest."""
    n = len(order)
    taken = np.zeros(len(costs[0]) if costs else 0, dtype=bool)
    if n == 0:
        return taken
    prefix = n
    for cost, budget in zip(costs, budgets, strict=True):
        cum = np.cumsum(cost[order])
        prefix = min(prefix, int(np.searchsorted(cum, budget + 1e-9, side="right")))
    taken[order[:prefix]] = True
    left = [b - float(c[order[:prefix]].sum()) for c, b in zip(costs, budgets, strict=True)]
    rest = order[prefix:]
    if rest.size == 0:
        return taken
    rest_costs = [c[rest] for c in costs]
    mins = [float(rc.min()) for rc in rest_costs]
    for j, i in enumerate(rest.tolist()):
        if any(lf < m for lf, m in zip(left, mins, strict=True)):
            break  # nothing left can fit any more
        item = [float(rc[j]) for rc in rest_costs]
        if all(c <= lf + 1e-9 for c, lf in zip(item, left, strict=True)):
            taken[i] = True
            left = [lf - c for lf, c in zip(left, item, strict=True)]
    return taken


@dataclass
class ShareGroup:
    """A set of sources whose tokens a share rule constrains."""

    name: str  # "tier synthetic" or "source alpaca"
    key: str  # config key, e.g. "mix.tiers.synthetic"
    sources: list[str]
    share: float | None
    max_share: float | None


def share_groups(mix: MixConfig, source_tiers: dict[str, str]) -> list[ShareGroup]:
    """The disjoint groups of sources with a share rule; a source may not be in two."""
    groups: list[ShareGroup] = []
    for tier, rule in mix.tiers.items():
        if rule.has_share():
            srcs = sorted(s for s, t in source_tiers.items() if t == str(tier))
            groups.append(ShareGroup(f"tier {tier}", f"mix.tiers.{tier}", srcs, rule.share, rule.max_share))
    for source, rule in mix.sources.items():
        if rule.has_share():
            groups.append(
                ShareGroup(f"source {source}", f"mix.sources.{source}", [source], rule.share, rule.max_share)
            )
    seen: dict[str, str] = {}
    for g in groups:
        for s in g.sources:
            if s in seen:
                raise ConfigError(
                    f"{g.key} and {seen[s]} both set a share for source {s!r}: a source's tokens can have "
                    "one share rule; keep it on the source or on its tier"
                )
            seen[s] = g.key
    return groups


def solve_share_budgets(
    free_tokens: float, available: list[float], shares: list[float | None], max_shares: list[float | None]
) -> tuple[float, list[float]]:
    """Token budget of each share group so that, with `free_tokens` outside every group, exact
    shares hold and max shares are not exceeded in the final total T.

    Exact: budget = s * T. Max: budget = min(available, m * T). Start with no max group capped,
    T = (free + uncapped available) / (1 - exact shares - capped max shares); cap every max group
    over m * T and repeat — capping one lowers T, so the set only grows and this ends.
    """
    capped: set[int] = set()
    while True:
        num = free_tokens + sum(a for i, a in enumerate(available) if shares[i] is None and i not in capped)
        den = 1.0 - sum(s for s in shares if s is not None) - sum(max_shares[i] or 0.0 for i in capped)
        if den <= 1e-12 or num <= 0:
            raise ConfigError(
                "mix: the share rules cannot be met — the data they do not cover is "
                f"{num:,.0f} tokens and the shares leave {max(den, 0.0):.3f} of the total for it; "
                "add sources without a share rule or lower the shares"
            )
        total = num / den
        over = [
            i
            for i, m in enumerate(max_shares)
            if m is not None and i not in capped and available[i] > m * total + 1e-9
        ]
        if not over:
            break
        capped.update(over)
    budgets = [
        s * total if s is not None else (min(a, (m or 0.0) * total) if i in capped else a)
        for i, (a, s, m) in enumerate(zip(available, shares, max_shares, strict=True))
    ]
    return total, budgets


def _rule_detail(rule: MixRule) -> str:
    parts = []
    if rule.max_conversations is not None:
        parts.append(f"max_conversations {rule.max_conversations:,}")
    if rule.max_tokens is not None:
        parts.append(f"max_tokens {rule.max_tokens:,}")
    return " and ".join(parts)


def plan_mix(df: pl.DataFrame, mix: MixConfig, source_tiers: dict[str, str], seed: int) -> pl.DataFrame:
    """Decide the copies of each conversation. `df` needs source, tier, conversation_id, score,
    `_tokens` and `_selected`. Returns `df` plus `repeat` (0 = left out), `_reason`, `_detail`."""
    n = df.height
    keys = sample_keys(df["conversation_id"], seed)
    sources = df["source"].to_numpy()
    tiers = df["tier"].cast(pl.String).to_numpy()
    tokens = df["_tokens"].to_numpy().astype(np.float64)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    sel = df["_selected"].to_numpy()
    reason[~sel] = "mix.unselected"
    detail[~sel] = df["_select_detail"].to_numpy()[~sel]

    # Weights: epoch multipliers, fractional parts sampled by hash.
    weight = np.ones(n)
    for source, rule in mix.sources.items():
        weight[sources == source] *= rule.weight
    for tier, rule in mix.tiers.items():
        weight[tiers == str(tier)] *= rule.weight
    repeat = np.where(sel, copies_for_weight(weight, keys), 0)
    out_w = sel & (repeat == 0)
    reason[out_w] = "mix.unselected"
    detail[out_w] = [f"left out by sampling at weight {w:g} (source × tier weight)" for w in weight[out_w]]

    order_all = priority_order(df, keys, by_score=mix.cap_order == "score")

    def drop(mask: np.ndarray, text: str) -> None:
        reason[mask] = "mix.capped"
        detail[mask] = text
        repeat[mask] = 0

    # Count and token caps: per source, then per tier.
    rules = [(f"source '{s}'", sources == s, r) for s, r in mix.sources.items()]
    rules += [(f"tier '{t}'", tiers == str(t), r) for t, r in mix.tiers.items()]
    for name, member, rule in rules:
        if rule.max_conversations is None and rule.max_tokens is None:
            continue
        order = order_all[(member & (repeat > 0))[order_all]]
        costs, budgets = [], []
        if rule.max_conversations is not None:
            costs.append(repeat.astype(np.float64))
            budgets.append(float(rule.max_conversations))
        if rule.max_tokens is not None:
            costs.append(repeat * tokens)
            budgets.append(float(rule.max_tokens))
        taken = first_fit(order, costs, budgets)
        out = np.zeros(n, dtype=bool)
        out[order] = ~taken[order]
        drop(out, f"left out by the cap of {name}: {_rule_detail(rule)} ({mix.cap_order} order)")

    # Shares of the final training tokens.
    groups = share_groups(mix, source_tiers)
    if groups:
        members = [np.isin(sources, g.sources) & (repeat > 0) for g in groups]
        in_any = np.any(members, axis=0)
        free = float((repeat * tokens)[(repeat > 0) & ~in_any].sum())
        avail = [float((repeat * tokens)[m].sum()) for m in members]
        # An exact share of a group with no data cannot be reached; it is reported, not solved for.
        live = [i for i, a in enumerate(avail) if a > 0]
        budgets: list[float] = []
        if live:
            _, budgets = solve_share_budgets(
                free,
                [avail[i] for i in live],
                [groups[i].share for i in live],
                [groups[i].max_share for i in live],
            )
        for i, budget in zip(live, budgets, strict=True):
            g, member = groups[i], members[i]
            order = order_all[member[order_all]]
            what = f"{g.share:.1%} share" if g.share is not None else f"at most {g.max_share:.1%}"
            if budget < avail[i] - 1e-9:
                taken = first_fit(order, [repeat * tokens], [budget])
                out = np.zeros(n, dtype=bool)
                out[order] = ~taken[order]
                drop(out, f"left out to keep {g.name} at {what} of training tokens ({g.key})")
            elif budget > avail[i] + 1e-9:
                # Short of an exact share: whole extra rounds, then one more copy first-fit by hash.
                rounds = int(budget // avail[i])
                repeat[member] *= rounds
                extra = first_fit(order, [tokens], [budget - rounds * avail[i]])
                repeat[extra] += 1
    return df.with_columns(
        pl.Series("repeat", repeat, dtype=pl.Int32),
        pl.Series("_reason", reason.tolist(), dtype=pl.String),
        pl.Series("_detail", detail.tolist(), dtype=pl.String),
    )


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


def run_mix(
    in_paths: list[Path], run_dir: Path, cfg: RunConfig, encoded: list[Path] | None = None
) -> MixResult:
    """Score, select and mix the quality-filtered conversations; write `curated/part-*.parquet`
    (input columns + score + signal_* + repeat), `ledger/mix.parquet` and `work/mix/stats.json`.

    `encoded`: the encode stage's parts (pipeline.render.encode): each conversation's exact written
    tokens, truncation included; a conversation absent from them was dropped there (its ledger row
    says why) and takes no part in the mix. Without them tokens are estimated (estimate_tokens)."""
    t0 = time.perf_counter()
    _validate_names(cfg)
    rd = claim_run_dir(run_dir)
    df = read_parts([Path(p) for p in in_paths])
    source_tiers = {s.name: str(s.tier) for s in cfg.sources}
    if encoded is not None:
        counts = read_parts([Path(p) for p in encoded]).select("origin", "tokens") if encoded else None
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
    ordered = [c for c in first if c not in ("score", *SIGNAL_COLUMNS)] + ["score", *SIGNAL_COLUMNS, "repeat"]
    kept = kept.drop(helper).select(ordered)
    rd.curated.mkdir(parents=True, exist_ok=True)
    remove_outputs(rd.curated, "part-[0-9][0-9][0-9][0-9][0-9].parquet")
    parts = [
        atomic_write_parquet(kept.slice(i, PART_ROWS), rd.curated / f"part-{i // PART_ROWS:05d}.parquet")
        for i in range(0, max(kept.height, 1), PART_ROWS)
    ]
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
