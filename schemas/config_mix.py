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

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


#: the scores `select.score` can name (alone, or weighted in a table)
SCORE_KINDS = ("heuristic", "ifd", "perplexity")


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
    quota_by: Literal["conversations", "tokens"] = Field(
        default="conversations",
        description="what top_n / top_fraction count: conversations, or (tokens) top_fraction of each source's "
        "tokens, best first, so every source's and tier's token share is what it was before selection",
    )
    reference_model: Path | None = Field(
        default=None,
        description="a local Hugging Face causal LM directory: score each conversation's assistant tokens "
        "with it (loss with and without the prompt, perplexity, IFD; pipeline.score)",
    )
    score: str | dict[str, float] = Field(
        default="heuristic",
        description="what selection ranks by: heuristic | ifd | perplexity, or a table of weights, e.g. "
        "{heuristic = 1, ifd = 1} (ifd and perplexity need reference_model)",
    )
    ifd_above_one: Literal["keep", "drop", "down_weight"] = Field(
        default="keep",
        description="a conversation whose IFD > 1 (its prompt does not help predict the response): keep it, "
        "drop it (mix.ifd_above_one), or multiply its score by ifd_penalty",
    )
    ifd_penalty: float = Field(default=0.5, ge=0.0, le=1.0, description="score factor with ifd_above_one = down_weight")
    score_max_tokens: int = Field(
        default=1024, ge=8, le=1_048_576, description="reference scoring reads at most this many tokens of a conversation"
    )
    score_batch_tokens: int = Field(
        default=8192, ge=64, le=1_048_576, description="tokens packed into one reference-model forward"
    )
    score_device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the reference model runs")

    @field_validator("score")
    @classmethod
    def _known_score(cls, v: str | dict[str, float]) -> str | dict[str, float]:
        names = [v] if isinstance(v, str) else list(v)
        bad = [n for n in names if n not in SCORE_KINDS]
        if bad:
            raise ValueError(f"unknown score {', '.join(bad)}: use {' | '.join(SCORE_KINDS)} or a table of them")
        if isinstance(v, dict) and (not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0):
            raise ValueError("a score table needs weights >= 0 with a positive sum, e.g. {heuristic = 1, ifd = 1}")
        return v

    def score_weights(self) -> dict[str, float]:
        """The score as weights: "ifd" -> {"ifd": 1.0}."""
        return {self.score: 1.0} if isinstance(self.score, str) else {k: float(w) for k, w in self.score.items() if w}

    def uses_reference(self) -> bool:
        return any(k != "heuristic" for k in self.score_weights()) or self.ifd_above_one != "keep"

    @model_validator(mode="after")
    def _reference_needed(self) -> SelectConfig:
        if self.reference_model is None and self.uses_reference():
            raise ValueError(
                f"select.score = {self.score!r} / ifd_above_one = {self.ifd_above_one!r} need model scores: "
                "set select.reference_model to a local Hugging Face model directory"
            )
        return self

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


class AblationConfig(BaseModel):
    """A proxy ablation: the same small model trained on the selection, on a random subset of the same
    tokens, and on each tier alone at equal tokens; validation loss per source and tier for each."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=False, description="run the ablation after the data stages")
    model: Literal["scratch", "lora"] = Field(
        default="scratch",
        description="scratch: a tiny Llama on the run's tokenizer; lora: LoRA on select.reference_model",
    )
    hidden_size: int = Field(default=64, ge=8, le=4096, description="the scratch model's width")
    num_layers: int = Field(default=2, ge=1, le=64, description="the scratch model's layers")
    num_heads: int = Field(default=4, ge=1, le=64, description="the scratch model's attention heads")
    lora_r: int = Field(default=8, ge=1, le=256, description="LoRA rank with model = lora")
    max_tokens: int = Field(
        default=16_384, ge=256, le=1_000_000_000, description="tokens each arm trains on (at most the selection's)"
    )
    epochs: int = Field(default=2, ge=1, le=100, description="passes over each arm's tokens")
    batch_tokens: int = Field(default=1024, ge=64, le=1_048_576, description="tokens per optimizer step")
    lr: float = Field(default=5e-3, gt=0.0, le=1.0, description="AdamW peak learning rate (warmup, then cosine to 10%)")
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="held out of every arm, by hash")
    max_seq_len: int = Field(default=512, ge=16, le=1_048_576, description="a conversation is cut to this")
    tiers: bool = Field(default=True, description="also train one arm per tier")
    num_prompts: int = Field(default=3, ge=0, le=100, description="validation prompts answered by each arm")
    max_new_tokens: int = Field(default=32, ge=1, le=1024, description="greedy answer length")
    num_threads: int = Field(default=0, ge=0, le=1024, description="torch threads (0: torch's default)")
