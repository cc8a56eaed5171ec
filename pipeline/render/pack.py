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
from pipeline.core.textnorm import owners
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


@dataclass
class Segments:
    """Every packed segment as a range of one flat token column: its start, length and conversation
    (row of the joined frame); `first[i]`, `count[i]`: conversation i's segments."""

    ids: np.ndarray  # int32, every conversation's tokens back to back
    masks: np.ndarray  # uint8, aligned with ids
    start: np.ndarray  # int64 per segment
    length: np.ndarray  # int64 per segment
    conv: np.ndarray  # int64 per segment
    first: np.ndarray  # int64 per conversation
    count: np.ndarray  # int64 per conversation

    def of(self, items: np.ndarray) -> np.ndarray:
        """The segments of conversations `items`, in order (each conversation's in its own order)."""
        counts = self.count[items]
        own = owners(counts)
        before = np.cumsum(counts) - counts
        return self.first[items][own] + (np.arange(len(own), dtype=np.int64) - before[own])

    def gather(self, segs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids and masks of segments `segs`, concatenated in that order. (One concatenation of views:
        index arrays as long as the output would cost more, as fresh memory is slow to fault in.)"""
        bounds = list(zip(self.start[segs].tolist(), (self.start[segs] + self.length[segs]).tolist(), strict=True))
        if not bounds:
            return self.ids[:0], self.masks[:0]
        return (np.concatenate([self.ids[a:b] for a, b in bounds]),
                np.concatenate([self.masks[a:b] for a, b in bounds]))  # fmt: skip


def _segments(df: pl.DataFrame) -> Segments:
    """The segments of the joined frame's conversations: one per training example (the `segments`
    column, pipeline.render.reasoning), or the whole encoding when the column is absent or empty."""
    n_tok = df.get_column("input_ids").list.len().cast(pl.Int64).to_numpy()
    ids = df.get_column("input_ids").explode().drop_nulls().to_numpy().astype(np.int32, copy=False)
    masks = df.get_column("loss_mask").explode().drop_nulls().to_numpy().astype(np.uint8, copy=False)
    if "segments" in df.columns:
        given = df.get_column("segments").fill_null([])
        count = given.list.len().cast(pl.Int64).to_numpy()
        flat = given.explode().drop_nulls().cast(pl.Int64).to_numpy()
    else:
        count, flat = np.zeros(df.height, dtype=np.int64), np.zeros(0, dtype=np.int64)
    whole = count == 0  # one segment: the whole encoding
    count = np.where(whole, 1, count)
    first = np.cumsum(count) - count
    length = np.empty(int(count.sum()), dtype=np.int64)
    length[first[whole]] = n_tok[whole]
    listed = np.ones(len(length), dtype=bool)
    listed[first[whole]] = False
    length[listed] = flat
    conv = owners(count)
    conv_start = np.cumsum(n_tok) - n_tok
    seg_before = np.cumsum(length) - length
    start = conv_start[conv] + seg_before - seg_before[first][conv]
    return Segments(ids, masks, start, length, conv, first, count)


def _write_shards(
    out_dir: Path, split: str, rows: list[np.ndarray], segments: Segments, cids: pa.Array, rows_per_shard: int,
) -> list[dict]:
    """Write rows (arrays of segment indices) as Parquet shards (temporary name, then rename); returns one
    entry per shard. The zstd compression runs outside the GIL: shards are written by two threads while
    the next is built."""
    from concurrent.futures import ThreadPoolExecutor

    entries, writes = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for s, r0 in enumerate(range(0, len(rows), rows_per_shard)):
            chunk = rows[r0 : r0 + rows_per_shard]
            flat = np.concatenate(chunk) if chunk else np.zeros(0, dtype=np.int64)
            seg_lens = segments.length[flat]
            per_row = np.fromiter((len(r) for r in chunk), dtype=np.int64, count=len(chunk))
            seg_off = np.concatenate([[0], np.cumsum(per_row)])
            tok_cum = np.concatenate([[0], np.cumsum(seg_lens)])
            row_tokens = np.diff(tok_cum[seg_off])
            tok_off = pa.array(tok_cum[seg_off].astype(np.int32))
            ids, masks = segments.gather(flat)
            table = pa.Table.from_arrays(
                [
                    pa.ListArray.from_arrays(tok_off, pa.array(ids, pa.int32())),
                    pa.ListArray.from_arrays(tok_off, pa.array(masks, pa.uint8())),
                    pa.ListArray.from_arrays(pa.array(seg_off.astype(np.int32)), pa.array(seg_lens.astype(np.int32))),
                    pa.ListArray.from_arrays(pa.array(seg_off.astype(np.int32)), cids.take(segments.conv[flat])),
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
        cids = df.get_column("conversation_id")
        is_val = val_mask(cids.to_list(), cfg.pack.val_fraction, cfg.seed)
        repeats = np.maximum(1, df.get_column("repeat").cast(pl.Int64).to_numpy())
        train_idx = np.flatnonzero(~is_val)
        train_arr = np.repeat(train_idx, repeats[train_idx])  # each train conversation `repeat` times, in place
        val_arr = np.flatnonzero(is_val)
        # A conversation that template.reasoning = "split" made into several training examples is packed
        # as that many segments (each attends only to itself), all with its conversation_id.
        segments = _segments(df)
        cid_array = cids.to_arrow().cast(pa.string())

        remove_outputs(rd.shards, "train-[0-9][0-9][0-9][0-9][0-9].parquet")
        remove_outputs(rd.shards, "val-[0-9][0-9][0-9][0-9][0-9].parquet")
        rd.shards.mkdir(parents=True, exist_ok=True)
        entries, packing = [], {}
        cap = cfg.pack.max_seq_len
        for split, items, seed in (("train", train_arr, cfg.seed), ("val", val_arr, cfg.seed + 1)):
            segs = segments.of(items)
            lengths = segments.length[segs]
            local = _rows(lengths, cap, cfg.pack.packing, seed)
            rows = [segs[np.asarray(row, dtype=np.int64)] for row in local]
            entries += _write_shards(rd.shards, split, rows, segments, cid_array, cfg.pack.rows_per_shard)
            real = int(lengths.sum())
            packing[split] = {
                "rows": len(rows), "segments": len(segs), "real_tokens": real, "row_capacity": len(rows) * cap,
                "efficiency": real / (len(rows) * cap) if rows else 0.0,
            }
        ntok = df.get_column("tokens").cast(pl.Int64).to_numpy()
        sup = df.get_column("supervised").cast(pl.Int64).to_numpy()
        train = df[train_arr].select("source", "tier", "tokens", "supervised")
        train_tokens, train_sup = int(ntok[train_arr].sum()), int(sup[train_arr].sum())
        result.records_in = curated.height
        result.records_out = len(train_idx) + len(val_arr)
        result.parts = [str(rd.root / e["path"]) for e in entries]
        result.conversations = {
            "written": result.records_out, "train_segments": len(train_arr), "val": len(val_arr),
            "not_encoded": curated.height - df.height,
        }
        result.tokens = {
            "train": train_tokens, "train_supervised": train_sup,
            "val": int(ntok[val_arr].sum()), "val_supervised": int(sup[val_arr].sum()),
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
