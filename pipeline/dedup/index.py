"""The dedup index across runs: what a run kept (exact and prompt hashes, MinHash signatures, their
conversation_ids), written to <run_dir>/dedup_index/ and read back through `dedup.prior_indexes`,
so that a later delivery does not re-add what an earlier run already kept."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.rundir import atomic_write_json, atomic_write_parquet
from schemas.config_curation import DedupConfig

INDEX_DIR = "dedup_index"


@dataclass
class PriorIndex:
    """What earlier runs kept: exact and prompt hashes, MinHash signatures, their conversation_ids."""

    exact: pl.DataFrame  # exact_hash, conversation_id
    prompt: pl.DataFrame  # prompt_hash, conversation_id
    sig_ids: list[str] = field(default_factory=list)
    signatures: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint32))

    @classmethod
    def empty(cls, num_perm: int = 128) -> PriorIndex:
        """An index that holds nothing."""
        return cls(
            exact=pl.DataFrame(schema={"exact_hash": pl.String, "conversation_id": pl.String}),
            prompt=pl.DataFrame(schema={"prompt_hash": pl.String, "conversation_id": pl.String}),
            signatures=np.zeros((0, num_perm), dtype=np.uint32),
        )

    def plus(self, exact_hash: pl.Series, prompt_hash: pl.Series, ids: pl.Series, signatures: np.ndarray) -> PriorIndex:
        """This index and the conversations `ids` with their hashes and signatures, after it."""
        return PriorIndex(
            exact=pl.concat([self.exact, pl.DataFrame({"exact_hash": exact_hash, "conversation_id": ids})]),
            prompt=pl.concat([self.prompt, pl.DataFrame({"prompt_hash": prompt_hash, "conversation_id": ids})]),
            sig_ids=self.sig_ids + ids.to_list(),
            signatures=np.vstack([self.signatures, signatures]) if len(self.sig_ids) else signatures,
        )


def index_meta(cfg: DedupConfig) -> dict:
    """The settings signatures depend on: indexes built with other values are not comparable."""
    return {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed, "scheme": cfg.scheme, "hash": cfg.hash}


def load_prior(paths: list[Path], cfg: DedupConfig) -> PriorIndex:
    """Read and merge earlier runs' indexes (a dedup_index/ dir or a run dir that holds one)."""
    prior = PriorIndex.empty(cfg.num_perm)
    for p in paths:
        d = Path(p)
        if (d / INDEX_DIR).is_dir():
            d = d / INDEX_DIR
        if not (d / "meta.json").is_file():
            raise FileNotFoundError(
                f"dedup.prior_indexes: {p} holds no dedup index (expected {d / 'meta.json'}); point it at an "
                f"earlier run directory or its {INDEX_DIR}/ folder"
            )
        meta = json.loads((d / "meta.json").read_text())
        if meta != index_meta(cfg):
            raise ValueError(
                f"dedup.prior_indexes: {d} was built with {meta}, this run uses {index_meta(cfg)}; "
                "signatures are comparable only with equal ngram, num_perm, seed, scheme and hash"
            )
        sig = pl.read_parquet(d / "signatures.parquet")
        prior = PriorIndex(
            exact=pl.concat([prior.exact, pl.read_parquet(d / "exact.parquet")]).unique(maintain_order=True),
            prompt=pl.concat([prior.prompt, pl.read_parquet(d / "prompt.parquet")]).unique(maintain_order=True),
            sig_ids=prior.sig_ids + sig["conversation_id"].to_list(),
            signatures=np.vstack([prior.signatures, np.stack(sig["sig"].to_numpy()).astype(np.uint32)])
            if sig.height
            else prior.signatures,
        )
    return prior


def write_index(index: PriorIndex, out_dir: Path, cfg: DedupConfig) -> Path:
    """Persist an index (prior + kept) for later runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(index.exact, out_dir / "exact.parquet")
    atomic_write_parquet(index.prompt, out_dir / "prompt.parquet")
    sig = pl.DataFrame(
        # a 2-D array gives the fixed-size Array(UInt32, num_perm) column a list of its rows gave, ~100x faster
        {"conversation_id": index.sig_ids, "sig": pl.Series(np.ascontiguousarray(index.signatures, dtype=np.uint32))}
    ) if len(index.sig_ids) else pl.DataFrame(schema={"conversation_id": pl.String, "sig": pl.List(pl.UInt32)})
    atomic_write_parquet(sig, out_dir / "signatures.parquet")
    atomic_write_json(out_dir / "meta.json", index_meta(cfg))
    return out_dir
