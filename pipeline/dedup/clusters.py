"""Clusters of copies and the one member each keeps.

Pairs join into clusters as connected components (union-find), so a chain A~B~C is one cluster even
when A and C are less similar than the threshold. The survivor is fixed: the highest tier (expert >
crowdsourced > synthetic, schemas.conversation.TIER_RANK), then the longer assistant text, then the
smaller origin string; the same member survives whatever the input order.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def survivor_rank(keys: pl.DataFrame) -> np.ndarray:
    """Per row of dedup.keys.conversation_keys, its unique rank: 0 = the row that wins any group
    it is in."""
    rank = np.empty(keys.height, dtype=np.int64)
    order = keys.sort(["tier_rank", "asst_chars", "origin"], descending=[False, True, False])["row"].to_numpy()
    rank[order] = np.arange(keys.height)
    return rank


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected component label of each of n nodes given undirected edges (union-find)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def group_survivors(groups: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row of its group that has the smallest rank (ranks are unique)."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((rank, groups))
    g_sorted = groups[order]
    first = np.concatenate([[True], g_sorted[1:] != g_sorted[:-1]])
    leader_of_group = order[first]
    group_index = np.cumsum(first) - 1
    out = np.empty(len(groups), dtype=np.int64)
    out[order] = leader_of_group[group_index]
    return out


def why_kept(tier_k: str, tier_d: str, len_k: int, len_d: int) -> str:
    """Why the kept member (tier_k, len_k assistant characters) won over a dropped one."""
    if tier_k != tier_d:
        return f"higher tier ({tier_k} over {tier_d})"
    if len_k != len_d:
        return f"longer assistant text ({len_k} vs {len_d} characters)"
    return "same tier and length, earlier origin"


def cluster_table(kept: pl.DataFrame, dropped: pl.DataFrame) -> pl.DataFrame:
    """Every group with a dropped member, keyed by the kept conversation (`cluster`): its kept member
    first, then the dropped ones by origin."""
    cl = dropped.select(
        pl.col("dup_of").alias("cluster"), "conversation_id", "origin", "source", "tier", "reason",
        pl.lit(False).alias("kept"),
    )
    leaders = kept.filter(pl.col("conversation_id").is_in(cl["cluster"].unique().implode())).select(
        pl.col("conversation_id").alias("cluster"), "conversation_id", "origin", "source", "tier",
        pl.lit(None, dtype=pl.String).alias("reason"), pl.lit(True).alias("kept"),
    )
    return pl.concat([leaders, cl]).sort(["cluster", "kept", "origin"], descending=[False, True, False])


def cluster_counts(clusters: pl.DataFrame) -> tuple[int, int, int]:
    """(clusters, members of the largest, clusters that span more than one tier) of a cluster_table."""
    sizes = clusters.group_by("cluster").len()
    cross_tier = clusters.group_by("cluster").agg(pl.col("tier").n_unique()).filter(pl.col("tier") > 1).height
    return sizes.height, int(sizes["len"].max() or 0), int(cross_tier)
