"""The encode stage: every conversation that passed quality, rendered and tokenized exactly once.

`run_encode(in_paths, run_dir, cfg)` renders each conversation with the chat template (text and the
character spans of its turns), takes the run's tokenizer (the given one, or the embedded BPE trained
on exactly these rendered texts and cached), encodes every text once (`encode_batch`), derives the
loss mask from the spans (pipeline.render.masks) and applies the overflow policy. It writes
`tokenizer/`, the encodings (`work/encode/part-*.arrow`, Arrow IPC: ids, mask and exact token counts,
one row per kept conversation), `ledger/tokenize.parquet` for the conversations it drops (too long, nothing
supervised, a template error: ledger stage `tokenize`) and `work/encode/stats.json`.

The mix stage then selects on these exact token counts (truncation included), and the pack stage
writes the selected encodings into shards: planned and written token shares are the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from tokenizers import Tokenizer

from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.core.parts import read_part, read_parts
from pipeline.core.procpool import Actors
from pipeline.core.rundir import RunDir, atomic_write_ipc, claim_run_dir, remove_outputs
from pipeline.core.stage import StageResult, timed
from pipeline.render.masks import (
    TEMPLATE_ERROR,
    Encoded,
    MaskOptions,
    check_conversation,
    encode_conversations,
    render_all,
)
from pipeline.render.reasoning import has_reasoning
from pipeline.render.templates import ChatTemplate, Rendered, TemplateError, load_template
from pipeline.render.tokenizer import (
    cached_bpe,
    ensure_special_tokens,
    load_tokenizer,
    save_tokenizer_dir,
    tokenizer_hash,
)

PART_ROWS = 50_000
ENCODED_SCHEMA = pa.schema([
    ("conversation_id", pa.string()),
    ("origin", pa.string()),
    ("tokens", pa.int64()),  # written tokens (after truncation)
    ("supervised", pa.int64()),  # targets among them
    ("truncated", pa.bool_()),
    ("input_ids", pa.list_(pa.int32())),
    ("loss_mask", pa.list_(pa.uint8())),
    ("segments", pa.list_(pa.int32())),  # lengths of the training examples in input_ids (pipeline.render.reasoning)
])
_HIST_EDGES = [0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


@dataclass
class EncodeResult(StageResult):
    """What the encode stage did: the tokenizer it used, what truncation cost, the self-check."""

    template: str = ""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    #: conversations truncated at an assistant-turn boundary, and the tokens that cost
    truncation: dict[str, int] = field(default_factory=dict)
    #: tokens (and supervised tokens) of the conversations dropped here
    dropped_tokens: dict[str, int] = field(default_factory=dict)
    length_histogram: dict[str, int] = field(default_factory=dict)
    supervised_histogram: dict[str, int] = field(default_factory=dict)
    self_check: dict[str, int] = field(default_factory=dict)
    #: template.reasoning, the conversations with reasoning, the training examples they gave, and those
    #: whose reasoning the template writes nowhere (not trained: the template has no place for it)
    reasoning: dict[str, Any] = field(default_factory=dict)
    #: conversations with tools or tool calls
    tool_conversations: int = 0
    max_seq_len: int = 0
    #: wall seconds of its phases: read, render (for the tokenizer), tokenizer, chunks (encode, mask,
    #: self-check, write), ledger
    phase_seconds: dict[str, float] = field(default_factory=dict)


def template_of(cfg: Any) -> ChatTemplate:
    """The run's chat template. With model.path and no template.name the config names the model
    directory (schemas.config): the model's own chat_template, what it will be served with."""
    try:
        return load_template(cfg.template.name, cfg.tokenizer.path)
    except ValueError as e:
        model_path = getattr(getattr(cfg, "model", None), "path", None)
        if model_path is None or Path(str(cfg.template.name)) != Path(model_path):
            raise
        raise type(e)(
            f"{e}; the template defaults to the model's own because model.path is set: set template.name "
            "to render with another (chatml, llama2, llama3, alpaca, a .jinja file or a tokenizer directory)"
        ) from None


