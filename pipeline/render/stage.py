"""The render + tokenize + pack stage: curated conversations in, Parquet shards out.

`run_tokenize(run_dir, cfg)` reads `curated/*.parquet`, renders and tokenizes every conversation once
(pipeline.render.masks), drops over-long or unsupervised ones with a ledger row, self-checks a sample, splits
train/validation by conversation hash, repeats train conversations `repeat` times, packs rows
(pipeline.render.packing) and writes `shards/{train,val}-NNNNN.parquet`, `tokenizer/`, `ledger/tokenize.parquet`
and `work/tokenize/stats.json`. Same input and config give byte-identical shards.

`count_tokens(df, run_dir, cfg)` gives the rendered length of each conversation with the tokenizer the
run will use, for the mix stage's token caps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from tokenizers import Tokenizer

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_table,
    claim_run_dir,
    remove_outputs,
)
from pipeline.render.masks import (
    Encoded,
    MaskOptions,
    SelfCheckError,
    check_conversation,
    encode_conversations,
)
from pipeline.render.packing import best_fit_decreasing
from pipeline.render.templates import ChatTemplate, load_template
from pipeline.render.tokenizer import (
    cached_bpe,
    ensure_special_tokens,
    load_tokenizer,
    save_tokenizer_dir,
    tokenizer_hash,
    train_key,
)

SHARD_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.uint8())),
        ("seq_lens", pa.list_(pa.int32())),
        ("conversation_ids", pa.list_(pa.string())),
    ]
)
_HIST_EDGES = [0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


class NoCuratedData(ValueError):
    """curated/ holds no conversation: nothing to tokenize."""


# --- tokenizer selection ---------------------------------------------------------------------------
def _cache_dir(run_dir: Path, cfg: Any) -> Path:
    return cfg.tokenizer.cache_dir or RunDir.of(run_dir).stage_dir("tokenize") / "cache"


def _pin_paths(run_dir: Path) -> tuple[Path, Path]:
    d = RunDir.of(run_dir).stage_dir("tokenize")
    return d / "tokenizer_pin.json", d / "tokenizer_pin_ids.parquet"


def _settings_key(template: ChatTemplate, cfg: Any) -> str:
    return train_key([], template, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)


def resolve_tokenizer(
    run_dir: Path, cfg: Any, template: ChatTemplate, texts: Callable[[], list[str]], conversation_ids: pl.Series,
    *, pin: bool = False,
) -> tuple[Tokenizer, dict]:
    """The run's tokenizer: the given one, or the embedded BPE (trained on `texts()`, cached).

    count_tokens (pin=True) records which tokenizer it trained and on which conversations; a later
    run_tokenize whose conversations are all among those reuses it, so the token counts the mix stage
    used are exactly the counts of the shards."""
    info: dict[str, Any] = {}
    if cfg.tokenizer.path is not None:
        tok = load_tokenizer(cfg.tokenizer.path)
        info.update(kind="given", path=str(cfg.tokenizer.path))
    else:
        pin_json, pin_ids = _pin_paths(run_dir)
        settings = _settings_key(template, cfg)
        tok = None
        if not pin and pin_json.exists() and pin_ids.exists():
            meta = json.loads(pin_json.read_text())
            cached = _cache_dir(run_dir, cfg) / meta["key"] / "tokenizer.json"
            pinned = pl.read_parquet(pin_ids).to_series()
            if meta.get("settings") == settings and cached.exists() and conversation_ids.is_in(pinned).all():
                tok = Tokenizer.from_file(str(cached))
                info.update(kind="trained", key=meta["key"], cache_hit=True, trained_on="mix candidates")
        if tok is None:
            corpus = texts()
            tok, key, hit = cached_bpe(
                corpus, template, _cache_dir(run_dir, cfg), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency
            )
            info.update(kind="trained", key=key, cache_hit=hit, trained_on=f"{len(corpus)} conversations")
            if pin:
                atomic_write_parquet(conversation_ids.unique().sort().to_frame("conversation_id"), pin_ids)
                atomic_write_json(pin_json, {"key": key, "settings": settings})
    info["added_special_tokens"] = ensure_special_tokens(tok, template)
    return tok, info


def _messages(df: pl.DataFrame) -> list[list[dict[str, str]]]:
    return df.get_column("messages").to_list()


def _template(cfg: Any) -> ChatTemplate:
    return load_template(cfg.template.name, cfg.tokenizer.path)


def _mask_options(cfg: Any) -> MaskOptions:
    return MaskOptions(cfg.template.train_on, cfg.template.train_on_prompt, cfg.pack.max_seq_len, cfg.pack.overflow)


def count_tokens(df: pl.DataFrame, run_dir: str | Path, cfg: Any) -> pl.Series:
    """Rendered tokens per conversation of a canonical frame (whole conversation, before any truncation).

    Trains (and caches, and pins for run_tokenize) the embedded tokenizer on `df` if none is given."""
    run_dir = Path(run_dir)
    template = _template(cfg)
    msgs = _messages(df)
    if not msgs:
        return pl.Series("n_tokens", [], dtype=pl.Int64)
    texts = [template.render(m).text for m in msgs]
    tok, _ = resolve_tokenizer(run_dir, cfg, template, lambda: texts, df.get_column("conversation_id"), pin=True)
    counts: list[int] = []
    bs = cfg.tokenizer.batch_size
    for i in range(0, len(texts), bs):
        counts.extend(len(e.ids) for e in tok.encode_batch(texts[i : i + bs], add_special_tokens=False))
    return pl.Series("n_tokens", counts, dtype=pl.Int64)


# --- split, repeat, rows ---------------------------------------------------------------------------
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
    """Write rows as Parquet shards (temporary name, then rename); returns one entry per shard."""
    entries = []
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
        path = atomic_write_table(
            table, out_dir / f"{split}-{s:05d}.parquet", compression="zstd", write_statistics=False
        )
        entries.append(
            {"path": f"shards/{path.name}", "split": split, "rows": len(chunk), "tokens": int(row_tokens.sum())}
        )
    return entries


# --- statistics --------------------------------------------------------------------------------------
def _histogram(values: Sequence[int]) -> dict[str, int]:
    counts, _ = np.histogram(np.asarray(values, dtype=np.int64), bins=[*_HIST_EDGES, np.iinfo(np.int64).max])
    return {f"{lo}-{hi - 1}" if i + 1 < len(_HIST_EDGES) else f">={lo}": int(c) for i, (lo, hi, c) in enumerate(
        zip(_HIST_EDGES, [*_HIST_EDGES[1:], 0], counts, strict=True))}


def _group_stats(frame: pl.DataFrame, key: str) -> dict[str, dict[str, int]]:
    g = frame.group_by(key).agg(
        pl.len().alias("segments"), pl.col("tokens").sum(), pl.col("supervised").sum()
    ).sort(key)
    return {r[key]: {k: int(r[k]) for k in ("segments", "tokens", "supervised")} for r in g.iter_rows(named=True)}


# --- the stage ------------------------------------------------------------------------------------------
def read_curated(run_dir: Path) -> pl.DataFrame:
    """curated/*.parquet with a `repeat` column (1 where absent), in a deterministic order."""
    parts = sorted(RunDir.of(run_dir).curated.glob("*.parquet"))
    if not parts:
        raise NoCuratedData(f"{RunDir.of(run_dir).curated}: no curated/*.parquet to tokenize (run the curation first)")
    frames = []
    for p in parts:
        f = pl.read_parquet(p)
        cols = ["conversation_id", "origin", "source", "tier", "messages"]
        f = f.select(*cols, (pl.col("repeat") if "repeat" in f.columns else pl.lit(1)).cast(pl.Int32).alias("repeat"))
        frames.append(f)
    return pl.concat(frames).sort("conversation_id", "origin")


def _self_check(
    df: pl.DataFrame, enc: Encoded, template: ChatTemplate, tok: Tokenizer, opts: MaskOptions, cfg: Any,
) -> int:
    kept = [i for i, r in enumerate(enc.reasons) if r is None]
    n = len(kept) if cfg.pack.self_check_all else min(cfg.pack.self_check_sample, len(kept))
    pick = kept if n == len(kept) else sorted(np.random.default_rng(cfg.seed).choice(kept, n, replace=False).tolist())
    cids = df.get_column("conversation_id")
    msgs = df.get_column("messages")
    for b0 in range(0, len(pick), cfg.tokenizer.batch_size):
        batch = pick[b0 : b0 + cfg.tokenizer.batch_size]
        convs = [msgs[i].to_list() for i in batch]
        encs = tok.encode_batch([template.render(c).text for c in convs], add_special_tokens=False)
        for i, conv, e in zip(batch, convs, encs, strict=True):
            check_conversation(cids[i], conv, enc.ids[i], enc.masks[i], template, tok, opts, enc=e)
    return len(pick)


def run_tokenize(run_dir: str | Path, cfg: Any) -> dict:
    """Tokenize curated/ into shards/, tokenizer/, ledger/tokenize.parquet and work/tokenize/stats.json."""
    run_dir = Path(run_dir)
    rd = claim_run_dir(run_dir)
    df = read_curated(run_dir)
    template = _template(cfg)
    opts = _mask_options(cfg)
    msgs = _messages(df)
    tok, tok_info = resolve_tokenizer(
        run_dir, cfg, template, lambda: [template.render(m).text for m in msgs], df.get_column("conversation_id")
    )
    enc = encode_conversations(msgs, template, tok, opts, cfg.tokenizer.batch_size)
    checked = _self_check(df, enc, template, tok, opts, cfg)

    reasons = pl.Series("reason", enc.reasons, dtype=pl.String)
    dropped = df.with_columns(reasons, pl.Series("detail", enc.details, dtype=pl.String)).filter(
        pl.col("reason").is_not_null()
    )
    write_ledger_part(run_dir, "tokenize", ledger_rows(
        dropped, stage="tokenize", outcome="dropped", reason=pl.col("reason"), detail=pl.col("detail")
    ))

    kept = np.flatnonzero(reasons.is_null().to_numpy())
    cids = df.get_column("conversation_id").to_list()
    is_val = val_mask([cids[i] for i in kept], cfg.pack.val_fraction, cfg.seed)
    repeats = df.get_column("repeat").to_numpy()
    train_items = [int(i) for i, v in zip(kept, is_val, strict=True) if not v for _ in range(max(1, repeats[i]))]
    val_items = [int(i) for i, v in zip(kept, is_val, strict=True) if v]

    shards_dir = rd.shards
    shards_dir.mkdir(parents=True, exist_ok=True)
    # a re-run must not leave shards of a bigger earlier run; only our own names, only in a run dir
    remove_outputs(shards_dir, "train-[0-9][0-9][0-9][0-9][0-9].parquet")
    remove_outputs(shards_dir, "val-[0-9][0-9][0-9][0-9][0-9].parquet")
    entries, packing = [], {}
    cap = cfg.pack.max_seq_len
    for split, items, seed in (("train", train_items, cfg.seed), ("val", val_items, cfg.seed + 1)):
        lengths = np.array([len(enc.ids[i]) for i in items], dtype=np.int64)
        local = _rows(lengths, cap, cfg.pack.packing, seed)
        rows = [[items[j] for j in row] for row in local]
        entries += _write_shards(shards_dir, split, rows, enc.ids, enc.masks, cids, cfg.pack.rows_per_shard)
        real = int(lengths.sum())
        packing[split] = {
            "rows": len(rows), "segments": len(items), "real_tokens": real, "row_capacity": len(rows) * cap,
            "efficiency": real / (len(rows) * cap) if rows else 0.0,
        }

    save_tokenizer_dir(tok, template, rd.tokenizer, cap)
    stats = _stats(df, enc, train_items, val_items, template, tok, tok_info, packing, entries, checked, cfg)
    atomic_write_json(rd.stage_dir("tokenize") / "stats.json", stats)
    return stats


def _stats(
    df: pl.DataFrame, enc: Encoded, train_items: list[int], val_items: list[int], template: ChatTemplate,
    tok: Tokenizer, tok_info: dict, packing: dict, entries: list[dict], checked: int, cfg: Any,
) -> dict:
    sup = [int(m.sum()) for m in enc.masks]
    ntok = [len(i) for i in enc.ids]
    reasons = [r for r in enc.reasons if r]
    trunc = [i for i, t in enumerate(enc.truncated) if t]
    train = df[train_items].select("source", "tier").with_columns(
        pl.Series("tokens", [ntok[i] for i in train_items], dtype=pl.Int64),
        pl.Series("supervised", [sup[i] for i in train_items], dtype=pl.Int64),
    )
    train_tokens = sum(ntok[i] for i in train_items)
    train_sup = sum(sup[i] for i in train_items)
    return {
        "template": template.name,
        "tokenizer": {**tok_info, "hash": tokenizer_hash(tok), "vocab_size": tok.get_vocab_size()},
        "conversations": {
            "read": df.height,
            "written": len(set(train_items)) + len(val_items),
            "train_segments": len(train_items),
            "val": len(val_items),
            "dropped": {r: reasons.count(r) for r in sorted(set(reasons))},
            "truncated": len(trunc),
        },
        "truncation": {
            "conversations": len(trunc),
            "tokens_lost": sum(enc.full_tokens[i] - ntok[i] for i in trunc),
            "supervised_tokens_lost": sum(enc.full_supervised[i] - sup[i] for i in trunc),
        },
        "dropped_tokens": {
            "tokens": sum(t for t, r in zip(enc.full_tokens, enc.reasons, strict=True) if r),
            "supervised_tokens": sum(s for s, r in zip(enc.full_supervised, enc.reasons, strict=True) if r),
        },
        "tokens": {
            "train": train_tokens,
            "train_supervised": train_sup,
            "val": sum(ntok[i] for i in val_items),
            "val_supervised": sum(sup[i] for i in val_items),
            "supervised_share": train_sup / train_tokens if train_tokens else 0.0,
        },
        "length_histogram": _histogram(enc.full_tokens),
        "supervised_histogram": _histogram(enc.full_supervised),
        "packing": packing,
        "train_by_source": _group_stats(train, "source"),
        "train_by_tier": _group_stats(train, "tier"),
        "self_check": {"checked": checked, "passed": checked},
        "shards": entries,
        "max_seq_len": cfg.pack.max_seq_len,
    }


__all__ = ["NoCuratedData", "SelfCheckError", "count_tokens", "run_tokenize", "val_mask"]
