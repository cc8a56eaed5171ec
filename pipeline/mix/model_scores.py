"""The selection score from the heuristic signals and the reference model's scores.

`select.score` names what selection ranks by: `heuristic` (the weighted signals, pipeline.mix.select),
`ifd`, `perplexity`, or a table of weights over them. Each part is a number in [0, 1], higher better:

| part | value |
| --- | --- |
| heuristic | the heuristic score (`score_heuristic` in curated/) |
| ifd | IFD, capped at 1: a response its prompt helps little is hard to follow, the most to learn from (Cherry, Superfiltering) |
| perplexity | 1 - the rank percentile of `ref_ppl` among the scored conversations: the most fluent responses first (Data-Juicer's perplexity filter) |

A conversation the reference model could not score (its rendering failed, nothing left to score) gets 0
for the model parts. `select.ifd_above_one`: IFD > 1 means the prompt makes the response *less* likely;
`drop` leaves such conversations out (ledger reason `mix.ifd_above_one`), `down_weight` multiplies their
score by `select.ifd_penalty`, `keep` does neither.
"""

from __future__ import annotations

import polars as pl

from pipeline.score.stage import SCORE_COLUMNS
from schemas.config_mix import SelectConfig

IFD_ABOVE_ONE = "mix.ifd_above_one"
#: the reference scores as curated/ stores them, beside the heuristic signals
MODEL_COLUMNS = ("score_heuristic", *SCORE_COLUMNS)


def apply_model_scores(df: pl.DataFrame, scores: pl.DataFrame, cfg: SelectConfig) -> pl.DataFrame:
    """`df` (scored by score_frame) joined with the reference scores; `score` becomes the configured
    selection score, `score_heuristic` keeps the heuristic one, `_eligible`/`_eligible_detail` say which
    rows IFD > 1 leaves out."""
    cols = ["conversation_id", *SCORE_COLUMNS]
    sc = scores.select(cols).unique("conversation_id", keep="first")
    out = df.drop([c for c in SCORE_COLUMNS if c in df.columns]).join(
        sc, on="conversation_id", how="left", maintain_order="left"
    )
    ppl = pl.col("ref_ppl")
    n_scored = ppl.is_not_null().sum()
    parts = {
        "heuristic": pl.col("score"),
        "ifd": pl.col("ifd").clip(0.0, 1.0).fill_null(0.0),
        "perplexity": pl.when(n_scored > 1)
        .then(1.0 - (ppl.rank("average") - 1.0) / (n_scored - 1).cast(pl.Float64))
        .otherwise(pl.when(ppl.is_not_null()).then(1.0).otherwise(0.0))
        .fill_null(0.0),
    }
    weights = cfg.score_weights()
    total = sum(weights.values())
    combined = sum(parts[k] * (w / total) for k, w in weights.items())
    above = pl.col("ifd").fill_null(0.0) > 1.0
    if cfg.ifd_above_one == "down_weight":
        combined = pl.when(above).then(combined * cfg.ifd_penalty).otherwise(combined)
    out = out.with_columns(pl.col("score").alias("score_heuristic")).with_columns(
        combined.cast(pl.Float64).alias("score")
    )
    drop = above if cfg.ifd_above_one == "drop" else pl.lit(False)
    return out.with_columns(
        (~drop).alias("_eligible"),
        pl.when(drop)
        .then(pl.format("IFD {} > 1: the prompt does not help predict the response (select.ifd_above_one = drop)",
                        pl.col("ifd").round(3)))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("_eligible_detail"),
    )