def mask_options(cfg: Any) -> MaskOptions:
    return MaskOptions(cfg.template.train_on, cfg.template.train_on_prompt, cfg.pack.max_seq_len, cfg.pack.overflow,
                       getattr(cfg.template, "reasoning", "split"))


def tools_column(df: pl.DataFrame) -> list[object] | None:
    """Each conversation's tools (a JSON string or None); None for frames written before the column."""
    return df.get_column("tools").to_list() if "tools" in df.columns else None


def sample_indices(lengths: list[int], max_chars: int) -> list[int] | None:
    """Which texts (by their lengths) the tokenizer trains on: None for all when they fit in
    `max_chars`, else every k-th text (an even, deterministic sample: the texts come in
    conversation_id order, a hash order) until the budget is spent."""
    total = sum(lengths)
    if total <= max_chars:
        return None
    step = total / max_chars
    out, used = [], 0
    for i in range(0, len(lengths), max(1, int(step))):
        if used + lengths[i] > max_chars:
            break
        out.append(i)
        used += lengths[i]
    return out


def training_sample(texts: list[str], max_chars: int) -> list[str]:
    """The texts `sample_indices` picks (all of `texts` itself when they fit)."""
    idx = sample_indices([len(t) for t in texts], max_chars)
    return texts if idx is None else [texts[i] for i in idx]


def resolve_tokenizer(run_dir: Path, cfg: Any, template: ChatTemplate, sample: list[str] | None = None,
                      rendered: int = 0) -> tuple[Tokenizer, dict]:
    """The run's tokenizer: the given one, or the embedded BPE trained on `sample` (the texts
    `sample_indices` picked of the `rendered` ones; cached by content)."""
    info: dict[str, Any] = {}
    if cfg.tokenizer.path is not None:
        tok = load_tokenizer(cfg.tokenizer.path)
        model_path = getattr(getattr(cfg, "model", None), "path", None)
        own = model_path is not None and Path(cfg.tokenizer.path) == Path(model_path)
        info.update(kind="model" if own else "given", path=str(cfg.tokenizer.path))
        if own:  # the config's default with model.path (schemas.config): say so in stats.json and the log
            same = Path(str(cfg.template.name)) == Path(model_path)
            info["template"] = "the model's own chat_template" if same else f"template.name = {cfg.template.name}"
            import logging

            logging.getLogger(__name__).info(
                "encode: the model's own tokenizer (%s) and %s, as model.path is set", model_path, info["template"]
            )
    else:
        sample = sample or []
        cache = cfg.tokenizer.cache_dir or RunDir.of(run_dir).stage_dir("encode") / "cache"
        tok, key, hit = cached_bpe(sample, template, cache, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        info.update(kind="trained", key=key, cache_hit=hit,
                    trained_on=f"{len(sample)} of {rendered} conversations ({sum(map(len, sample)):,} characters)")
    info["added_special_tokens"] = ensure_special_tokens(tok, template)
    return tok, info


def _histogram(values: list[int]) -> dict[str, int]:
    counts, _ = np.histogram(np.asarray(values, dtype=np.int64), bins=[*_HIST_EDGES, np.iinfo(np.int64).max])
    return {f"{lo}-{hi - 1}" if i + 1 < len(_HIST_EDGES) else f">={lo}": int(c) for i, (lo, hi, c) in enumerate(
        zip(_HIST_EDGES, [*_HIST_EDGES[1:], 0], counts, strict=True))}


def self_check(df: pl.DataFrame, enc: Encoded, template: ChatTemplate, tok: Tokenizer, opts: MaskOptions,
               cfg: Any, share: float = 1.0, chunk: int = 0) -> int:
    """Decode self-check of a seeded sample of the kept conversations of `df` (all with
    pack.self_check_all), against the template that will be served. `share`: this chunk's share of
    the stage's conversations (its part of pack.self_check_sample); `chunk` seeds its sample."""
    kept = [i for i, r in enumerate(enc.reasons) if r is None]
    n = len(kept) if cfg.pack.self_check_all else min(round(cfg.pack.self_check_sample * share), len(kept))
    rng = np.random.default_rng([cfg.seed, chunk] if chunk else cfg.seed)
    pick = kept if n == len(kept) else sorted(rng.choice(kept, n, replace=False).tolist())
    cids = df.get_column("conversation_id")
    msgs = df.get_column("messages")
    tools = tools_column(df)
    for i in pick:
        check_conversation(cids[i], msgs[i].to_list(), enc.ids[i], enc.masks[i], template, tok, opts,
                           tools=tools[i] if tools else None, segments=enc.segments[i])
    return len(pick)


def _list_array(arrays: list[np.ndarray], dtype: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros(0)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, dtype)).cast(pa.list_(dtype))


