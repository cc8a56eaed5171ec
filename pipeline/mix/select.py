"""Quality score from cheap signals, and selection of the best conversations per source.

Every signal is a number in [0, 1], higher is better, computed with polars expressions only:

| signal | what it measures |
| --- | --- |
| `signal_length` | assistant characters, log-scaled: log(1 + chars) / log(1 + 2000), capped at 1 |
| `signal_balance` | answer vs prompt: 2 * a / (a + u) with a, u the assistant and user characters, capped at 1 (an answer at least as long as its prompt scores 1) |
| `signal_diversity` | type/token ratio of the answer's first 200 words (lower-cased); 0 for an empty answer |
| `signal_repetition` | 1 - the larger of the share of repeated non-empty lines and of repeated word pairs (first 256 words, within the first 4,000 characters) |
| `signal_complexity` | instruction complexity proxies: 0.5 * prompt words log-scaled to 60 + 0.3 * cue words (explain, compare, step, …; 3 or more = 1) + 0.2 if there are several user turns |
| `signal_formatting` | 0.4 code block + 0.3 list + 0.15 heading or bold + 0.15 paragraphs |
| `signal_tier` | `select.tier_values[tier]` (expert 1.0, crowdsourced 0.6, synthetic 0.3) |

`score` is the weighted mean of the signals with `select.weights`. Selection (`select.enabled`)
keeps the top N / top fraction per source by score (ties: the seeded conversation hash), and with
`select.diversify_threshold` walks the candidates best-first, skipping any whose MinHash signature
is too close (estimated Jaccard >= threshold) to one already kept, across all sources.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import xxhash

from pipeline.ingest.canonical import role_text
from schemas.config_mix import SelectConfig

SIGNALS = ("length", "balance", "diversity", "repetition", "complexity", "formatting", "tier")
SIGNAL_COLUMNS = tuple(f"signal_{s}" for s in SIGNALS)

_WORD = r"[\p{L}\p{N}']+"
_CUES = (
    r"(?i)\b(explain|why|how|compare|contrast|step|steps|list|describe|analy[sz]e|evaluate|write|"
    r"must|should|at least|each|format|example|examples|reason|justify|summari[sz]e|classify)\b"
)


def sample_keys(conversation_ids: pl.Series, seed: int) -> np.ndarray:
    """A seeded uniform number in [0, 1) per conversation, from its content hash: the one source of
    randomness for sampling, so the same conversation gets the same fate in every run."""
    scale = float(2**64)
    return np.fromiter(
        (xxhash.xxh64_intdigest((c or "").encode(), seed) / scale for c in conversation_ids.to_list()),
        dtype=np.float64,
        count=len(conversation_ids),
    )


def priority_order(df: pl.DataFrame, keys: np.ndarray, by_score: bool) -> np.ndarray:
    """Row indices best first: by score (when asked), then the seeded hash key, then origin — so
    the order never depends on how the input happened to be sorted."""
    origin_rank = df["origin"].rank("ordinal").to_numpy()
    if by_score:
        return np.lexsort((origin_rank, keys, -df["score"].to_numpy()))
    return np.lexsort((origin_rank, keys))


def repetition_signals(asst: pl.Series) -> pl.DataFrame:
    """signal_diversity and signal_repetition of each answer. Words and lines are exploded into one
    flat column and counted per conversation with a group-by (5x faster than per-row list.eval)."""
    n = len(asst)
    rows = pl.int_range(n, eager=True).alias("_row")
    # Words as 64-bit hashes (only equality matters here), pairs as a combination of two hashes:
    # counting distinct integers is much cheaper than distinct strings. Only the first 256 words
    # are used, so the regex only reads the first 4,000 characters.
    head = asst.str.slice(0, 4000).str.to_lowercase().str.extract_all(_WORD).list.head(256)
    # A word's position in its answer: its index in the flat column less where the answer starts there
    # (a window `over("_row")` did the same at ~3x the cost).
    counts = head.list.len().fill_null(0).cast(pl.Int64)
    words = (
        pl.DataFrame([rows, head.alias("w"), (counts.cum_sum() - counts).alias("_start")])
        .explode("w")
        .drop_nulls("w")
        .with_columns(pl.col("w").hash(seed=0), (pl.int_range(pl.len()) - pl.col("_start")).alias("pos"))
        .with_columns(
            # Word pairs never span two conversations.
            pl.when(pl.col("_row").shift(-1) == pl.col("_row"))
            .then(pl.col("w") * 1_000_003 + pl.col("w").shift(-1))
            .alias("pair"),
        )
        .group_by("_row")
        .agg(
            (pl.col("w").filter(pl.col("pos") < 200).n_unique() / (pl.col("pos") < 200).sum()).alias("ttr"),
            pl.col("pair").drop_nulls().n_unique().alias("pairs_unique"),
            pl.col("pair").drop_nulls().len().alias("pairs"),
        )
    )
    lines = (
        pl.DataFrame([rows, asst.str.split("\n").alias("l")])
        .explode("l")
        .with_columns(pl.col("l").str.strip_chars())
        .filter(pl.col("l").is_not_null() & (pl.col("l") != ""))
        .group_by("_row")
        .agg((1.0 - pl.col("l").n_unique() / pl.len()).alias("dup_lines"))
    )
    dup_pairs = (
        pl.when(pl.col("pairs") > 0).then(1.0 - pl.col("pairs_unique") / pl.col("pairs")).otherwise(0.0)
    )
    return (
        pl.DataFrame([rows])
        .join(words, on="_row", how="left")
        .join(lines, on="_row", how="left")
        .sort("_row")
        .select(
            pl.col("ttr").fill_null(0.0).cast(pl.Float64).alias("signal_diversity"),
            (1.0 - pl.max_horizontal(pl.col("dup_lines").fill_null(0.0), dup_pairs.fill_null(0.0)))
            .cast(pl.Float64)
            .alias("signal_repetition"),
        )
    )


def signal_exprs(tier_values: dict[str, float]) -> list[pl.Expr]:
    """Expressions for the per-row signals from the helper columns `_user`, `_asst`, `_user_turns`,
    `tier` (diversity and repetition come from repetition_signals)."""
    a_chars = pl.col("_asst").str.len_chars().cast(pl.Float64)
    u_chars = pl.col("_user").str.len_chars().cast(pl.Float64)
    u_words = pl.col("_user").str.count_matches(_WORD).cast(pl.Float64)
    cues = pl.col("_user").str.count_matches(_CUES).cast(pl.Float64)
    asst = pl.col("_asst")
    formatting = (
        0.4 * asst.str.contains("```", literal=True).cast(pl.Float64)
        + 0.3 * asst.str.contains(r"(?m)^\s*(?:[-*•]|\d+[.)])\s+\S").cast(pl.Float64)
        + 0.15 * asst.str.contains(r"(?m)^#{1,6}\s|\*\*\S").cast(pl.Float64)
        + 0.15 * asst.str.contains("\n\n", literal=True).cast(pl.Float64)
    )
    return [
        ((a_chars + 1).log() / math.log(2001)).clip(0.0, 1.0).alias("signal_length"),
        (2 * a_chars / (a_chars + u_chars).clip(lower_bound=1.0)).clip(0.0, 1.0).alias("signal_balance"),
        (
            0.5 * ((u_words + 1).log() / math.log(61)).clip(0.0, 1.0)
            + 0.3 * (cues / 3).clip(0.0, 1.0)
            + 0.2 * (pl.col("_user_turns") > 1).cast(pl.Float64)
        ).alias("signal_complexity"),
        formatting.alias("signal_formatting"),
        pl.col("tier")
        .cast(pl.String)
        .replace_strict(
            {str(k): float(v) for k, v in tier_values.items()}, default=0.0, return_dtype=pl.Float64
        )
        .alias("signal_tier"),
    ]


def score_frame(df: pl.DataFrame, cfg: SelectConfig) -> pl.DataFrame:
    """`df` with the signal columns and `score` (weighted mean of the signals) added."""
    helpers = pl.DataFrame(
        {
            "_user": role_text(df, "user"),
            "_asst": role_text(df, "assistant"),
            "_user_turns": df.select(
                pl.col("messages").list.eval(pl.element().struct.field("role") == "user").list.sum()
            ).to_series(),
            "tier": df["tier"],
        }
    )
    signals = helpers.select(signal_exprs({str(k): v for k, v in cfg.tier_values.items()})).hstack(
        repetition_signals(helpers["_asst"])
    )
    weights = cfg.weights.model_dump()
    total = sum(weights.values())
    score = sum(pl.col(f"signal_{s}") * (weights[s] / total) for s in SIGNALS)
    signals = signals.with_columns(score.alias("score"))
    return df.drop([c for c in ("score", *SIGNAL_COLUMNS) if c in df.columns]).hstack(
        signals.select("score", *SIGNAL_COLUMNS)
    )


def quota(n: int, top_n: int | None, top_fraction: float | None) -> int:
    """How many of `n` conversations a source keeps: the smaller of top_n and round(top_fraction * n)."""
    keep = n
    if top_n is not None:
        keep = min(keep, top_n)
    if top_fraction is not None:
        keep = min(keep, int(math.floor(top_fraction * n + 0.5)))
    return keep


def source_quotas(df: pl.DataFrame, cfg: SelectConfig) -> dict[str, int]:
    """Per-source quota from the global top_n/top_fraction and the per-source overrides."""
    out: dict[str, int] = {}
    for source, n in df.group_by("source").len().iter_rows():
        rule = cfg.sources.get(source)
        top_n = rule.top_n if rule and rule.top_n is not None else cfg.top_n
        frac = rule.top_fraction if rule and rule.top_fraction is not None else cfg.top_fraction
        out[source] = quota(n, top_n, frac)
    return out


def minhash_signatures(df: pl.DataFrame, num_perm: int, shingle_words: int, seed: int) -> np.ndarray:
    """(n, num_perm) MinHash signatures of each conversation's normalised user and assistant text
    over word n-gram shingles (the dedup stage's vectorised MinHash, pipeline.dedup.minhash)."""
    from pipeline.core.textnorm import normalize, turns_text
    from pipeline.dedup.minhash import text_signatures

    texts = df.select(normalize(turns_text(("user", "assistant")))).to_series()
    return text_signatures(texts, ngram=shingle_words, num_perm=num_perm, seed=seed + 1)


def band_layout(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) such that two signatures with estimated Jaccard >= threshold share a band for
    sure: they differ in at most D = num_perm - ceil(threshold * num_perm) positions, each
    difference spoils at most one band, so bands > D guarantees a fully equal band."""
    agree = math.ceil(threshold * num_perm - 1e-9)
    max_diff = num_perm - agree
    rows = max(1, num_perm // (max_diff + 1))
    return num_perm // rows, rows


def greedy_diverse(
    order: np.ndarray,
    sources: list[str],
    quotas: dict[str, int],
    signatures: np.ndarray | None,
    threshold: float | None,
    costs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Walk rows in `order` (best first); keep a row while its source has quota left and (with
    signatures) it is not a near copy of a kept row. Returns (kept mask, near_of index or -1).

    `costs`: what a row takes from its source's quota (default 1, a conversation; tokens with
    `select.quota_by = "tokens"`, where a row that does not fit is passed over: first fit)."""
    n = len(sources)
    kept = np.zeros(n, dtype=bool)
    near_of = np.full(n, -1, dtype=np.int64)
    left: dict[str, float] = {k: float(v) for k, v in quotas.items()}
    cost = np.ones(n) if costs is None else np.asarray(costs, dtype=np.float64)
    if signatures is None or threshold is None:
        for i in order:
            s = sources[i]
            if left.get(s, 0) > 0 and left[s] >= cost[i]:
                kept[i] = True
                left[s] -= cost[i]
        return kept, near_of
    num_perm = signatures.shape[1]
    bands, rows = band_layout(num_perm, threshold)
    need = math.ceil(threshold * num_perm - 1e-9)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    keys = [signatures[:, b * rows : (b + 1) * rows] for b in range(bands)]
    for i in order:
        s = sources[i]
        if left.get(s, 0) <= 0 or left.get(s, 0) < cost[i]:
            continue
        band_keys = [keys[b][i].tobytes() for b in range(bands)]
        candidates: set[int] = set()
        for b, k in enumerate(band_keys):
            candidates.update(buckets[b].get(k, ()))
        if candidates:
            cand = np.fromiter(candidates, dtype=np.int64)
            agree = (signatures[cand] == signatures[i]).sum(axis=1)
            hit = np.flatnonzero(agree >= need)
            if hit.size:
                near_of[i] = int(cand[hit[np.argmax(agree[hit])]])
                continue
        kept[i] = True
        left[s] -= cost[i]
        for b, k in enumerate(band_keys):
            buckets[b].setdefault(k, []).append(int(i))
    return kept, near_of


def token_quotas(df: pl.DataFrame, cfg: SelectConfig) -> dict[str, int]:
    """Per-source token budget with `quota_by = "tokens"`: top_fraction of the source's tokens (the
    same fraction everywhere keeps every source's and tier's token share as it was)."""
    out: dict[str, int] = {}
    for source, tokens in df.group_by("source").agg(pl.col("_tokens").sum()).iter_rows():
        rule = cfg.sources.get(source)
        frac = rule.top_fraction if rule and rule.top_fraction is not None else cfg.top_fraction
        out[source] = int(tokens) if frac is None else int(math.floor(frac * int(tokens) + 0.5))
    return out


def select(df: pl.DataFrame, cfg: SelectConfig, seed: int) -> pl.DataFrame:
    """Scored `df` (see score_frame) plus `_selected` (bool) and `_select_detail` (why a row was
    left out, null when kept). With selection off, every row is selected. Rows with `_eligible`
    false (pipeline.mix.model_scores: IFD > 1 dropped) are never selected and keep their
    `_eligible_detail`."""
    eligible = df["_eligible"].to_numpy() if "_eligible" in df.columns else None
    if not cfg.enabled or df.height == 0:
        sel = pl.lit(True) if eligible is None else pl.col("_eligible")
        detail = pl.lit(None, dtype=pl.String) if eligible is None else pl.col("_eligible_detail")
        return df.with_columns(sel.alias("_selected"), detail.alias("_select_detail"))
    keys = sample_keys(df["conversation_id"], seed)
    order = priority_order(df, keys, by_score=True)
    if eligible is not None:
        order = order[eligible[order]]
    by_tokens = cfg.quota_by == "tokens"
    quotas = token_quotas(df.filter(pl.col("_eligible")) if eligible is not None else df, cfg) if by_tokens \
        else source_quotas(df, cfg)
    costs = df["_tokens"].to_numpy() if by_tokens else None
    sigs = None
    if cfg.diversify_threshold is not None:
        sigs = minhash_signatures(df, cfg.num_perm, cfg.shingle_words, seed)
    kept, near_of = greedy_diverse(order, df["source"].to_list(), quotas, sigs, cfg.diversify_threshold, costs)
    if by_tokens and cfg.top_n is not None:  # top_n still bounds the conversations of a source
        cap = source_quotas(df, cfg.model_copy(update={"top_fraction": None}))
        kept, _ = greedy_diverse(order[kept[order]], df["source"].to_list(), cap, None, None)
    origins = df["origin"].to_list()
    near_origin = [origins[j] if j >= 0 else None for j in near_of.tolist()]
    unit = "tokens" if by_tokens else ""
    out = (
        df.with_columns(
            pl.Series("_selected", kept),
            pl.Series("_near_of", near_origin, dtype=pl.String),
            pl.col("source").replace_strict(quotas, return_dtype=pl.Int64).alias("_quota"),
        )
        .with_columns(
            pl.when(pl.col("_selected"))
            .then(pl.lit(None, dtype=pl.String))
            .when(pl.col("_near_of").is_not_null())
            .then(
                pl.format(
                    "not selected: too close to {} (estimated Jaccard >= {}), already kept",
                    pl.col("_near_of"),
                    pl.lit(cfg.diversify_threshold),
                )
            )
            .otherwise(
                pl.format(
                    "not selected: score {} is below the top {}" + (f" {unit}" if unit else "") + " of source '{}'",
                    pl.col("score").round(3),
                    pl.col("_quota"),
                    pl.col("source"),
                )
            )
            .alias("_select_detail")
        )
        .drop("_near_of", "_quota")
    )
    if eligible is not None:
        out = out.with_columns(
            pl.when(pl.col("_eligible")).then(pl.col("_select_detail")).otherwise(pl.col("_eligible_detail"))
            .alias("_select_detail")
        )
    return out
