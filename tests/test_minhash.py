"""Vectorised MinHash signatures equal datasketch's MinHash bit for bit."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from pipeline.core.textnorm import fold_word_ngrams, word_ngrams
from pipeline.dedup.minhash import (
    HASHES,
    estimated_jaccard,
    shingles,
    signatures_from_hashes,
    text_signatures,
)

WORDS = ["the", "a", "of", "model", "data", "river", "stone", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "énorme", "数据", "x1", "y_2"]


def _docs(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    docs = [" ".join(rnd.choices(WORDS, k=rnd.randint(0, 60))) for _ in range(n)]
    return docs + ["", "one", "two words", "exactly five words in here"]


@pytest.mark.parametrize("hash_name", sorted(HASHES))
@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch(hash_name: str, scheme: str) -> None:
    docs = _docs(150)
    ours = text_signatures(pl.Series(docs), ngram=5, num_perm=64, seed=3, scheme=scheme, hash=hash_name)
    for i, doc in enumerate(docs):
        ref = MinHash(num_perm=64, seed=3, scheme=scheme, hashfunc=HASHES[hash_name])
        ref.update_batch(shingles(doc, 5))
        assert np.array_equal(ref.hashvalues.astype(np.uint32), ours[i]), (i, doc)


def test_sha1_default_hash_matches_datasketch_default() -> None:
    """With hash=sha1 no hashfunc needs passing: datasketch's default sha1_hash32 is the same."""
    docs = _docs(40, seed=1)
    ours = text_signatures(pl.Series(docs), hash="sha1")
    ref = MinHash.bulk([shingles(d) for d in docs], num_perm=128)
    assert np.array_equal(np.stack([m.hashvalues for m in ref]).astype(np.uint32), ours)


def test_word_hash_fold_matches_scalar_on_shingle_bytes() -> None:
    docs = pl.Series(_docs(30, seed=2))
    grams, doc = word_ngrams(docs, 5)
    folded, doc2 = fold_word_ngrams(docs, 5)
    assert np.array_equal(doc, doc2)
    assert [HASHES["word_xxh32"](g.encode()) for g in grams] == folded.tolist()


def test_shingles_short_and_empty_documents() -> None:
    assert shingles("", 5) == []
    assert shingles("a b", 5) == [b"a b"]
    assert shingles("a b c d e f", 5) == [b"a b c d e", b"b c d e f"]
    sig = text_signatures(pl.Series(["", "a b"]))
    assert (sig[0] == 0xFFFFFFFF).all() and not (sig[1] == 0xFFFFFFFF).all()


def test_batches_do_not_change_signatures() -> None:
    docs = _docs(60, seed=4)
    whole = text_signatures(pl.Series(docs))
    halves = np.vstack([text_signatures(pl.Series(docs[:25])), text_signatures(pl.Series(docs[25:]))])
    assert np.array_equal(whole, halves)


def test_signatures_from_hashes_empty_docs_between() -> None:
    sig = signatures_from_hashes(np.array([5, 7], dtype=np.uint32), np.array([1, 1]), 3, num_perm=16)
    assert (sig[0] == 0xFFFFFFFF).all() and (sig[2] == 0xFFFFFFFF).all()
    ref = MinHash(num_perm=16, hashfunc=lambda b: int(b))
    ref.update_batch([b"5", b"7"])
    assert np.array_equal(ref.hashvalues.astype(np.uint32), sig[1])


def test_estimated_jaccard_tracks_true_jaccard() -> None:
    base = [f"w{i}" for i in range(400)]
    other = base[:300] + [f"v{i}" for i in range(100)]
    sig = text_signatures(pl.Series([" ".join(base), " ".join(other), " ".join(base)]), num_perm=256)
    est = estimated_jaccard(sig, np.array([0, 0]), np.array([1, 2]))
    true = 296 / (396 + 100)  # shared 5-grams / union of 5-grams
    assert abs(est[0] - true) < 0.1 and est[1] == 1.0


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("num_perm,seed", [(16, 1), (128, 7), (256, 12345)])
def test_permutations_are_datasketch_own(scheme: str, num_perm: int, seed: int) -> None:
    """Drawn without importing datasketch (spawned workers skip its import), yet datasketch's own."""
    from pipeline.dedup.minhash import permutations

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
    x, y = permutations(num_perm, seed, scheme)
    assert np.array_equal(np.asarray(a, dtype=x.dtype), x) and np.array_equal(np.asarray(b, dtype=y.dtype), y)


def test_owners_is_numpy_repeat_of_the_document_index() -> None:
    from pipeline.core.textnorm import owners

    rng = np.random.default_rng(1)
    for _ in range(300):
        lens = rng.integers(0, 4, rng.integers(0, 30))
        assert np.array_equal(owners(lens), np.repeat(np.arange(len(lens)), lens))


def test_ranges_is_concatenated_aranges() -> None:
    from pipeline.core.textnorm import ranges

    rng = np.random.default_rng(2)
    for _ in range(300):
        counts = rng.integers(0, 4, rng.integers(0, 30))
        starts = np.sort(rng.integers(0, 100, len(counts)))
        want = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)] + [np.zeros(0)])
        assert np.array_equal(ranges(starts, counts), want.astype(np.int64))


@pytest.mark.parametrize("bits", [32, 64])
def test_fold_ngrams_equals_a_scalar_fold_per_document(bits: int) -> None:
    """Every n-gram's hash is the scalar fold of its n words (of all its words for a short document
    with `short`), with its document and start position, in document order; any n."""
    from pipeline.core.textnorm import WORD_SEED, fold_ngrams

    mask = (1 << bits) - 1
    mix = _mix32 if bits == 32 else _mix64
    rng = np.random.default_rng(bits)
    for _ in range(60):
        lens = rng.integers(0, 9, rng.integers(0, 12)).astype(np.int64)
        fh = rng.integers(0, 1 << bits, int(lens.sum()), dtype=np.uint64).astype(np.uint32 if bits == 32 else np.uint64)
        for n in (1, 2, 3, 5):
            for short in (True, False):
                want_h, want_doc, want_at = [], [], []
                start = 0
                for d, m in enumerate(lens.tolist()):
                    grams = [(p, n) for p in range(m - n + 1)] or ([(0, m)] if short and m else [])
                    for p, k in grams:
                        h = WORD_SEED
                        for w in fh[start + p : start + p + k].tolist():
                            h = mix((h * 31 + w) & mask)
                        want_h.append(h)
                        want_doc.append(d)
                        want_at.append(start + p)
                    start += m
                h, doc, at = fold_ngrams(fh, lens, n, short)
                assert h.tolist() == want_h and doc.tolist() == want_doc and at.tolist() == want_at, (lens, n, short)


def _mix32(h: int) -> int:
    from pipeline.dedup.minhash import _mix32 as mix

    return mix(h)


def _mix64(h: int) -> int:
    m = (1 << 64) - 1
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & m
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & m
    return h ^ (h >> 33)
