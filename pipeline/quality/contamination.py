"""Benchmark contamination: word n-gram overlap (default 13 words, as in GPT-3's and Llama's
decontamination) between a conversation's user turns and the questions of configured benchmarks.

Both sides are normalised (pipeline.core.textnorm.normalize_texts) and cut into word n-grams hashed
to 64 bits (textnorm.fold_word_ngrams, with polars' fast hash: the index is built in the process that
uses it, so the values need not be stable across processes or versions); a conversation is
contaminated when one of its n-gram hashes is one of a benchmark's. Questions shorter than n words
(but at least `min_words`) are matched whole. The filter itself is quality/filters/contamination.py.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.textnorm import fold_word_ngrams, normalize_texts
from schemas.config_curation import BenchmarkFile, ContaminationConfig


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read as configured; the message says which and how to fix it."""


def read_benchmark(b: BenchmarkFile) -> pl.DataFrame:
    """The benchmark's items as a frame with `item` (id or row index) and `text`."""
    path = Path(b.path)
    name = path.name.lower()
    if not path.is_file():
        raise BenchmarkError(f"quality.contamination.benchmarks[{b.name}]: file {path} not found")
    try:
        if name.endswith(".jsonl.gz") or name.endswith(".json.gz"):
            with gzip.open(path, "rb") as f:
                df = pl.read_ndjson(io.BytesIO(f.read()), infer_schema_length=None)
        elif name.endswith(".jsonl"):
            df = pl.read_ndjson(path, infer_schema_length=None)
        elif name.endswith(".json"):
            df = pl.read_json(path)
        elif name.endswith(".csv"):
            df = pl.read_csv(path, infer_schema_length=0)
        elif name.endswith(".parquet"):
            df = pl.read_parquet(path)
        else:
            raise BenchmarkError(
                f"quality.contamination.benchmarks[{b.name}]: {path} is not .jsonl, .jsonl.gz, .json, .csv "
                "or .parquet"
            )
    except BenchmarkError:
        raise
    except Exception as e:  # polars raises several error types for malformed files
        raise BenchmarkError(f"quality.contamination.benchmarks[{b.name}]: cannot read {path}: {e}") from None
    for col in [b.field] + ([b.id_field] if b.id_field else []):
        if col not in df.columns:
            raise BenchmarkError(
                f"quality.contamination.benchmarks[{b.name}]: {path} has no field {col!r}; "
                f"its fields are {df.columns}"
            )
    item = pl.col(b.id_field).cast(pl.String) if b.id_field else pl.int_range(pl.len()).cast(pl.String)
    return df.select(item.alias("item"), pl.col(b.field).cast(pl.String).alias("text"))


@dataclass
class BenchmarkIndex:
    """n-gram hashes of every benchmark question, per n-gram length, with where each came from."""

    hashes: dict[int, np.ndarray]  # n -> sorted unique hashes
    owner: dict[int, dict[int, tuple[str, str]]]  # n -> hash -> (benchmark, item)
    items: dict[str, int]  # benchmark -> items indexed


def build_index(cfg: ContaminationConfig) -> BenchmarkIndex:
    """Read every configured benchmark and index its questions' n-grams (BenchmarkError on a bad file)."""
    hashes: dict[int, list[np.ndarray]] = {}
    owner: dict[int, dict[int, tuple[str, str]]] = {}
    items: dict[str, int] = {}
    for b in cfg.benchmarks:
        bench = read_benchmark(b)
        items[b.name] = bench.height
        texts = normalize_texts(bench["text"])
        nwords = texts.str.count_matches(r"\w+").to_numpy()
        item_ids = bench["item"].to_list()
        long_h, long_doc = fold_word_ngrams(texts, cfg.ngram, bits=64, short=False, stable=False)
        groups = [(cfg.ngram, long_h, long_doc)]
        for k in sorted({int(x) for x in nwords if cfg.min_words <= x < cfg.ngram}):
            sel = np.flatnonzero(nwords == k)
            h, d = fold_word_ngrams(texts.gather(sel), k, bits=64, short=False, stable=False)
            groups.append((k, h, sel[d]))
        for k, h, d in groups:
            hashes.setdefault(k, []).append(h)
            own = owner.setdefault(k, {})
            for hv, di in zip(h.tolist(), d.tolist(), strict=True):
                own.setdefault(hv, (b.name, item_ids[di]))
    return BenchmarkIndex(
        hashes={k: np.unique(np.concatenate(v)) for k, v in hashes.items()}, owner=owner, items=items
    )


def benchmark_index(cfg: ContaminationConfig) -> BenchmarkIndex:
    """build_index, once per process and configuration: every part a worker filters reuses it."""
    return _cached_index(cfg.model_dump_json())


@lru_cache(maxsize=4)
def _cached_index(cfg_json: str) -> BenchmarkIndex:
    return build_index(ContaminationConfig.model_validate_json(cfg_json))


def find_contaminated(texts: pl.Series, index: BenchmarkIndex) -> list[tuple[str, str, int] | None]:
    """For each normalised (textnorm.normalize_texts) user text: (benchmark, item, matching
    n-grams) of its first hit, or None."""
    out: list[tuple[str, str, int] | None] = [None] * texts.len()
    for k, bench_hashes in index.hashes.items():
        h, doc = fold_word_ngrams(texts, k, bits=64, short=False, stable=False)
        hit = np.isin(h, bench_hashes)
        if not hit.any():
            continue
        hit_docs, first, counts = np.unique(doc[hit], return_index=True, return_counts=True)
        first_hash = h[hit][first]
        for d, fh, c in zip(hit_docs.tolist(), first_hash.tolist(), counts.tolist(), strict=True):
            if out[d] is None:
                bench, item = index.owner[k][fh]
                out[d] = (bench, item, c)
    return out
