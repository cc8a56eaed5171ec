"""Configuration of deduplication ([dedup]) and quality filtering ([quality])."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The filter names only: the registry itself (pipeline.quality.registry) imports this module.
from pipeline.quality.names import FILTER_NAMES

PiiKind = Literal["email", "phone", "credit_card", "ip", "aws_key", "private_key", "api_key"]
PiiPolicy = Literal["redact", "drop", "keep"]


class DedupConfig(BaseModel):
    """Exact and near-duplicate removal across all sources of a run (and earlier runs' indexes)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="run the dedup stage at all")
    exact: bool = Field(default=True, description="drop copies whose normalised conversation text is equal")
    near: bool = Field(default=True, description="drop near copies found by MinHash LSH")
    first_exchange: bool = Field(
        default=True,
        description="a one-exchange conversation that copies (exactly or nearly) the first exchange of a "
        "longer conversation is a copy of it; the longer one is kept, as it holds everything the copy does",
    )
    prompt: bool = Field(
        default=False,
        description="also drop conversations whose normalised user turns equal another's "
        "('same instruction, different answer'); reported as dedup.prompt",
    )
    ngram: int = Field(default=5, ge=1, le=32, description="words per shingle for MinHash")
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations")
    threshold: float = Field(
        default=0.8, gt=0.0, lt=1.0, description="Jaccard similarity at or above which two are near copies"
    )
    seed: int = Field(default=1, ge=0, description="MinHash permutation seed (datasketch's default is 1)")
    scheme: Literal["affine32", "legacy"] = Field(
        default="affine32",
        description="MinHash permutation scheme, as datasketch names it: affine32 (datasketch 2.x default) "
        "or legacy ((a*h+b) mod 2^61-1, datasketch < 2.0)",
    )
    hash: Literal["word_xxh32", "sha1", "xxh32"] = Field(
        default="word_xxh32",
        description="32-bit shingle hash. word_xxh32 (fastest: folds per-word xxh32 hashes without building "
        "shingle strings), sha1 (datasketch's default sha1_hash32) or xxh32 (of the shingle bytes). "
        "Signatures equal datasketch's MinHash(hashfunc=pipeline.dedup.minhash.HASHES[hash]) in every case",
    )
    lsh_weights: tuple[float, float] = Field(
        default=(0.05, 0.95),
        description="(false positive, false negative) weights for datasketch's choice of LSH bands and rows. "
        "Candidates are verified, so missing a pair costs more than checking one: at 0.8 and 128 "
        "permutations (0.05, 0.95) gives 16 bands x 8 rows (a pair at Jaccard 0.85 is a candidate with "
        "p = 0.994), where datasketch's default (0.5, 0.5) gives 9 x 13 (p = 0.69)",
    )
    verify: bool = Field(
        default=True,
        description="keep an LSH candidate pair only if its estimated Jaccard reaches the threshold "
        "(removes LSH false positives)",
    )
    max_bucket: int = Field(
        default=64,
        ge=2,
        description="LSH buckets larger than this are linked as a star around their first member "
        "instead of all pairs (bounds the work on very common bands)",
    )
    prior_indexes: list[Path] = Field(
        default_factory=list,
        description="dedup_index/ directories (or run directories holding one) of earlier runs: "
        "what they kept is never added again",
    )
    write_index: bool = Field(
        default=True, description="write <run_dir>/dedup_index/ with the hashes and signatures of kept rows"
    )
    workers: int = Field(default=2, ge=1, le=64, description="processes for signature computation")
    batch_rows: int = Field(default=20_000, ge=100, description="rows per signature batch")

    @model_validator(mode="after")
    def _check(self) -> DedupConfig:
        if min(self.lsh_weights) < 0 or abs(sum(self.lsh_weights) - 1.0) > 1e-6:
            raise ValueError(f"dedup.lsh_weights: two non-negative weights summing to 1, got {self.lsh_weights}")
        if self.scheme == "legacy" and self.num_perm > 512:
            raise ValueError("dedup.num_perm: legacy scheme supports at most 512 permutations here")
        return self


class BenchmarkFile(BaseModel):
    """One benchmark whose questions must not appear in training data."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, description="name used in reports and ledger details")
    path: Path = Field(description="a .jsonl, .jsonl.gz, .json, .csv or .parquet file")
    field: str = Field(min_length=1, description="the column / key holding the question text")
    id_field: str | None = Field(default=None, description="column naming each item (default: its row index)")


class ContaminationConfig(BaseModel):
    """Long n-gram overlap between user turns and benchmark questions."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="check contamination when benchmarks are configured")
    ngram: int = Field(default=13, ge=5, le=64, description="words per n-gram that count as overlap")
    min_words: int = Field(
        default=8,
        ge=3,
        description="benchmark questions shorter than ngram but at least this many words are matched whole",
    )
    benchmarks: list[BenchmarkFile] = Field(default_factory=list, description="benchmark files to check")


class PiiConfig(BaseModel):
    """Personal data and secrets: per kind, redact (typed placeholder such as [EMAIL]), drop, or keep."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True)
    email: PiiPolicy = "redact"
    phone: PiiPolicy = "redact"
    credit_card: PiiPolicy = "redact"
    ip: PiiPolicy = "redact"
    aws_key: PiiPolicy = "redact"
    private_key: PiiPolicy = "redact"
    api_key: PiiPolicy = Field(default="redact", description="bearer tokens and well-known API key shapes")

    def policy(self, kind: str) -> str:
        return getattr(self, kind)


class LanguageConfig(BaseModel):
    """Language identification (langdetect, fixed seed) on each user and assistant turn."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True)
    keep: list[str] = Field(default_factory=lambda: ["en"], min_length=1, description="languages kept")
    min_chars: int = Field(
        default=20, ge=1, description="turns with fewer letters than this abstain (too short to tell)"
    )
    max_chars: int = Field(
        default=300, ge=50, description="langdetect reads at most this many characters of a turn"
    )
    max_foreign_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="drop when more than this share of the detected letters is in languages not kept",
    )
    precheck: bool = Field(
        default=True,
        description="label plain-ASCII text dense in English function words as en without langdetect "
        "(agreement with full-text detect is measured in bench/bench_curation.py)",
    )


