"""The mixture plan: how many copies of each conversation go into training.

Order of decisions (each conversation's fate is decided once, by the first step that drops it):
weights (`apply_weights`), then count and token caps (`apply_caps`), then token shares
(`apply_shares`, solved together by `solve_share_budgets`). The module docstring of
pipeline.mix.stage says what each does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.mix.select import priority_order, sample_keys
from schemas.config import ConfigError
from schemas.config_mix import MixConfig, MixRule


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


@dataclass
class Plan:
    """The mixture being decided, one entry per conversation: copies, and why a row was left out."""

    sources: np.ndarray
    tiers: np.ndarray
    tokens: np.ndarray  # training tokens of one copy
    order: np.ndarray  # priority order for caps and shares (mix.cap_order)
    repeat: np.ndarray
    reason: np.ndarray
    detail: np.ndarray

    def drop(self, mask: np.ndarray, text: str) -> None:
        self.reason[mask] = "mix.capped"
        self.detail[mask] = text
        self.repeat[mask] = 0


def apply_weights(df: pl.DataFrame, mix: MixConfig, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies from source × tier weights (fractional parts sampled by hash) for the selected rows;
    returns (repeat, reason, detail)."""
    n = df.height
    sources = df["source"].to_numpy()
    tiers = df["tier"].cast(pl.String).to_numpy()
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    sel = df["_selected"].to_numpy()
    reason[~sel] = "mix.unselected"
    if "_eligible" in df.columns:  # the reference model's IFD > 1 drop (pipeline.mix.model_scores)
        reason[~df["_eligible"].to_numpy()] = "mix.ifd_above_one"
    detail[~sel] = df["_select_detail"].to_numpy()[~sel]
    weight = np.ones(n)
    for source, rule in mix.sources.items():
        weight[sources == source] *= rule.weight
    for tier, rule in mix.tiers.items():
        weight[tiers == str(tier)] *= rule.weight
    repeat = np.where(sel, copies_for_weight(weight, keys), 0)
    out_w = sel & (repeat == 0)
    reason[out_w] = "mix.unselected"
    detail[out_w] = [f"left out by sampling at weight {w:g} (source × tier weight)" for w in weight[out_w]]
    return repeat, reason, detail


def apply_caps(plan: Plan, mix: MixConfig) -> None:
    """Count and token caps, per source, then per tier: first-fit in priority order."""
    n = len(plan.repeat)
    rules = [(f"source '{s}'", plan.sources == s, r) for s, r in mix.sources.items()]
    rules += [(f"tier '{t}'", plan.tiers == str(t), r) for t, r in mix.tiers.items()]
    for name, member, rule in rules:
        if rule.max_conversations is None and rule.max_tokens is None:
            continue
        order = plan.order[(member & (plan.repeat > 0))[plan.order]]
        costs, budgets = [], []
        if rule.max_conversations is not None:
            costs.append(plan.repeat.astype(np.float64))
            budgets.append(float(rule.max_conversations))
        if rule.max_tokens is not None:
            costs.append(plan.repeat * plan.tokens)
            budgets.append(float(rule.max_tokens))
        taken = first_fit(order, costs, budgets)
        out = np.zeros(n, dtype=bool)
        out[order] = ~taken[order]
        plan.drop(out, f"left out by the cap of {name}: {_rule_detail(rule)} ({mix.cap_order} order)")


def apply_shares(plan: Plan, mix: MixConfig, source_tiers: dict[str, str]) -> None:
    """Exact and maximum shares of the final training tokens, solved together, met by subsampling
    (or, for an exact share that is short, by more copies)."""
    groups = share_groups(mix, source_tiers)
    if not groups:
        return
    n = len(plan.repeat)
    repeat, tokens = plan.repeat, plan.tokens
    members = [np.isin(plan.sources, g.sources) & (repeat > 0) for g in groups]
    in_any = np.any(members, axis=0)
    free = float((repeat * tokens)[(repeat > 0) & ~in_any].sum())
    avail = [float((repeat * tokens)[m].sum()) for m in members]
    # An exact share of a group with no data cannot be reached; it is reported, not solved for.
    live = [i for i, a in enumerate(avail) if a > 0]
    budgets: list[float] = []
    if live:
        _, budgets = solve_share_budgets(
            free, [avail[i] for i in live], [groups[i].share for i in live], [groups[i].max_share for i in live]
        )
    for i, budget in zip(live, budgets, strict=True):
        g, member = groups[i], members[i]
        order = plan.order[member[plan.order]]
        what = f"{g.share:.1%} share" if g.share is not None else f"at most {g.max_share:.1%}"
        if budget < avail[i] - 1e-9:
            taken = first_fit(order, [repeat * tokens], [budget])
            out = np.zeros(n, dtype=bool)
            out[order] = ~taken[order]
            plan.drop(out, f"left out to keep {g.name} at {what} of training tokens ({g.key})")
        elif budget > avail[i] + 1e-9:
            # Short of an exact share: whole extra rounds, then one more copy first-fit by hash.
            rounds = int(budget // avail[i])
            repeat[member] *= rounds
            extra = first_fit(order, [tokens], [budget - rounds * avail[i]])
            repeat[extra] += 1


def plan_mix(df: pl.DataFrame, mix: MixConfig, source_tiers: dict[str, str], seed: int) -> pl.DataFrame:
    """Decide the copies of each conversation: weights, then caps, then shares (see the module
    docstring). `df` needs source, tier, conversation_id, score, `_tokens` and `_selected`. Returns
    `df` plus `repeat` (0 = left out), `_reason`, `_detail`."""
    keys = sample_keys(df["conversation_id"], seed)
    repeat, reason, detail = apply_weights(df, mix, keys)
    plan = Plan(
        sources=df["source"].to_numpy(), tiers=df["tier"].cast(pl.String).to_numpy(),
        tokens=df["_tokens"].to_numpy().astype(np.float64),
        order=priority_order(df, keys, by_score=mix.cap_order == "score"),
        repeat=repeat, reason=reason, detail=detail,
    )
    apply_caps(plan, mix)
    apply_shares(plan, mix, source_tiers)
    return df.with_columns(
        pl.Series("repeat", plan.repeat, dtype=pl.Int32),
        pl.Series("_reason", plan.reason.tolist(), dtype=pl.String),
        pl.Series("_detail", plan.detail.tolist(), dtype=pl.String),
    )
