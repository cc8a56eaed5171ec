"""Shard reading and batching: a seeded, memory-bounded shuffle and packed micro-batches.

Rows are read one Parquet row group at a time (never a whole split). An epoch's order is fixed by
(seed, epoch) from the row counts alone: the row groups are permuted, then rows are permuted within
windows of `shuffle_window` row groups, so at most a window of row groups sits in memory and a
resumed run can jump straight to any position.

A micro-batch keeps every packed conversation to itself: `position_ids` restart at 0 on each
segment. The default (varlen) path concatenates the rows into one sequence and passes the segment
bounds to attention that runs per segment (`trainer.attention`, or flash-attn's varlen kernels): no
mask, no padding. With `attn_implementation = "sdpa"`/`"eager"`, rows are padded and a block-diagonal
causal mask (built from `seq_lens`) lets a token see only the earlier tokens of its own segment.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

SHARD_COLUMNS = ("input_ids", "loss_mask", "seq_lens", "conversation_ids")


class ShardError(ValueError):
    """A shard that does not have the contract's columns or whose rows are inconsistent."""


@dataclass(frozen=True)
class Row:
    """One shard row: a sequence of one or more packed conversations."""

    input_ids: np.ndarray  # int64 [L]
    loss_mask: np.ndarray  # bool [L]
    seq_lens: np.ndarray  # int64 [S], sums to L
    conversation_ids: list[str]  # [S]


@dataclass
class Batch:
    """A collated micro-batch on the host; `to(device)` moves the tensors the model needs."""

    input_ids: torch.Tensor  # [B, L] int64
    loss_mask: torch.Tensor  # [B, L] bool; True = this token is a target
    position_ids: torch.Tensor  # [B, L] int64, 0 at every segment start
    segment_ids: torch.Tensor  # [B, L] int64, batch-wide segment index (padding: its own index)
    attention_mask: torch.Tensor | None  # [B, 1, L, L] bool (True = may attend), None on the flat path
    conversation_ids: list[str]  # batch-wide segment index -> conversation_id (real segments only)
    n_tokens: int  # real tokens
    n_slots: int  # tokens computed, padding included
    n_targets: int
    segments: list[tuple[int, int]] | None = None  # flat path: [start, end) of each segment

    def to(self, device: torch.device) -> Batch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            mv(self.input_ids), mv(self.loss_mask), mv(self.position_ids), mv(self.segment_ids),
            mv(self.attention_mask), self.conversation_ids, self.n_tokens, self.n_slots, self.n_targets,
            self.segments,
        )  # fmt: skip


