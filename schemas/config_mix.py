"""Configuration of the source mixture ([mix]), example selection ([select]) and the before/after
view of training ([before_after]).

A mixture rule applies to a source (`[mix.sources.<name>]`) or a tier (`[mix.tiers.<tier>]`):

```toml
[mix.tiers.expert]
weight = 2.0            # epoch multiplier: every expert conversation twice (1.5: half of them twice, by hash)
[mix.tiers.synthetic]
max_share = 0.20        # at most 20% of the training tokens after mixing
[mix.sources.dolly]
max_conversations = 5000
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.conversation import Tier


class MixRule(BaseModel):
    """How much of one source or tier goes into training. Caps count training examples and tokens
    after the weight (a conversation repeated twice counts twice)."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        description="epoch multiplier: 3 = each conversation 3 times; fractions are sampled by hash "
        "(0.5 keeps half, 1.5 repeats half of them)",
    )
    max_conversations: int | None = Field(
        default=None, ge=0, description="at most this many training examples (repeats count)"
    )
    max_tokens: int | None = Field(default=None, ge=0, description="at most this many training tokens")
    share: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="exact share of the final training tokens (subsampled, or repeated by hash if short)",
    )
    max_share: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="at most this share of the final training tokens"
    )

    @model_validator(mode="after")
    def _one_share(self) -> MixRule:
        if self.share is not None and self.max_share is not None:
            raise ValueError("set either share (exact) or max_share (upper bound), not both")
        return self

    def has_share(self) -> bool:
        return self.share is not None or self.max_share is not None


class MixConfig(BaseModel):
    """Per-source and per-tier mixture rules. Empty: every conversation passes once."""

    model_config = ConfigDict(extra="forbid")
    sources: dict[str, MixRule] = Field(default_factory=dict, description="rules keyed by source name")
    tiers: dict[Tier, MixRule] = Field(default_factory=dict, description="rules keyed by tier")
    cap_order: Literal["hash", "score"] = Field(
        default="hash",
        description="which conversations a cap keeps: a seeded hash sample, or the highest quality scores",
    )

    @model_validator(mode="after")
    def _shares_disjoint(self) -> MixConfig:
        # A share on a tier and on one of its sources would be two equations for the same tokens;
        # shares on disjoint groups are solved together (see pipeline.mix.stage.solve_share_budgets).
        total = sum((r.share or 0.0) for r in [*self.sources.values(), *self.tiers.values()])
        if total >= 1.0:
            raise ValueError(f"mix: exact shares add up to {total:.3f}; they must leave room (< 1)")
        return self

    def is_default(self) -> bool:
        return not self.sources and not self.tiers


class SignalWeights(BaseModel):
    """Weight of each quality signal in the score (a weighted mean; 0 switches a signal off)."""

    model_config = ConfigDict(extra="forbid")
    length: float = Field(default=1.0, ge=0.0, description="assistant length, log-scaled")
    balance: float = Field(default=0.5, ge=0.0, description="assistant text at least as long as the prompt")
    diversity: float = Field(default=1.0, ge=0.0, description="type/token ratio of the answer's words")
    repetition: float = Field(default=1.0, ge=0.0, description="1 - share of repeated lines and word pairs")
    complexity: float = Field(default=0.5, ge=0.0, description="prompt length, cue words, several turns")
    formatting: float = Field(default=0.5, ge=0.0, description="code blocks, lists, headings, paragraphs")
    tier: float = Field(default=1.0, ge=0.0, description="the source tier's value (tier_values)")

    @model_validator(mode="after")
    def _some_weight(self) -> SignalWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("select.weights: at least one signal weight must be > 0")
        return self


class SelectRule(BaseModel):
    """Keep the best of one source: top N and/or top fraction by score (both: the smaller)."""

    model_config = ConfigDict(extra="forbid")
    top_n: int | None = Field(default=None, ge=0, description="keep at most this many per source")
    top_fraction: float | None = Field(
        default=None, gt=0.0, le=1.0, description="keep this fraction per source"
    )


class SelectConfig(BaseModel):
    """Quality score (always computed and stored in curated/) and optional top-N selection."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=False, description="apply top_n / top_fraction / diversify")
    weights: SignalWeights = Field(default_factory=SignalWeights)
    tier_values: dict[Tier, float] = Field(
        default_factory=lambda: {Tier.expert: 1.0, Tier.crowdsourced: 0.6, Tier.synthetic: 0.3},
        description="the tier signal of each tier, in [0, 1]",
    )
    top_n: int | None = Field(
        default=None, ge=0, description="per source, unless sources.<name> says otherwise"
    )
    top_fraction: float | None = Field(default=None, gt=0.0, le=1.0, description="per source default")
    sources: dict[str, SelectRule] = Field(default_factory=dict, description="per-source overrides")
    diversify_threshold: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="skip a candidate whose estimated Jaccard similarity to one already kept is >= this",
    )
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations for diversify")
    shingle_words: int = Field(default=3, ge=1, le=16, description="word n-gram size of the MinHash shingles")

    @model_validator(mode="after")
    def _tier_values_in_range(self) -> SelectConfig:
        for tier, v in self.tier_values.items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"select.tier_values.{tier}: {v} is outside [0, 1]")
        return self


class BeforeAfterConfig(BaseModel):
    """Answers of the starting and the trained model to fixed validation prompts, and val loss."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="write report/before_after.json after training")
    num_prompts: int = Field(default=8, ge=1, le=1000, description="validation prompts to answer")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="greedy decoding token limit")
    max_prompt_tokens: int = Field(
        default=512, ge=8, le=1_048_576, description="prompts longer than this are left-truncated"
    )
