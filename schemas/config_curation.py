"""Configuration of deduplication ([dedup]) and quality filtering ([quality])."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Names and codes only: the registry itself (pipeline.quality.registry) imports this module.
from pipeline.quality.langcodes import LANGUAGE_CODES, normalize_code
from pipeline.quality.names import FILTER_NAMES
from schemas.conversation import Tier

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
    workers: int = Field(default=2, ge=1, le=64, description="processes computing the keys, text hashes and MinHash signatures")
    batch_rows: int = Field(default=20_000, ge=100, description="rows per keys-and-signatures batch")

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
    field: str = Field(
        min_length=1,
        description="the column / key holding the question text; a list-valued field (MT-bench's turns) "
        "gives one item per element",
    )
    id_field: str | None = Field(default=None, description="column naming each item (default: its row index)")


class ContaminationConfig(BaseModel):
    """Benchmark questions in user turns: long n-gram overlap, and exact copies of short questions.

    Checked first, on every conversation that reaches quality, whatever else it fails."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="check contamination when benchmarks are configured")
    ngram: int = Field(default=13, ge=5, le=64, description="words per n-gram that count as overlap")
    min_words: int = Field(
        default=8,
        ge=1,
        description="the shorter n: a benchmark question with fewer than `ngram` words but at least this many "
        "is found inside a longer user turn when all its words appear there in order and make up at least "
        "`short_min_share` of that turn. Any question, however short, is found when a user turn is an exact "
        "copy of it (after normalisation)",
    )
    short_min_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="share of a user turn's words a short question must make up to count as contained in it "
        "(a generic stem such as 'Which of the following is true?' inside a longer question does not)",
    )
    min_coverage: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="a long question counts as found when the n-grams a user turn shares with it cover at "
        "least this share of its words (0: any shared n-gram, GPT-3's rule); one clinical phrase shared by "
        "two different 150-word vignettes is not a copy",
    )
    max_items_per_ngram: int = Field(
        default=10,
        ge=1,
        description="an n-gram found in more than this many items of one benchmark is its boilerplate (a "
        "shared instruction such as MMLU's moral-scenarios stem) and is not matched",
    )
    benchmarks: list[BenchmarkFile] = Field(default_factory=list, description="benchmark files to check")