class ShardSet:
    """The row groups of a list of shards, read lazily with a small LRU cache of decoded row groups."""

    def __init__(self, paths: Sequence[Path], cache_units: int = 8) -> None:
        self.paths = [Path(p) for p in paths]
        self.units: list[tuple[int, int]] = []  # (path index, row group)
        rows: list[int] = []
        for pi, path in enumerate(self.paths):
            pf = pq.ParquetFile(path)
            meta = pf.metadata
            names = set(pf.schema_arrow.names)
            missing = [c for c in SHARD_COLUMNS if c not in names]
            if missing:
                raise ShardError(f"{path}: missing shard column(s) {missing}; expected {list(SHARD_COLUMNS)}")
            for rg in range(meta.num_row_groups):
                n = meta.row_group(rg).num_rows
                if n:
                    self.units.append((pi, rg))
                    rows.append(n)
        self.unit_rows = np.asarray(rows, dtype=np.int64)
        self.n_rows = int(self.unit_rows.sum())
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_units = max(1, cache_units)

    def _unit(self, u: int) -> dict:
        hit = self._cache.get(u)
        if hit is not None:
            self._cache.move_to_end(u)
            return hit
        pi, rg = self.units[u]
        table = pq.ParquetFile(self.paths[pi]).read_row_group(rg, columns=list(SHARD_COLUMNS))
        dec = {"path": self.paths[pi]}
        for name in ("input_ids", "loss_mask", "seq_lens"):
            col = table.column(name).combine_chunks()
            # offsets + flat values let a row be two numpy slices instead of a Python list
            dec[name] = (col.offsets.to_numpy(), col.values.to_numpy(zero_copy_only=False))
        dec["conversation_ids"] = table.column("conversation_ids").to_pylist()
        self._cache[u] = dec
        if len(self._cache) > self._cache_units:
            self._cache.popitem(last=False)
        return dec

    def row(self, u: int, i: int) -> Row:
        """Row `i` of row group `u`, checked against the shard contract."""
        d = self._unit(u)

        def get(name: str) -> np.ndarray:
            off, val = d[name]
            return val[off[i] : off[i + 1]]

        ids = get("input_ids").astype(np.int64)
        mask = get("loss_mask").astype(bool)
        lens = get("seq_lens").astype(np.int64)
        convs = d["conversation_ids"][i]
        if len(mask) != len(ids) or int(lens.sum()) != len(ids) or len(convs) != len(lens) or (lens <= 0).any():
            raise ShardError(
                f"{d['path']}: row {i} of row group {self.units[u][1]} is inconsistent (len(input_ids)="
                f"{len(ids)}, len(loss_mask)={len(mask)}, sum(seq_lens)={int(lens.sum())}, "
                f"segments={len(lens)}, conversation_ids={len(convs)}); rebuild the shards"
            )
        return Row(ids, mask, lens, list(convs))

    def max_row_len(self) -> int:
        """The longest row, from the Parquet list offsets (reads only the input_ids column)."""
        longest = 0
        for pi, path in enumerate(self.paths):
            f = pq.ParquetFile(path)
            for rg in range(f.metadata.num_row_groups):
                if (pi, rg) not in self.units:
                    continue
                col = f.read_row_group(rg, columns=["input_ids"]).column(0).combine_chunks()
                longest = max(longest, int(pc.max(pc.list_value_length(col)).as_py() or 0))
        return longest