def write_encoded(out_dir: Path, df: pl.DataFrame, enc: Encoded, kept: np.ndarray, first_part: int = 0,
                  supervised: list[int] | None = None) -> list[Path]:
    """The kept conversations' encodings as `out_dir/part-NNNNN.arrow`, numbered from `first_part`
    (the caller removes earlier parts); `supervised`: each conversation's targets, if counted already."""
    sup = np.asarray(supervised if supervised is not None else [int(m.sum()) for m in enc.masks], dtype=np.int64)
    names = df.select("conversation_id", "origin").to_arrow()
    tokens = np.fromiter((len(a) for a in enc.ids), dtype=np.int64, count=len(enc.ids))
    truncated = np.asarray(enc.truncated, dtype=bool)
    paths = []
    for p, k0 in enumerate(range(0, max(len(kept), 1), PART_ROWS)):
        rows = kept[k0 : k0 + PART_ROWS]
        idx = rows.tolist()
        taken = names.take(pa.array(rows, pa.int64()))
        table = pa.Table.from_arrays([
            taken.column(0).combine_chunks().cast(pa.string()),
            taken.column(1).combine_chunks().cast(pa.string()),
            pa.array(tokens[rows], pa.int64()),
            pa.array(sup[rows], pa.int64()),
            pa.array(truncated[rows], pa.bool_()),
            _list_array([enc.ids[i] for i in idx], pa.int32()),
            _list_array([enc.masks[i] for i in idx], pa.uint8()),
            _list_array([np.asarray(enc.segments[i], dtype=np.int32) for i in idx], pa.int32()),
        ], schema=ENCODED_SCHEMA)
        # a work file read whole by mix and pack: Arrow IPC (lz4) writes and reads ~20x faster than
        # Parquet (40k conversations: 0.1 s against 2 s, read 0.06 s against 1.4 s), at about its size
        paths.append(atomic_write_ipc(table, out_dir / f"part-{first_part + p:05d}.arrow"))
    return paths


