"""The pack stage: the selected conversations' encodings packed into Parquet shards.

`run_pack(run_dir, cfg)` takes the conversations of `curated/` (what the mix stage kept, with their
`repeat` counts) and their encodings from the encode stage (nothing is rendered or tokenized again),
splits train/validation by a seeded hash of the conversation id, repeats train conversations
`repeat` times, packs rows best-fit-decreasing (pipeline.render.packing) and writes
`shards/{train,val}-NNNNN.parquet` and `work/pack/stats.json`. Same input and config give
byte-identical shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.core.rundir import RunDir, atomic_write_table, claim_run_dir, remove_outputs
from pipeline.core.stage import StageResult, timed
from pipeline.render.encode import EncodeResult, read_encoded, run_encode
from pipeline.render.packing import best_fit_decreasing

SHARD_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.uint8())),
        ("seq_lens", pa.list_(pa.int32())),
        ("conversation_ids", pa.list_(pa.string())),
    ]
)


class NoCuratedData(ValueError):
    """curated/ holds no conversation: nothing to pack."""


@dataclass
class PackResult(StageResult):
    """What went into the shards: conversations and tokens per split, packing, per source and tier."""

    conversations: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    packing: dict[str, dict[str, float]] = field(default_factory=dict)
    train_by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    train_by_tier: dict[str, dict[str, int]] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    max_seq_len: int = 0


def val_mask(conversation_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """True for validation conversations: a hash of (seed, conversation_id) below `fraction`.

    With fraction > 0 and at least two conversations, at least one is held out (the lowest hash)."""
    if fraction <= 0 or not len(conversation_ids):
        return np.zeros(len(conversation_ids), dtype=bool)
    h = np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{c}".encode(), digest_size=8).digest(), "big") for c in conversation_ids],
        dtype=np.uint64,
    )
    u = h.astype(np.float64) / 2.0**64
    is_val = u < fraction
    if not is_val.any() and len(conversation_ids) >= 2:
        is_val[int(np.argmin(h))] = True
    return is_val


def _rows(lengths: np.ndarray, capacity: int, packing: bool, seed: int) -> list[list[int]]:
    """Rows of item indices in a seeded, deterministic order (so a trainer reading in order mixes lengths)."""
    rows = best_fit_decreasing(lengths, capacity) if packing else [[i] for i in range(len(lengths))]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def _write_shards(
    out_dir: Path, split: str, rows: list[list[int]], ids: list[np.ndarray], masks: list[np.ndarray],
    cids: list[str], rows_per_shard: int,
) -> list[dict]:
    """Write rows as Parquet shards (temporary name, then rename); returns one entry per shard. The
    zstd compression runs outside the GIL: shards are written by two threads while the next is built."""
    from concurrent.futures import ThreadPoolExecutor

    entries, writes = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for s, r0 in enumerate(range(0, len(rows), rows_per_shard)):
            chunk = rows[r0 : r0 + rows_per_shard]
            flat = [i for row in chunk for i in row]
            seg_lens = np.array([len(ids[i]) for i in flat], dtype=np.int32)
            row_tokens = np.array([sum(len(ids[i]) for i in row) for row in chunk], dtype=np.int64)
            tok_off = pa.array(np.concatenate([[0], np.cumsum(row_tokens)]).astype(np.int32))
            seg_off = pa.array(np.concatenate([[0], np.cumsum([len(row) for row in chunk])]).astype(np.int32))
            table = pa.Table.from_arrays(
                [
                    pa.ListArray.from_arrays(tok_off, pa.array(np.concatenate([ids[i] for i in flat]), pa.int32())),
                    pa.ListArray.from_arrays(tok_off, pa.array(np.concatenate([masks[i] for i in flat]), pa.uint8())),
                    pa.ListArray.from_arrays(seg_off, pa.array(seg_lens, pa.int32())),
                    pa.ListArray.from_arrays(seg_off, pa.array([cids[i] for i in flat], pa.string())),
                ],
                schema=SHARD_SCHEMA,
            )
            name = f"{split}-{s:05d}.parquet"
            writes.append(pool.submit(atomic_write_table, table, out_dir / name, compression="zstd",
                                      write_statistics=False))
            entries.append({"path": f"shards/{name}", "split": split, "rows": len(chunk), "tokens": int(row_tokens.sum())})
        for w in writes:
            w.result()  # an error writing any shard is raised here
    return entries


def _segments(
    df: pl.DataFrame, ids: list[np.ndarray], masks: list[np.ndarray], cids: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[list[int]]]:
    """Per packed segment: ids, mask, conversation_id; and each conversation's segment indices."""
    lens = df.get_column("segments").to_list() if "segments" in df.columns else [None] * df.height
    seg_ids, seg_masks, seg_cids, conv_segs = [], [], [], []
    for i in range(df.height):
        bounds = np.cumsum([0, *(lens[i] or [len(ids[i])])])
        conv_segs.append(list(range(len(seg_ids), len(seg_ids) + len(bounds) - 1)))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            seg_ids.append(ids[i][a:b])
            seg_masks.append(masks[i][a:b])
            seg_cids.append(cids[i])
    return seg_ids, seg_masks, seg_cids, conv_segs


def _group_stats(frame: pl.DataFrame, key: str) -> dict[str, dict[str, int]]:
    g = frame.group_by(key).agg(
        pl.len().alias("segments"), pl.col("tokens").sum(), pl.col("supervised").sum()
    ).sort(key)
    return {r[key]: {k: int(r[k]) for k in ("segments", "tokens", "supervised")} for r in g.iter_rows(named=True)}


