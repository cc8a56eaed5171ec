r"""Text normalisation shared by dedup, MinHash and the quality filters.

Normalised text = Unicode NFKC, lower case, every whitespace run one space, stripped. `lower` is
Unicode lower-casing; it differs from `casefold` only on a handful of letters (ß, final sigma),
which is harmless for duplicate detection. It runs in Python (`normalize_texts`): measured faster
than polars' `str.normalize` plus a `\s+` regex, and ASCII text (most of it) skips NFKC entirely.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import polars as pl

#: Word tokens: Unicode letters, digits and underscore (Rust regex `\w`, like Python's `re` `\w`).
WORD_RE = r"\w+"


def normalize_text(text: str) -> str:
    """NFKC, lower case, collapsed whitespace, stripped (ASCII is already NFKC)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def normalize_texts(texts: pl.Series) -> pl.Series:
    """normalize_text over a string column (null -> "")."""
    return pl.Series(texts.name, [normalize_text(t) if t else "" for t in texts.to_list()], dtype=pl.String)


def normalize(expr: pl.Expr) -> pl.Expr:
    """normalize_text as a polars expression."""
    return expr.map_batches(normalize_texts, return_dtype=pl.String)


def normalized_turns(df: pl.DataFrame) -> pl.DataFrame:
    """One row per message: row (index into df), turn, role, content, norm (normalised content)."""
    t = (
        df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "messages")
        .explode("messages")
        .with_columns(pl.int_range(pl.len()).over("row").alias("turn"))
        .unnest("messages")
        .filter(pl.col("role").is_not_null())
    )
    return t.with_columns(normalize_texts(t["content"]).alias("norm"))


def turns_text(roles: tuple[str, ...], sep: str = "\n", messages: pl.Expr | None = None) -> pl.Expr:
    """The contents of the turns with one of `roles`, joined per conversation."""
    role = pl.element().struct.field("role")
    keep = role.is_in(list(roles)) if len(roles) > 1 else role == roles[0]
    msgs = pl.col("messages") if messages is None else messages
    return msgs.list.eval(pl.element().filter(keep).struct.field("content")).list.join(sep)


def words(texts: pl.Series) -> pl.Series:
    """List of word tokens of each (already normalised) text."""
    return texts.str.extract_all(WORD_RE)


def owners(lens: np.ndarray) -> np.ndarray:
    """The document of each element of a flat column whose documents have `lens` elements each:
    np.repeat(np.arange(len(lens)), lens), without np.repeat (about 1.4 s for 28M elements, this
    a few hundredths: one scatter of the document steps and a cumulative sum)."""
    lens = np.asarray(lens, dtype=np.int64)
    total = int(lens.sum())
    out = np.zeros(total, dtype=np.int64)
    nz = np.flatnonzero(lens)
    if total:
        starts = np.cumsum(lens) - lens
        out[starts[nz]] = np.diff(nz, prepend=0)
        np.cumsum(out, out=out)
    return out


def word_ngrams(texts: pl.Series, n: int, short: bool = True) -> tuple[pl.Series, np.ndarray]:
    """All word n-grams ("w1 w2 … wn", space-joined) of each normalised text, flattened in document
    order, and the document index of each. A text with fewer than n words gives its whole word
    sequence as one n-gram when `short` is true (so short documents still have a signature), none
    otherwise; a text without words gives none."""
    w = words(texts).fill_null([])
    lens = w.list.len().to_numpy().astype(np.int64)
    flat = w.explode().drop_nulls()  # an empty list explodes to one null
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    doc = owners(lens)
    pos = np.arange(flat.len(), dtype=np.int64) - starts[doc]
    # Shifted copies of the flat word column give the n words starting at each position; only
    # positions with n words left in the same document are kept.
    frame = pl.DataFrame({"w": flat})
    grams = frame.select(
        pl.concat_str([pl.col("w").shift(-i) for i in range(n)], separator=" ", ignore_nulls=True)
    ).to_series()
    keep = pos <= (lens - n)[doc]
    out_grams = grams.filter(pl.Series(keep))
    out_doc = doc[keep]
    if short:
        short_docs = np.flatnonzero((lens > 0) & (lens < n))
        if len(short_docs):
            whole = w.gather(short_docs).list.join(" ")
            out_grams = pl.concat([out_grams, whole])
            out_doc = np.concatenate([out_doc, short_docs])
            order = np.argsort(out_doc, kind="stable")
            out_grams = out_grams.gather(order)
            out_doc = out_doc[order]
    return out_grams, out_doc


#: Start value of the word-hash fold (any fixed constant; changing it changes every signature).
WORD_SEED = 0x9747B28C


#: MurmurHash3 finaliser constants per width: (shift, multiplier, shift, multiplier, shift).
_FMIX = {
    32: (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16),
    64: (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33),
}


def fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser for uint32 or uint64 arrays (uint32 is also what datasketch applies
    before affine32 permutations); multiplication wraps, as intended. A new array (`fmix_`: in place)."""
    out = np.array(h, copy=True)
    return fmix_(out, np.empty_like(out))


def fmix32(h: np.ndarray) -> np.ndarray:
    """fmix on uint32 values."""
    return fmix(np.asarray(h, dtype=np.uint32))


def word_hashes(
    texts: pl.Series, bits: int = 32, *, stable: bool = True, spaces: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash of every word of every normalised text, flat in document order; also each text's word
    count and each word's length in characters.

    stable: each distinct word is hashed once with xxh32 (bits=32) or xxh3-64 (bits=64), values
    that mean the same in every run and version (MinHash indexes are persisted). Otherwise polars'
    own 64-bit hash, much faster but only comparable within one process and polars version (good
    for checks inside one batch). spaces: words are the space-separated pieces (Gopher's words)
    instead of `\\w+` tokens.
    """
    if spaces:
        w = texts.replace("", None).str.split(" ").fill_null([])
    else:
        w = words(texts).fill_null([])
    lens = w.list.len().to_numpy().astype(np.int64)
    flat = w.explode().drop_nulls()
    dtype = np.uint32 if bits == 32 else np.uint64
    if not stable:
        fh = flat.hash(seed=0x51F7).to_numpy()
        return (fh.astype(dtype) if bits == 32 else fh), lens, flat.str.len_chars().to_numpy()
    import xxhash

    word_hash = xxhash.xxh32_intdigest if bits == 32 else xxhash.xxh3_64_intdigest
    # Distinct words found through polars' fast hash (a 64-bit collision between two different
    # words of one batch is a ~1e-9 event), then only those are hashed with the stable function.
    frame = pl.DataFrame({"k": flat.hash(seed=0x51F7)})
    uniq = frame.with_row_index("i").group_by("k").agg(pl.col("i").min())
    wh = np.fromiter((word_hash(x) for x in flat.gather(uniq["i"]).cast(pl.Binary).to_list()), dtype=dtype,
                     count=uniq.height)
    lookup = uniq.select("k", pl.Series("v", wh, dtype=pl.UInt32 if bits == 32 else pl.UInt64))
    fh = frame.join(lookup, on="k", how="left", maintain_order="left")["v"].to_numpy()
    return fh, lens, flat.str.len_chars().to_numpy()


def fmix_(h: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """fmix in place (`tmp`: scratch of h's length and dtype): the same values, no new arrays."""
    t = h.dtype.type
    s1, m1, s2, m2, s3 = (t(c) for c in _FMIX[h.dtype.itemsize * 8])
    np.right_shift(h, s1, out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, m1, out=h)
    np.right_shift(h, s2, out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, m2, out=h)
    np.right_shift(h, s3, out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    return h


#: Elements per block of the in-place hash loops: their vectors stay in cache, and no array as long
#: as the input is made per step (fresh memory is slow to fault in: folding 5M words took 0.5 s
#: with whole-column temporaries, 0.04 s by blocks).
_BLOCK = 1 << 15


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)]) in one array and one
    cumulative sum (no array per range, no index arrays as long as the output)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    out = np.ones(total, dtype=np.int64)
    nz = np.flatnonzero(counts)
    if total:
        first = (np.cumsum(counts) - counts)[nz]
        begin = np.asarray(starts, dtype=np.int64)[nz]
        out[first] = begin - np.concatenate([[0], begin[:-1] + counts[nz][:-1] - 1])
        np.cumsum(out, out=out)
    return out


def _fold_at(fh: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """The fold of the n word hashes from each position of `at` (reading zeros past the end), by blocks."""
    dtype = fh.dtype.type
    padded = np.concatenate([fh, np.zeros(n, dtype=dtype)])
    out = np.empty(len(at), dtype=dtype)
    tmp = np.empty(min(_BLOCK, len(at)), dtype=dtype)
    mult = dtype(31)
    for b0 in range(0, len(at), _BLOCK):
        b1 = min(b0 + _BLOCK, len(at))
        idx, h, t = at[b0:b1], out[b0:b1], tmp[: b1 - b0]
        h.fill(WORD_SEED)
        for i in range(n):
            np.multiply(h, mult, out=h)
            np.add(h, padded[idx + i], out=h)
            fmix_(h, t)
    return out


def fold_ngrams(fh: np.ndarray, lens: np.ndarray, n: int, short: bool = True) -> tuple[np.ndarray, ...]:
    """n-gram hashes from flat word hashes (see fold_word_ngrams); returns (hashes, document index,
    start position of each n-gram in the flat word column), in document and position order."""
    lens = np.asarray(lens, dtype=np.int64)
    starts = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    per = np.maximum(lens - n + 1, 0)  # n-grams of each document
    is_short = (lens > 0) & (lens < n) if short else np.zeros(len(lens), dtype=bool)
    per[is_short] = 1  # a document with 1..n-1 words: one hash of all its words
    sel = ranges(starts, per)
    h = _fold_at(fh, sel, n)
    if is_short.any():
        at = (np.cumsum(per) - per)[is_short]
        k_words = lens[is_short]
        hk = np.full(len(at), WORD_SEED, dtype=fh.dtype)
        for i in range(n - 1):  # folded over just their words
            step = fmix(hk * fh.dtype.type(31) + fh[np.minimum(sel[at] + i, len(fh) - 1)])
            hk = np.where(i < k_words, step, hk)
        h[at] = hk
    return h, owners(per), sel


def fold_word_ngrams(
    texts: pl.Series, n: int, *, bits: int = 32, short: bool = True, stable: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Hash of every word n-gram of every normalised text, without building n-gram strings: each
    distinct word is hashed once (xxh32, or xxh3-64 for bits=64), then h = fmix(h * 31 + w_i) is
    folded over the n words from WORD_SEED. Returns (hashes, document index), in document order.
    With `short`, a text with 1..n-1 words gives one hash of all its words (as word_ngrams does).
    `stable` as in word_hashes."""
    fh, lens, _ = word_hashes(texts, bits, stable=stable)
    h, doc, _ = fold_ngrams(fh, lens, n, short)
    return h, doc