def read_encoded(run_dir: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """The encode stage's rows (all columns, or `columns`)."""
    parts = sorted(RunDir.of(run_dir).stage_dir("encode").glob("part-*.arrow"))
    if not parts:
        return pl.DataFrame(schema={k: v for k, v in pl.from_arrow(ENCODED_SCHEMA.empty_table()).schema.items()
                                    if columns is None or k in columns})
    return pl.concat([read_part(p, columns) for p in parts])


#: inputs smaller than this are encoded in the stage's own process (a worker costs ~1 s to start)
_PARALLEL_MIN_ROWS = 5_000
#: part numbers per chunk: chunk k writes part-{k * _CHUNK_PARTS + p}, so parts sort in row order
_CHUNK_PARTS = 1_000


@dataclass
class ChunkResult:
    """What encoding one chunk of conversations gave: per conversation (in order) its drop reason and
    detail, full and written token counts, full targets, truncation; the parts written; the check."""

    reasons: list[str | None]
    details: list[str | None]
    full_tokens: list[int]
    full_supervised: list[int]
    written: list[int]
    written_supervised: list[int]
    truncated: list[bool]
    parts: list[str]
    checked: int
    encoder: str
    #: conversations with reasoning, and the training examples they gave (pipeline.render.reasoning)
    reasoning: tuple[int, int] = (0, 0)
    #: conversations with tools or tool calls
    tool_conversations: int = 0


def encode_chunk(df: pl.DataFrame, cfg: Any, tok: Tokenizer, out_dir: Path, chunk: int, share: float,
                 rendered: tuple[list[list[Rendered]], list[str | None]] | None = None,
                 msgs: list[Any] | None = None) -> ChunkResult:
    """Render (unless given), encode, mask, self-check and write one chunk of conversations (rows of
    `df`, in order; `msgs`: its messages column as Python lists, if made already)."""
    template = template_of(cfg)
    opts = mask_options(cfg)
    if msgs is None:
        msgs = df.get_column("messages").to_list()
    tools = tools_column(df)
    if rendered is None:
        rendered = render_all(template, msgs, tools, opts.reasoning)
    enc = encode_conversations(msgs, template, tok, opts, cfg.tokenizer.batch_size, rendered=rendered, tools=tools,
                               all_failed_raises=False)
    with_reasoning = [i for i, m in enumerate(msgs) if has_reasoning(m)]
    examples = sum(len(rendered[0][i]) for i in with_reasoning)
    del rendered
    checked = self_check(df, enc, template, tok, opts, cfg, share, chunk)
    kept = np.flatnonzero(np.asarray([r is None for r in enc.reasons], dtype=bool))
    supervised = [int(m.sum()) for m in enc.masks]
    parts = write_encoded(out_dir, df, enc, kept, chunk * _CHUNK_PARTS, supervised)
    with_tools = sum(1 for i, m in enumerate(msgs)
                     if (tools and tools[i]) or any(x.get("tool_calls") or x.get("role") == "tool" for x in m))
    return ChunkResult(enc.reasons, enc.details, enc.full_tokens, enc.full_supervised, [len(a) for a in enc.ids],
                       supervised, enc.truncated, [str(p) for p in parts], checked, enc.encoder,
                       (len(with_reasoning), examples), with_tools)


def parallel_chunks(cfg: Any, rows: int) -> int:
    """How many worker processes encode `rows` conversations (0: the stage's own process does)."""
    workers = getattr(cfg.tokenizer, "workers", 1)
    return workers if workers > 1 and rows >= _PARALLEL_MIN_ROWS else 0


class ChunkEncoder:
    """One chunk of the stage's conversations (contiguous rows of its frame), rendered once, in a
    worker process of its own when the stage runs several (pipeline.core.procpool.Actors):

    1. `load(rows, share)`: its rows (a frame, or an Arrow IPC file the stage wrote for it: written
       and read in a fraction of the time pickling takes), and its share of the stage's rows;
    2. `render()`: render every conversation; the lengths of the texts (training examples, in order);
    3. `texts(indices)`: the texts the stage's tokenizer trains on (pipeline.render.encode.sample_indices);
    4. `encode(tokenizer_json)`: encode what it rendered (or render now, when 2. did not run), mask,
       self-check and write its parts (`encode_chunk`).
    """

    def __init__(self, cfg: Any, out_dir: str, chunk: int) -> None:
        self.cfg, self.out_dir, self.chunk = cfg, Path(out_dir), chunk
        self.df = pl.DataFrame()
        self.share = 1.0
        self.rendered: tuple[list[list[Rendered]], list[str | None]] | None = None
        self.msgs: list[Any] | None = None

    def load(self, rows: pl.DataFrame | str, share: float) -> None:
        self.df = rows if isinstance(rows, pl.DataFrame) else pl.read_ipc(rows)
        self.share = share

    def render(self) -> list[int]:
        self.msgs = self.df.get_column("messages").to_list()
        self.rendered = render_all(template_of(self.cfg), self.msgs, tools_column(self.df),
                                   mask_options(self.cfg).reasoning)
        return [len(r.text) for rs in self.rendered[0] for r in rs]

    def texts(self, indices: list[int]) -> list[str]:
        assert self.rendered is not None, "render() first"
        flat = [r.text for rs in self.rendered[0] for r in rs]
        return [flat[i] for i in indices]

    def encode(self, tok_json: str) -> ChunkResult:
        (rendered, self.rendered), (msgs, self.msgs) = (self.rendered, None), (self.msgs, None)
        return encode_chunk(self.df, self.cfg, Tokenizer.from_str(tok_json), self.out_dir, self.chunk, self.share,
                            rendered, msgs)


#: the columns a chunk reads
CHUNK_COLUMNS = ("conversation_id", "origin", "messages", "tools")


def start_chunks(df: pl.DataFrame, cfg: Any, out_dir: Path) -> Actors:
    """`ChunkEncoder`s over contiguous chunks of `df`, loaded: one per worker process, or one here
    when the input is small (`parallel_chunks`). Each worker's rows go through an uncompressed Arrow
    IPC file in `out_dir` (0.2 s where pickling takes 0.9), written while the workers start and
    removed once they are read."""
    workers = parallel_chunks(cfg, df.height)
    if not workers:
        actors = Actors(ChunkEncoder, [(cfg, str(out_dir), 0)], 0, what="encode: chunks")
        actors.call("load", [(df, 1.0)])
        return actors
    step = -(-df.height // workers)
    starts = list(range(0, df.height, step))
    actors = Actors(ChunkEncoder, [(cfg, str(out_dir), k) for k in range(len(starts))], workers,
                    what="encode: chunks")
    files = [out_dir / f".chunk-{k:03d}.arrow" for k in range(len(starts))]
    try:
        cols = [c for c in CHUNK_COLUMNS if c in df.columns]
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".chunk-*.arrow"):  # left by a run killed while its workers loaded
            stale.unlink(missing_ok=True)
        for f, r0 in zip(files, starts, strict=True):
            df.slice(r0, step).select(cols).write_ipc(f, compression="uncompressed")
        actors.call("load", [(str(f), min(step, df.height - r0) / df.height)
                             for f, r0 in zip(files, starts, strict=True)])
    except BaseException:
        actors.close(abort=True)
        raise
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    return actors


def _sample_of_chunks(actors: Any, lengths: list[list[int]], max_chars: int) -> list[str]:
    """The tokenizer's training texts, fetched from the chunks that rendered them (in text order)."""
    flat = [n for ls in lengths for n in ls]
    idx = sample_indices(flat, max_chars)
    starts = np.cumsum([0] + [len(ls) for ls in lengths]).tolist()
    wanted = [list(range(len(ls))) if idx is None else [i - s for i in idx if s <= i < s + len(ls)]
              for s, ls in zip(starts[:-1], lengths, strict=True)]
    return [t for texts in actors.call("texts", [(w,) for w in wanted]) for t in texts]


def run_encode(in_paths: list[Path], run_dir: str | Path, cfg: Any) -> EncodeResult:
    """Render, tokenize and mask every conversation of `in_paths` once (see the module docstring)."""
    result = EncodeResult(stage="encode", max_seq_len=cfg.pack.max_seq_len)
    clock = [time.perf_counter()]

    def phase(name: str) -> None:
        now = time.perf_counter()
        result.phase_seconds[name] = round(now - clock[0], 3)
        clock[0] = now

    with timed(result):
        rd = claim_run_dir(run_dir)
        out_dir = rd.stage_dir("encode")
        # a fixed order whatever the order of the parts: the tokenizer's cache key hashes the texts
        df = read_parts([Path(p) for p in in_paths]).sort("conversation_id", "origin")
        template = template_of(cfg)
        opts = mask_options(cfg)
        phase("read")
        remove_outputs(out_dir, "part-[0-9][0-9][0-9][0-9][0-9].parquet")  # written by earlier versions
        remove_outputs(out_dir, "part-[0-9][0-9][0-9][0-9][0-9].arrow")
        # Each chunk renders its conversations once, in its own process when there are several; the
        # trained tokenizer learns from a sample of those texts, fetched from the chunks, which then
        # encode what they rendered.
        with start_chunks(df, cfg, out_dir) as actors:
            if cfg.tokenizer.path is None:
                lengths = actors.call("render")
                phase("render")
                sample = _sample_of_chunks(actors, lengths, cfg.tokenizer.train_max_chars)
                tok, tok_info = resolve_tokenizer(rd.root, cfg, template, sample, sum(map(len, lengths)))
                del sample
            else:
                tok, tok_info = resolve_tokenizer(rd.root, cfg, template)
            phase("tokenizer")
            tok_json = tok.to_str()
            chunks = actors.call("encode", [(tok_json,)] * actors.size)
        phase("chunks")
        result.tool_conversations = sum(c.tool_conversations for c in chunks)
        result.reasoning = {
            "mode": opts.reasoning,
            "conversations": sum(c.reasoning[0] for c in chunks),
            "training_examples": sum(c.reasoning[1] for c in chunks),
            "not_rendered": 0 if template.renders_reasoning or opts.reasoning == "drop"
            else sum(c.reasoning[0] for c in chunks),
        }
        if all(r == TEMPLATE_ERROR for c in chunks for r in c.reasons) and df.height:
            first = next(d for c in chunks for d in c.details if d)
            raise TemplateError(f"the template rendered no conversation; the first error: {first}")

        def col(name: str) -> list[Any]:
            return [v for c in chunks for v in getattr(c, name)]

        reasons, full_tokens, full_sup = col("reasons"), col("full_tokens"), col("full_supervised")
        written, written_sup, truncated = col("written"), col("written_supervised"), col("truncated")
        reason_col = pl.Series("reason", reasons, dtype=pl.String)
        dropped = df.with_columns(reason_col, pl.Series("detail", col("details"), dtype=pl.String)).filter(
            pl.col("reason").is_not_null()
        )
        write_ledger_part(rd.root, "tokenize", ledger_rows(
            dropped, stage="tokenize", outcome="dropped", reason=pl.col("reason"), detail=pl.col("detail")
        ))
        result.parts = col("parts")
        save_tokenizer_dir(tok, template, rd.tokenizer, cfg.pack.max_seq_len)

        trunc = [i for i, t in enumerate(truncated) if t]
        result.records_in = df.height
        result.records_out = int(reason_col.is_null().sum())
        result.dropped = dict(sorted(dropped.group_by("reason").len().iter_rows())) if dropped.height else {}
        result.template = template.name
        result.tokenizer = {**tok_info, "hash": tokenizer_hash(tok), "vocab_size": tok.get_vocab_size(),
                            "encoder": chunks[0].encoder}
        result.truncation = {
            "conversations": len(trunc),
            "tokens_lost": sum(full_tokens[i] - written[i] for i in trunc),
            "supervised_tokens_lost": sum(full_sup[i] - written_sup[i] for i in trunc),
        }
        result.dropped_tokens = {
            "tokens": sum(t for t, r in zip(full_tokens, reasons, strict=True) if r),
            "supervised_tokens": sum(s for s, r in zip(full_sup, reasons, strict=True) if r),
        }
        result.length_histogram = _histogram(full_tokens)
        result.supervised_histogram = _histogram(full_sup)
        checked = sum(c.checked for c in chunks)
        result.self_check = {"checked": checked, "passed": checked}
        phase("ledger")
    result.write(rd.stage_dir("encode") / "stats.json")
    return result