class PiiConfig(BaseModel):
    """Personal data and secrets: per kind, redact (typed placeholder such as [EMAIL]), drop, or keep.

    Candidates are validated before they count: IPv4 octets in range and not in a version or section
    number (`git 1.7.5.4`, `§15.12.2.7`); loopback, unspecified and network (CIDR) addresses never, and
    private and documentation ranges not in code; phone numbers of a plausible shape (a valid North
    American area code, a country code, or a trunk prefix), not toll-free or helpline numbers and not
    arithmetic; card numbers Luhn-valid and not the digits of a decimal; e-mail at reserved example
    domains (example.com, *.test) not inside code or a task about e-mail formats."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="look for personal data and secrets at all")
    email: PiiPolicy = Field(default="redact", description="e-mail addresses: redact ([EMAIL]), drop the conversation, or keep")
    phone: PiiPolicy = Field(default="redact", description="phone numbers of a plausible shape: redact, drop or keep")
    credit_card: PiiPolicy = Field(default="redact", description="Luhn-valid card numbers: redact, drop or keep")
    ip: PiiPolicy = Field(default="redact", description="IP addresses (validated, not versions or sections): redact, drop or keep")
    aws_key: PiiPolicy = Field(default="redact", description="AWS access keys: redact, drop or keep")
    private_key: PiiPolicy = Field(default="redact", description="private-key blocks: redact, drop or keep")
    api_key: PiiPolicy = Field(default="redact", description="bearer tokens and well-known API key shapes")
    examples: int = Field(default=20, ge=0, le=1000, description="redactions kept per kind as before -> after examples")

    def policy(self, kind: str) -> str:
        return getattr(self, kind)


class LanguageConfig(BaseModel):
    """Language identification on the prose of each user and assistant turn (code and arithmetic are
    not read): script first, then langdetect with a fixed seed; a turn it cannot tell abstains."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="identify the language of each conversation at all")
    keep: list[str] = Field(
        default_factory=lambda: ["en"], min_length=1,
        description="languages kept (langdetect's codes; zh stands for zh-cn and zh-tw)",
    )
    min_chars: int = Field(
        default=20, ge=1, description="Latin-script prose with fewer letters than this abstains (too short to tell)"
    )
    script_min_chars: int = Field(
        default=2, ge=1,
        description="prose mostly in a non-Latin script is labelled by its script from this many letters on "
        "(谢谢 is zh even though it is far below min_chars)",
    )
    max_chars: int = Field(
        default=300, ge=50, description="langdetect reads at most this many characters of a turn"
    )
    confirm_share: float = Field(
        default=0.15, ge=0.0, le=1.0,
        description="a Latin-script language other than English is believed only when this share of the "
        "words are its function words (a list of nouns or a table abstains instead)",
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

    @field_validator("keep")
    @classmethod
    def _known_codes(cls, keep: list[str]) -> list[str]:
        out = [normalize_code(c) for c in keep]
        unknown = [c for c, n in zip(keep, out, strict=True) if n not in LANGUAGE_CODES]
        if unknown:
            raise ValueError(f"unknown language code(s) {unknown}; valid codes: {', '.join(LANGUAGE_CODES)} "
                             "(zh-cn and zh-tw are written zh)")
        return list(dict.fromkeys(out))


class TierPolicy(BaseModel):
    """How the quality rules treat one tier: whether the heuristic rules may drop its conversations,
    and any threshold of [quality] set for it alone (`max_dup_10gram_frac = 0.95`, …)."""

    model_config = ConfigDict(extra="allow")
    heuristics: bool | None = Field(
        default=None,
        description="let the heuristic rules (echo, length, repetition, refusal, placeholder) drop this tier's "
        "conversations; default: yes, except for the expert tier, which only the hard rules (empty, "
        "contamination, PII policy, language) drop. A heuristic verdict the tier is spared is kept in the "
        "quality_flags column and counted in the report",
    )


class QualityConfig(BaseModel):
    """Quality filters: each has its switch and thresholds here; all on by default."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="run the quality stage at all")
    filters: list[str] = Field(
        default_factory=lambda: list(FILTER_NAMES),
        description="names from pipeline.quality.registry.FILTERS to run, in this order (contamination, when "
        "listed, always runs first and on every conversation)",
    )
    tiers: dict[Tier, TierPolicy] = Field(
        default_factory=dict,
        description="per tier: heuristics on or off and thresholds of its own, e.g. [quality.tiers.synthetic] "
        "max_dup_10gram_frac = 0.7",
    )
    # echo
    echo_min_chars: int = Field(
        default=10, ge=1, description="an assistant turn this long or longer that only repeats its prompt is an echo"
    )
    echo_min_share: float = Field(
        default=0.5, gt=0.0, le=1.0,
        description="an assistant turn found inside its prompt is an echo when it is at least this share of the "
        "prompt; a shorter one is an extracted span or a chosen option (classification, extractive QA), and "
        "an answer equal to one of the prompt's listed options never is",
    )
    # length
    min_turn_chars: int = Field(default=1, ge=0, description="fewest characters of an assistant turn")
    max_turn_chars: int = Field(default=20_000, ge=1, description="most characters of any turn")
    max_turn_words: int = Field(default=4_000, ge=1, description="most words of any turn")
    min_conversation_words: int = Field(default=2, ge=0, description="fewest words of a conversation")
    max_conversation_chars: int = Field(default=40_000, ge=1, description="most characters of a conversation")
    max_conversation_words: int = Field(default=8_000, ge=1, description="most words of a conversation")
    # repetition (Gopher, Rae et al. 2021, table A1), over each assistant turn. Gopher's limits were set
    # for web documents of thousands of words; in replies of 20-500 words a chorus, a weekly plan or a
    # worked solution repeats phrases by design (on real Alpaca, OASST and AlpacaEval answers the old
    # limits dropped 2-9%). The limits below are set on bench/bench_filters.py's real files so that
    # they catch a reply that loops (a sentence said again and again, the whole answer twice) and keep
    # songs, lists and step-by-step solutions. Prose gets every check; math (textkind) the duplicate
    # lines and 10-grams; code only the duplicate 10-grams (a function written out again).
    repetition_min_words: int = Field(
        default=20, ge=1, description="shorter assistant turns are not checked for repetition"
    )
    max_dup_line_frac: float = Field(default=0.6, ge=0, le=1, description="share of lines that are repeats (prose, math)")
    max_top_2gram_frac: float = Field(default=0.5, ge=0, description="chars in the most common 2-gram (prose)")
    max_top_3gram_frac: float = Field(default=0.5, ge=0, description="chars in the most common 3-gram (prose)")
    max_top_4gram_frac: float = Field(default=0.5, ge=0, description="chars in the most common 4-gram (prose)")
    max_dup_5gram_frac: float = Field(default=0.9, ge=0, le=1, description="chars in repeated 5-grams (prose)")
    max_dup_10gram_frac: float = Field(
        default=0.85, ge=0, le=1, description="chars in repeated 10-grams (prose, math and code)"
    )
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
        "teaches refusing; one stray disclaimer in a substantive answer is left to the score. An assistant "
        "describing itself because the user asked who or what it is is not boilerplate",
    )
    # placeholder
    placeholder_patterns: list[str] = Field(
        default_factory=list,
        description="extra regexes counted as unfilled template variables (added to the built-in ones: "
        "{{name}}, {first_name}, <<name>>, [INSERT NAME], %(name)s); they must compile in Rust's regex too "
        "(no look-around)",
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
        errors = []
        for tier, pol in self.tiers.items():
            extra = dict(pol.model_extra or {})
            bad = sorted(k for k in extra if k not in TIER_THRESHOLDS)
            if bad:
                errors.append(f"quality.tiers.{tier.value}: unknown key(s) {bad}; a tier sets `heuristics` or "
                              f"thresholds: {', '.join(TIER_THRESHOLDS)}")
                continue
            try:
                QualityConfig.model_validate({**self.model_dump(exclude={"tiers"}), **extra})
            except ValidationError as e:
                errors += [f"quality.tiers.{tier.value}.{'.'.join(map(str, err['loc']))}: {err['msg']} "
                           f"(got {err['input']!r})" for err in e.errors()]
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def heuristics_on(self, tier: str) -> bool:
        """Whether the heuristic rules may drop this tier's conversations."""
        pol = self.tiers.get(Tier(tier)) if tier in Tier.__members__ else None
        if pol is not None and pol.heuristics is not None:
            return pol.heuristics
        return tier != Tier.expert.value

    def for_tier(self, tier: str) -> QualityConfig:
        """This configuration with the tier's own thresholds (itself when the tier sets none)."""
        pol = self.tiers.get(Tier(tier)) if tier in Tier.__members__ else None
        extra = dict(pol.model_extra or {}) if pol is not None else {}
        return self.model_copy(update=extra) if extra else self


#: The [quality] thresholds a tier may set for itself.
TIER_THRESHOLDS: tuple[str, ...] = (
    "echo_min_chars", "echo_min_share", "min_turn_chars", "max_turn_chars", "max_turn_words",
    "min_conversation_words", "max_conversation_chars", "max_conversation_words", "repetition_min_words",
    "max_dup_line_frac", "max_top_2gram_frac", "max_top_3gram_frac", "max_top_4gram_frac", "max_dup_5gram_frac",
    "max_dup_10gram_frac", "refusal_min_share",
)
