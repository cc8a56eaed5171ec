"""The score stage: reference-model scores of every conversation that passed quality and encode.

With `select.reference_model` set, each conversation's assistant tokens are scored by that model
(pipeline.score.reference says which tokens, pipeline.score.losses how): the mean loss with its
prompt (`ref_loss`), alone (`ref_loss_alone`), the perplexity exp(ref_loss) (`ref_ppl`) and
IFD = ref_loss / ref_loss_alone (`ifd`; > 1: the prompt does not help predict the response).

Scores are cached per (score key, conversation_id) in `work/score/cache/<key>.parquet`, where the key
hashes the model directory (pipeline.score.reference.model_hash), how it is rendered and
`select.score_max_tokens`: a re-run, or a run with more data, scores only the conversations it has not
seen. Writes `work/score/part-00000.parquet` (conversation_id, origin and the scores) and
`work/score/stats.json`. Without a reference model it writes nothing and hands on no parts.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.parts import read_parts
from pipeline.core.rundir import atomic_write_parquet, claim_run_dir, remove_outputs
from pipeline.core.stage import StageResult

SCORE_COLUMNS = ("ref_loss", "ref_loss_alone", "ref_ppl", "ifd", "ref_targets")
_SCHEMA = {"conversation_id": pl.String, "ref_loss": pl.Float64, "ref_loss_alone": pl.Float64,
           "ref_ppl": pl.Float64, "ifd": pl.Float64, "ref_targets": pl.Int64, "ref_error": pl.String}


@dataclass
class ScoreResult(StageResult):
    """What the score stage did: the model, how conversations were rendered for it, the cache, speed."""

    reference_model: str | None = None
    model_hash: str = ""
    score_key: str = ""
    rendered_with: str = ""
    device: str = ""
    scored: int = 0
    cached: int = 0
    unscored: int = 0
    conversations_per_s: float = 0.0
    ifd_above_one: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def score_key(model_hash: str, cfg: Any, reuse: bool) -> str:
    how = "encode:" + cfg.section_hash("template", "tokenizer", "pack") if reuse else f"own:{cfg.template.name}:{cfg.template.train_on}"
    text = f"{model_hash}|{how}|{cfg.select.score_max_tokens}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def score_conversations(df: pl.DataFrame, model_dir: Path, cfg: Any,
                        encoded: dict[str, Any] | None = None) -> tuple[pl.DataFrame, str, str]:
    """Scores of `df`'s conversations (conversation_id, messages): a frame of _SCHEMA, how they were
    rendered, and the device."""
    from pipeline.core.progress import Progress
    from pipeline.score.losses import derive, load_reference, sequence_losses
    from pipeline.score.reference import reference_pairs

    cids = df["conversation_id"].to_list()
    if not cids:
        return pl.DataFrame(schema=_SCHEMA), "", ""
    pairs = reference_pairs(df["messages"].to_list(), model_dir, cfg, encoded, cids)
    module, device = load_reference(model_dir, cfg.select.score_device)
    seqs = []
    for i in range(len(cids)):
        seqs.append((pairs.ids[i], pairs.masks[i].astype(bool)))
        seqs.append(pairs.alone(i) if pairs.errors[i] is None else (pairs.ids[i][:0], pairs.masks[i][:0]))
    progress = Progress("score", total=len(seqs), unit="sequences")
    losses = sequence_losses(module, device, seqs, cfg.select.score_batch_tokens, progress.update)
    rows = []
    for i, cid in enumerate(cids):
        d = derive(losses[2 * i], losses[2 * i + 1])
        err = pairs.errors[i] or (None if d["ifd"] is not None else "no target token to score")
        rows.append({"conversation_id": cid, **d, "ref_error": err})
    return pl.DataFrame(rows, schema=_SCHEMA), pairs.how, str(device)


def run_score(in_paths: list[Path], run_dir: Path, cfg: Any, encoded: list[Path] | None = None) -> ScoreResult:
    """Score the conversations of `in_paths` (the quality stage's parts) that the encode stage kept."""
    t0 = time.perf_counter()
    rd = claim_run_dir(run_dir)
    out_dir = rd.stage_dir("score")
    result = ScoreResult(stage="score")
    remove_outputs(out_dir, "part-[0-9][0-9][0-9][0-9][0-9].parquet")
    ref = cfg.select.reference_model
    if ref is None:
        result.write(out_dir / "stats.json")
        return result
    from pipeline.score.reference import check_model_dir, model_hash, reuses_encode

    model_dir = check_model_dir(Path(ref))
    df = read_parts([Path(p) for p in in_paths]).select("conversation_id", "origin", "source", "tier", "messages")
    enc_map = None
    if encoded:
        enc = read_parts([Path(p) for p in encoded])
        df = df.join(enc.select("origin"), on="origin", how="semi", maintain_order="left")
        if reuses_encode(cfg):
            enc_map = {c: (i, m) for c, i, m in enc.select("conversation_id", "input_ids", "loss_mask").iter_rows()}
    df = df.unique("conversation_id", keep="first", maintain_order=True)
    result.model_hash = model_hash(model_dir)
    reuse = reuses_encode(cfg)
    result.score_key = score_key(result.model_hash, cfg, reuse)
    cache_file = out_dir / "cache" / f"{result.score_key}.parquet"
    cache = pl.read_parquet(cache_file) if cache_file.is_file() else pl.DataFrame(schema=_SCHEMA)
    todo = df.join(cache.select("conversation_id"), on="conversation_id", how="anti", maintain_order="left")
    t1 = time.perf_counter()
    fresh, how, device = score_conversations(todo, model_dir, cfg, enc_map)
    took = time.perf_counter() - t1
    if fresh.height:
        cache = pl.concat([cache, fresh]).unique("conversation_id", keep="last").sort("conversation_id")
        atomic_write_parquet(cache, cache_file)
    scores = df.select("conversation_id", "origin").join(cache, on="conversation_id", how="left")
    result.parts = [str(atomic_write_parquet(scores, out_dir / "part-00000.parquet"))]
    result.reference_model = str(model_dir)
    result.rendered_with = how or ("the encode stage's ids (reference = model.path)" if reuse else "cache")
    result.device = device or "cache"
    result.records_in = df.height
    result.records_out = int(scores["ifd"].is_not_null().sum())
    result.scored, result.cached = fresh.height, df.height - todo.height
    result.unscored = df.height - result.records_out
    result.conversations_per_s = round(fresh.height / took, 2) if fresh.height and took > 0 else 0.0
    result.ifd_above_one = int((scores["ifd"] > 1.0).sum())
    result.summary = {
        col: {q: (None if v is None else round(float(v), 4)) for q, v in
              zip(("min", "p50", "mean", "max"),
                  (scores[col].min(), scores[col].median(), scores[col].mean(), scores[col].max()), strict=True)}
        for col in ("ref_loss", "ref_loss_alone", "ref_ppl", "ifd")
    }  # fmt: skip
    result.seconds = round(time.perf_counter() - t0, 3)
    result.write(out_dir / "stats.json")
    return result