def read_curated(run_dir: Path) -> pl.DataFrame:
    """The kept conversations of curated/*.parquet (id, origin, source, tier, repeat), in a deterministic
    order."""
    parts = sorted(RunDir.of(run_dir).curated.glob("*.parquet"))
    if not parts:
        raise NoCuratedData(f"{RunDir.of(run_dir).curated}: no curated/*.parquet to pack (run the curation first)")
    frames = []
    for p in parts:
        f = pl.read_parquet(p)
        cols = ["conversation_id", "origin", "source", "tier"]
        f = f.select(*cols, (pl.col("repeat") if "repeat" in f.columns else pl.lit(1)).cast(pl.Int32).alias("repeat"))
        frames.append(f)
    return pl.concat(frames).sort("conversation_id", "origin")


def run_pack(run_dir: str | Path, cfg: Any) -> PackResult:
    """Pack curated/ (with the encode stage's encodings) into shards/ (see the module docstring)."""
    result = PackResult(stage="pack", max_seq_len=cfg.pack.max_seq_len)
    with timed(result):
        rd = claim_run_dir(run_dir)
        curated = read_curated(rd.root)
        encoded = read_encoded(rd.root)
        encoded = encoded.select("origin", "tokens", "supervised", "input_ids", "loss_mask",
                                 *(["segments"] if "segments" in encoded.columns else []))
        # curated rows the encode stage dropped (curated/ written by hand, or by an older version) are
        # left out here; the encode stage's ledger rows account for them
        df = curated.join(encoded, on="origin", how="inner", maintain_order="left")
        ids = [np.asarray(a, dtype=np.int32) for a in df.get_column("input_ids").to_numpy()] if df.height else []
        masks = [np.asarray(a, dtype=np.uint8) for a in df.get_column("loss_mask").to_numpy()] if df.height else []
        cids = df.get_column("conversation_id").to_list()
        is_val = val_mask(cids, cfg.pack.val_fraction, cfg.seed)
        repeats = df.get_column("repeat").to_numpy()
        train_items = [i for i in range(df.height) if not is_val[i] for _ in range(max(1, int(repeats[i])))]
        val_items = [i for i in range(df.height) if is_val[i]]
        # A conversation that template.reasoning = "split" made into several training examples is packed
        # as that many segments (each attends only to itself), all with its conversation_id.
        seg_ids, seg_masks, seg_cids, conv_segs = _segments(df, ids, masks, cids)

        remove_outputs(rd.shards, "train-[0-9][0-9][0-9][0-9][0-9].parquet")
        remove_outputs(rd.shards, "val-[0-9][0-9][0-9][0-9][0-9].parquet")
        rd.shards.mkdir(parents=True, exist_ok=True)
        entries, packing = [], {}
        cap = cfg.pack.max_seq_len
        for split, items, seed in (("train", train_items, cfg.seed), ("val", val_items, cfg.seed + 1)):
            segs = [k for i in items for k in conv_segs[i]]
            lengths = np.array([len(seg_ids[k]) for k in segs], dtype=np.int64)
            local = _rows(lengths, cap, cfg.pack.packing, seed)
            rows = [[segs[j] for j in row] for row in local]
            entries += _write_shards(rd.shards, split, rows, seg_ids, seg_masks, seg_cids, cfg.pack.rows_per_shard)
            real = int(lengths.sum())
            packing[split] = {
                "rows": len(rows), "segments": len(segs), "real_tokens": real, "row_capacity": len(rows) * cap,
                "efficiency": real / (len(rows) * cap) if rows else 0.0,
            }
        ntok = df.get_column("tokens").to_list()
        sup = df.get_column("supervised").to_list()
        train = df[train_items].select("source", "tier", "tokens", "supervised")
        train_tokens = sum(ntok[i] for i in train_items)
        train_sup = sum(sup[i] for i in train_items)
        result.records_in = curated.height
        result.records_out = len(set(train_items)) + len(val_items)
        result.parts = [str(rd.root / e["path"]) for e in entries]
        result.conversations = {
            "written": result.records_out, "train_segments": len(train_items), "val": len(val_items),
            "not_encoded": curated.height - df.height,
        }
        result.tokens = {
            "train": train_tokens, "train_supervised": train_sup,
            "val": sum(ntok[i] for i in val_items), "val_supervised": sum(sup[i] for i in val_items),
            "supervised_share": train_sup / train_tokens if train_tokens else 0.0,
        }
        result.packing = packing
        result.train_by_source = _group_stats(train, "source")
        result.train_by_tier = _group_stats(train, "tier")
        result.shards = entries
    result.write(rd.stage_dir("pack") / "stats.json")
    return result


def run_tokenize(run_dir: str | Path, cfg: Any) -> tuple[EncodeResult, PackResult]:
    """Encode curated/ and pack it: the two render stages for a run directory whose curated/ was
    written without the flow (tests, notebooks). The flow encodes before the mix instead."""
    parts = sorted(RunDir.of(run_dir).curated.glob("*.parquet"))
    if not parts:
        raise NoCuratedData(f"{RunDir.of(run_dir).curated}: no curated/*.parquet to tokenize (run the curation first)")
    return run_encode(parts, run_dir, cfg), run_pack(run_dir, cfg)
