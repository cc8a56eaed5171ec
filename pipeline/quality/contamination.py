"""Benchmark contamination: which user turns hold a configured benchmark's questions.

Both sides are normalised (pipeline.core.textnorm.normalize_texts) and read as word sequences (`\\w+`).
A user turn is contaminated by an item when
- **exact**: its word sequence is the item's, whatever the length (`What is the capital of France?`);
- **contained** (items shorter than `ngram` words and at least `min_words`, the shorter n): all the
  item's words appear in it in order and make up at least `short_min_share` of it, so a question
  lightly wrapped ("Answer briefly: …") is found and a generic stem inside a longer question is not;
- **n-gram** (longer items): it shares word n-grams (default 13, as in GPT-3's and Llama's
  decontamination) with the item covering at least `min_coverage` of the item's words. An n-gram
  found in more than `max_items_per_ngram` items of one benchmark is its boilerplate (a shared
  instruction) and is not matched.

Hashes are 64-bit (polars' fast hash: the index is built in the process that uses it, so the values
need not be stable across processes or versions). The index also says, per benchmark, how many
items each rule covers and how many could not be checked at all (no words). The filter itself is
quality/filters/contamination.py.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.textnorm import fold_ngrams, normalize_texts, owners, word_hashes
from schemas.config_curation import BenchmarkFile, ContaminationConfig


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read as configured; the message says which and how to fix it."""


def read_benchmark(b: BenchmarkFile) -> pl.DataFrame:
    """The benchmark's items as a frame with `item` (id or row index) and `text`; a list-valued
    field gives one item per element (`<id>/<n>`)."""
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
    out = df.select(item.alias("item"), pl.col(b.field).alias("text"))
    if isinstance(out.schema["text"], pl.List):
        out = out.explode("text").with_columns(
            pl.format("{}/{}", "item", pl.int_range(pl.len()).over("item")).alias("item")
        )
    return out.with_columns(pl.col("text").cast(pl.String))


def word_keys(texts: pl.Series) -> pl.Series:
    """A 64-bit key of each normalised text's word sequence (`\\w+` tokens; equal sequences, equal keys)."""
    return texts.str.replace_all(r"\W+", " ").str.strip_chars(" ").hash(seed=0x5EED)


@dataclass
class BenchmarkIndex:
    """What the matching needs of every configured benchmark, and what it covers."""

    ngram: int
    ngram_hashes: np.ndarray  # sorted unique n-gram hashes of the long items (boilerplate removed)
    ngram_items: pl.DataFrame  # hash, item (index into `names`): which long items hold each n-gram
    names: list[tuple[str, str, int]]  # item index -> (benchmark, item id, words)
    exact: dict[int, tuple[str, str]]  # word-sequence key -> (benchmark, item), every item
    short: dict[int, tuple[np.ndarray, dict[int, tuple[str, str]]]]  # k words -> (sorted hashes, owner)
    min_coverage: float = 0.0
    items: dict[str, int] = field(default_factory=dict)  # benchmark -> items read
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)  # benchmark -> rule -> items