class QualityConfig(BaseModel):
    """Quality filters: each has its switch and thresholds here; all on by default."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="run the quality stage at all")
    filters: list[str] = Field(
        default_factory=lambda: list(FILTER_NAMES),
        description="names from pipeline.quality.registry.FILTERS to run, in this order",
    )
    # echo
    echo_min_chars: int = Field(
        default=10, ge=1, description="an assistant turn this long or longer that only repeats its prompt is an echo"
    )
    # length
    min_turn_chars: int = Field(default=1, ge=0, description="fewest characters of an assistant turn")
    max_turn_chars: int = Field(default=20_000, ge=1, description="most characters of any turn")
    max_turn_words: int = Field(default=4_000, ge=1, description="most words of any turn")
    min_conversation_words: int = Field(default=2, ge=0, description="fewest words of a conversation")
    max_conversation_chars: int = Field(default=40_000, ge=1, description="most characters of a conversation")
    max_conversation_words: int = Field(default=8_000, ge=1, description="most words of a conversation")
    # repetition (Gopher, Rae et al. 2021, table A1), over each assistant turn. Gopher's n-gram
    # limits (top 2/3/4-gram 0.20/0.18/0.16, duplicate 5-gram 0.15) were set for web documents of
    # thousands of words; in replies of 20-300 words one phrase said twice already reaches them (on
    # the c20k corpus the 99.9th percentile of clean replies is about 0.19), so those are raised.
    # A reply that really loops (a sentence said again and again) scores near 1.0 on all of them.
    repetition_min_words: int = Field(
        default=20, ge=1, description="shorter assistant turns are not checked for repetition"
    )
    max_dup_line_frac: float = Field(default=0.3, ge=0, le=1, description="share of lines that are repeats")
    max_top_2gram_frac: float = Field(default=0.30, ge=0, description="chars in the most common 2-gram")
    max_top_3gram_frac: float = Field(default=0.28, ge=0, description="chars in the most common 3-gram")
    max_top_4gram_frac: float = Field(default=0.26, ge=0, description="chars in the most common 4-gram")
    max_dup_5gram_frac: float = Field(default=0.30, ge=0, le=1, description="chars in repeated 5-grams")
    max_dup_10gram_frac: float = Field(default=0.10, ge=0, le=1, description="chars in repeated 10-grams (Gopher)")
    # refusal
    refusal_patterns: list[str] = Field(
        default_factory=list,
        description="extra case-insensitive regexes counted as refusal / AI boilerplate (added to the built-in list)",
    )
    refusal_min_share: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="drop when more than this share of an assistant turn's characters is in sentences with "
        "refusal / AI-boilerplate phrases (0: any such sentence drops). A reply that is mostly a refusal "
        "teaches refusing; one stray disclaimer in a substantive answer is left to the score",
    )
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    workers: int = Field(default=2, ge=1, le=64, description="processes filtering parts in parallel")
    examples_per_reason: int = Field(default=3, ge=0, le=100, description="examples kept in stats.json per reason")

    @model_validator(mode="after")
    def _check(self) -> QualityConfig:
        unknown = [f for f in self.filters if f not in FILTER_NAMES]
        if unknown:
            raise ValueError(f"quality.filters: unknown filter(s) {unknown}; known: {sorted(FILTER_NAMES)}")
        return self