def epoch_order(unit_rows: np.ndarray, seed: int, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The (row group, row) visiting order of one epoch; the same for the same (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    units = rng.permutation(len(unit_rows))
    out_u, out_r = [], []
    for start in range(0, len(units), window):
        chunk = units[start : start + window]
        u = np.repeat(chunk, unit_rows[chunk])
        r = np.concatenate([np.arange(unit_rows[c]) for c in chunk]) if len(chunk) else np.zeros(0, np.int64)
        perm = rng.permutation(len(u))
        out_u.append(u[perm])
        out_r.append(r[perm])
    if not out_u:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_u), np.concatenate(out_r)


def collate(rows: Sequence[Row], pad_id: int, *, flat: bool = False) -> Batch:
    """Pad rows to the longest one and build position ids, segment ids and the attention mask.

    The first token of every segment is forced to be a non-target, whatever the shard says: it has
    no earlier token of its own conversation to be predicted from (docs/CONTRACTS.md), and this is what
    stops the one-token label shift from crossing a segment boundary.
    `flat=True` concatenates all rows into one [1, sum(L)] sequence with no padding and no mask, and
    lists the segment bounds (for varlen attention: trainer.attention or flash-attn).
    """
    if flat and rows:
        rows = [
            Row(
                np.concatenate([r.input_ids for r in rows]),
                np.concatenate([r.loss_mask for r in rows]),
                np.concatenate([r.seq_lens for r in rows]),
                [c for r in rows for c in r.conversation_ids],
            )
        ]
    b = max(1, len(rows))
    length = max((len(r.input_ids) for r in rows), default=1)
    ids = np.full((b, length), pad_id, dtype=np.int64)
    mask = np.zeros((b, length), dtype=bool)
    pos = np.zeros((b, length), dtype=np.int64)
    seg = np.zeros((b, length), dtype=np.int64)
    convs: list[str] = []
    n_tokens = 0
    for bi, r in enumerate(rows):
        n = len(r.input_ids)
        ids[bi, :n] = r.input_ids
        starts = np.concatenate([[0], np.cumsum(r.seq_lens)[:-1]])
        seg_local = np.repeat(np.arange(len(r.seq_lens)), r.seq_lens)
        pos[bi, :n] = np.arange(n) - starts[seg_local]
        m = r.loss_mask.copy()
        m[starts] = False
        mask[bi, :n] = m
        seg[bi, :n] = seg_local + len(convs)
        convs.extend(r.conversation_ids)
        n_tokens += n
    # padding gets one segment per row (indices after the real ones): it attends only to itself,
    # so no attention row is empty (an all-masked row would give NaN in SDPA)
    for bi, r in enumerate(rows):
        seg[bi, len(r.input_ids) :] = len(convs) + bi
        pos[bi, len(r.input_ids) :] = np.arange(length - len(r.input_ids))
    if not rows:
        seg[0, :] = 0
    segment_ids = torch.from_numpy(seg)
    attn = None
    if not flat:
        causal = torch.ones(length, length, dtype=torch.bool).tril_()
        attn = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
        attn = attn.unsqueeze(1)
    return Batch(
        input_ids=torch.from_numpy(ids),
        loss_mask=torch.from_numpy(mask),
        position_ids=torch.from_numpy(pos),
        segment_ids=segment_ids,
        attention_mask=attn,
        conversation_ids=convs,
        n_tokens=n_tokens,
        n_slots=b * length,
        n_targets=int(mask.sum()),
        segments=_bounds(rows[0].seq_lens) if flat and rows else None,
    )


def _bounds(seq_lens: np.ndarray) -> list[tuple[int, int]]:
    ends = np.cumsum(seq_lens).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


@dataclass(frozen=True)
class StepPlan:
    """How the global batch of one optimizer step is cut: rows per step and micro-batches per rank."""

    micro_batch_size: int
    grad_accum: int
    world_size: int

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size

    def steps_per_epoch(self, n_rows: int) -> int:
        return max(1, -(-n_rows // self.rows_per_step))

    def micro_slices(self, n_step_rows: int, rank: int) -> list[np.ndarray]:
        """Indices (into the step's rows) of this rank's micro-batches, in accumulation order.

        The step's rows are cut into world_size x grad_accum near-equal parts and rank r takes parts
        r*grad_accum ... : only the total is normalised, so any cut gives the same gradient.
        A short last step can leave a part empty; the rank still runs it (DDP needs every rank to
        take part in every backward).
        """
        parts = np.array_split(np.arange(n_step_rows), self.world_size * self.grad_accum)
        return parts[rank * self.grad_accum : (rank + 1) * self.grad_accum]


class TrainStream:
    """The rows of every optimizer step, deterministic from (seed, step) so a resume can start anywhere."""

    def __init__(self, shards: ShardSet, plan: StepPlan, seed: int, window: int) -> None:
        self.shards, self.plan, self.seed, self.window = shards, plan, seed, window
        self.steps_per_epoch = plan.steps_per_epoch(shards.n_rows)
        self._order: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, first row within the epoch's order) of optimizer step `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return epoch, k * self.plan.rows_per_step

    def step_rows(self, step: int, rank: int) -> list[list[Row]]:
        """This rank's micro-batches (lists of rows) for optimizer step `step`."""
        epoch, start = self.position(step)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.shards.unit_rows, self.seed, epoch, self.window))
        units, rows = self._order[1]
        stop = min(start + self.plan.rows_per_step, len(units))
        idx = np.arange(start, stop)
        return [
            [self.shards.row(int(units[j]), int(rows[j])) for j in idx[part]]
            for part in self.plan.micro_slices(len(idx), rank)
        ]


def eval_batches(shards: ShardSet, batch_rows: int, rank: int, world: int, max_rows: int = 0) -> Iterator[list[Row]]:
    """Validation rows in file order, `batch_rows` at a time; rank r takes batches r, r+world, ..."""
    total = shards.n_rows if not max_rows else min(max_rows, shards.n_rows)
    flat = [(u, i) for u, n in enumerate(shards.unit_rows) for i in range(int(n))][:total]
    for bi, start in enumerate(range(0, total, batch_rows)):
        if bi % world == rank:
            yield [shards.row(u, i) for u, i in flat[start : start + batch_rows]]