def build_index(cfg: ContaminationConfig) -> BenchmarkIndex:
    """Read every configured benchmark and index its questions (BenchmarkError on a bad file)."""
    long_h: list[np.ndarray] = []
    long_pairs: list[pl.DataFrame] = []
    names: list[tuple[str, str, int]] = []
    exact: dict[int, tuple[str, str]] = {}
    short: dict[int, tuple[list[np.ndarray], dict[int, tuple[str, str]]]] = {}
    items: dict[str, int] = {}
    coverage: dict[str, dict[str, int]] = {}
    for b in cfg.benchmarks:
        bench = read_benchmark(b)
        items[b.name] = bench.height
        texts = normalize_texts(bench["text"])
        ids = bench["item"].to_list()
        fh, lens, _ = word_hashes(texts, 64, stable=False)
        keys = word_keys(texts).to_list()
        for key, n, item in zip(keys, lens.tolist(), ids, strict=True):
            if n:
                exact.setdefault(key, (b.name, item))
        is_long = lens >= cfg.ngram
        h, doc, _ = fold_ngrams(fh, lens, cfg.ngram, short=False)
        # Boilerplate: n-grams that many items of this benchmark share.
        pairs = np.unique(np.stack([h, doc.astype(np.uint64)]), axis=1) if len(h) else np.zeros((2, 0), np.uint64)
        uh, per = np.unique(pairs[0], return_counts=True)
        common = uh[per > cfg.max_items_per_ngram]
        keep = ~np.isin(h, common)
        base = len(names)
        names += [(b.name, item, int(n)) for item, n in zip(ids, lens.tolist(), strict=True)]
        long_pairs.append(pl.DataFrame({"hash": h[keep], "item": doc[keep] + base}).unique())
        long_h.append(h[keep])
        n_common_items = int(len(np.unique(doc[~keep]))) if (~keep).any() else 0
        contained = (lens >= cfg.min_words) & ~is_long
        owner = owners(lens)
        for k in sorted({int(x) for x in lens[contained]}):
            sel = np.flatnonzero(lens == k)
            sub_fh = fh[(lens == k)[owner]]
            hk, dk, _ = fold_ngrams(sub_fh, lens[sel], k, short=False)
            hashes, own = short.setdefault(k, ([], {}))
            hashes.append(hk)
            for hv, d in zip(hk.tolist(), dk.tolist(), strict=True):
                own.setdefault(hv, (b.name, ids[sel[d]]))
        coverage[b.name] = {
            "items": bench.height,
            "checked": int((lens > 0).sum()),
            "ngram": int(is_long.sum()),
            "contained": int(contained.sum()),
            "exact_only": int(((lens > 0) & (lens < min(cfg.min_words, cfg.ngram))).sum()),
            "unchecked": int((lens == 0).sum()),
            "boilerplate_items": n_common_items,
        }
    return BenchmarkIndex(
        ngram=cfg.ngram,
        ngram_hashes=np.unique(np.concatenate(long_h)) if long_h else np.zeros(0, np.uint64),
        ngram_items=pl.concat(long_pairs) if long_pairs else pl.DataFrame(schema={"hash": pl.UInt64, "item": pl.Int64}),
        names=names, exact=exact, min_coverage=cfg.min_coverage,
        short={k: (np.unique(np.concatenate(h)), own) for k, (h, own) in short.items()},
        items=items, coverage=coverage,
    )


def benchmark_index(cfg: ContaminationConfig) -> BenchmarkIndex:
    """build_index, once per process and configuration: every part a worker filters reuses it."""
    return _cached_index(cfg.model_dump_json())


@lru_cache(maxsize=4)
def _cached_index(cfg_json: str) -> BenchmarkIndex:
    return build_index(ContaminationConfig.model_validate_json(cfg_json))


@dataclass
class Hit:
    """A contaminated text: the benchmark, the item, how it matched and (for n-grams) how many."""

    benchmark: str
    item: str
    how: str  # "exact", "contained" or "ngram"
    count: int = 1
    coverage: float = 1.0  # share of the item's words found in the text


def find_contaminated(texts: pl.Series, index: BenchmarkIndex, short_min_share: float = 0.5) -> list[Hit | None]:
    """For each normalised (textnorm.normalize_texts) user text: its first Hit, or None."""
    out: list[Hit | None] = [None] * texts.len()
    for i, key in enumerate(word_keys(texts).to_list()):
        if key in index.exact:
            out[i] = Hit(*index.exact[key], "exact")
    fh, lens, _ = word_hashes(texts, 64, stable=False)
    owner = owners(lens)
    for k, (hashes, own) in index.short.items():
        docs = (lens > k) & (lens * short_min_share <= k)
        if not docs.any():
            continue
        h, d, _ = fold_ngrams(fh[docs[owner]], lens[docs], k, short=False)
        hit = np.isin(h, hashes)
        rows = np.flatnonzero(docs)
        for hv, di in zip(h[hit].tolist(), d[hit].tolist(), strict=True):
            r = int(rows[di])
            if out[r] is None:
                out[r] = Hit(*own[hv], "contained")
    if len(index.ngram_hashes):
        h, doc, _ = fold_ngrams(fh, lens, index.ngram, short=False)
        hit = np.isin(h, index.ngram_hashes)
        if hit.any():
            # Per (text, item): distinct shared n-grams, and the share of the item's words they cover
            # (k n-grams in a run cover k + n - 1 words).
            shared = (
                pl.DataFrame({"doc": doc[hit], "hash": h[hit]}).unique()
                .join(index.ngram_items, on="hash")
                .group_by("doc", "item").len("k")
            )
            words = np.array([index.names[i][2] for i in shared["item"].to_list()], dtype=np.float64)
            shared = (
                shared.with_columns(pl.Series("words", words))
                .with_columns(((pl.col("k") + index.ngram - 1) / pl.col("words")).clip(upper_bound=1.0)
                              .alias("coverage"))
                .filter(pl.col("coverage") >= index.min_coverage)
                .sort(["doc", "coverage", "item"], descending=[False, True, False])
                .unique("doc", keep="first", maintain_order=True)
            )
            for d, item, k, cov in shared.select("doc", "item", "k", "coverage").iter_rows():
                if out[d] is None:
                    bench, name, _ = index.names[item]
                    out[d] = Hit(bench, name, "ngram", k, cov)
    return out
