"""What the dedup rules need of every conversation, computed in one pass per batch of rows: the facts
that pick a survivor, the stable hashes of the texts the exact rules compare, and the MinHash
signatures the near rules compare (of every row; the rules take the rows still alive).

A large input is keyed in `dedup.workers` processes, batch by batch (`keyed_parts`): each worker
reads its rows from the input part itself and hands back only numbers and hashes, never the
normalised texts (which are several times the input's size). Normalising the text is most of the
work; in one process it was ~7 s of a 200k-record run's dedup, while the workers waited.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.dedup.keys import conversation_keys, hash_texts
from pipeline.dedup.minhash import text_signatures
from schemas.config_curation import DedupConfig

#: The columns the keys read.
KEY_INPUT = ("messages", "tier", "origin")
#: Inputs smaller than this are keyed in the stage's own process (a worker costs ~1 s to start).
PARALLEL_MIN_ROWS = 20_000


@dataclass
class Keyed:
    """Per row of the input, in order."""

    keys: pl.DataFrame  # row, exchanges, asst_chars, tier_rank, origin (dedup.keys.conversation_keys, no texts)
    exact_hash: pl.Series
    prompt_hash: pl.Series
    first_hash: pl.Series | None  # dedup.exact with first_exchange only
    sig: np.ndarray | None  # MinHash of each row's near_text (n x num_perm), when near or write_index
    opening_rows: np.ndarray  # rows with more than one exchange (ascending), when near and first_exchange
    opening_sig: np.ndarray | None  # MinHash of their first exchange (first_near)


def _signature_kw(cfg: DedupConfig) -> dict:
    return {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed, "scheme": cfg.scheme, "hash": cfg.hash}


def key_frame(df: pl.DataFrame, cfg: DedupConfig) -> Keyed:
    """Keys, hashes and signatures of every row of `df`, here."""
    keys = conversation_keys(df)
    exact_hash = hash_texts(keys["exact_text"])
    prompt_hash = hash_texts(keys["prompt_text"])
    first_hash = hash_texts(keys["first_text"]) if cfg.exact and cfg.first_exchange else None
    sig = opening_sig = None
    opening_rows = np.zeros(0, dtype=np.int64)
    if cfg.near or cfg.write_index:
        kw = _signature_kw(cfg)
        sig = text_signatures(keys["near_text"], **kw)
        if cfg.near and cfg.first_exchange:
            opening_rows = np.flatnonzero(keys["exchanges"].to_numpy() > 1)
            opening_sig = text_signatures(keys["first_near"].gather(opening_rows), **kw)
    return Keyed(keys.select("row", "exchanges", "asst_chars", "tier_rank", "origin"), exact_hash, prompt_hash,
                 first_hash, sig, opening_rows, opening_sig)


def concat_keyed(parts: list[Keyed]) -> Keyed:
    """The Keyed of consecutive batches, as one (rows renumbered)."""
    offsets = np.cumsum([0] + [p.keys.height for p in parts])
    keys = pl.concat([p.keys.with_columns(pl.col("row") + int(o)) for p, o in zip(parts, offsets, strict=False)])
    first = parts[0]

    def stack(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.vstack(arrays)

    return Keyed(
        keys.with_columns(pl.col("row").cast(pl.UInt32)),
        pl.concat([p.exact_hash for p in parts]),
        pl.concat([p.prompt_hash for p in parts]),
        None if first.first_hash is None else pl.concat([p.first_hash for p in parts]),
        stack([p.sig for p in parts]),
        np.concatenate([p.opening_rows + o for p, o in zip(parts, offsets, strict=False)]),
        stack([p.opening_sig for p in parts]),
    )


def _keyed_task(args: tuple[str, int, int, str]) -> Keyed:
    path, offset, length, cfg_json = args
    from pipeline.core.parts import read_part

    return key_frame(read_part(path, list(KEY_INPUT), offset, length), DedupConfig.model_validate_json(cfg_json))


def keyed_parts(in_paths: list[Path], df: pl.DataFrame, cfg: DedupConfig) -> Keyed:
    """`key_frame` of `df`, the concatenation of the parts `in_paths` (read_parts): over
    `dedup.workers` processes in batches of `dedup.batch_rows` rows when it is large, each batch
    read from its part by the worker."""
    from pipeline.core.parts import part_rows
    from pipeline.core.procpool import pool_map

    if cfg.workers <= 1 or df.height < PARALLEL_MIN_ROWS:
        return key_frame(df, cfg)
    tasks = []
    cfg_json = cfg.model_dump_json()
    for p in in_paths:
        rows = part_rows(p)
        tasks += [(str(p), off, cfg.batch_rows, cfg_json) for off in range(0, rows, cfg.batch_rows)]
    keyed = concat_keyed(pool_map(_keyed_task, tasks, cfg.workers, what="dedup: keys and signatures"))
    if keyed.keys.height != df.height or not keyed.keys["origin"].equals(df["origin"]):
        raise AssertionError("dedup: the keyed batches are not the rows of the input parts, in order")
    return keyed
