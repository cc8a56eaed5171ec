"""Configuration of the model and the trainer ([model], [train], [lora]).

The defaults train a tiny Llama from scratch on the CPU in a minute or two (the demo); point
`model.path` at a local Hugging Face model directory to fine-tune a real model instead, where the
fine-tuning defaults (`FINETUNE_DEFAULTS`) replace the demo's for every [train] key the config leaves unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """The starting model: a local Hugging Face causal-LM directory, or a small Llama built from these dims."""

    model_config = ConfigDict(extra="forbid")
    path: Path | None = Field(
        default=None,
        description="a local Hugging Face model directory (AutoModelForCausalLM); absent: build a Llama "
        "from the dims below, initialised from scratch",
    )
    hidden_size: int = Field(default=128, ge=8, le=65_536, description="model width (from-scratch Llama)")
    num_layers: int = Field(default=2, ge=1, le=512, description="transformer blocks")
    num_heads: int = Field(default=4, ge=1, le=1024, description="attention heads; must divide hidden_size")
    num_kv_heads: int | None = Field(
        default=None, ge=1, le=1024, description="key/value heads (grouped-query attention); absent: num_heads"
    )
    intermediate_size: int | None = Field(
        default=None, ge=8, le=1_048_576, description="MLP width; absent: 3 x hidden_size"
    )
    max_position_embeddings: int | None = Field(
        default=None, ge=16, le=1_048_576, description="longest position; absent: pack.max_seq_len"
    )
    rope_theta: float = Field(default=10_000.0, gt=0, description="RoPE base")
    rms_norm_eps: float = Field(default=1e-5, gt=0, lt=1, description="RMSNorm epsilon")
    tie_word_embeddings: bool = Field(default=True, description="share input embeddings and output head")
    init_std: float = Field(default=0.02, gt=0, le=1, description="std of the normal weight init")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.path is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"model.num_heads={self.num_heads} must divide model.hidden_size={self.hidden_size}"
                )
            kv = self.num_kv_heads or self.num_heads
            if self.num_heads % kv:
                raise ValueError(f"model.num_kv_heads={kv} must divide model.num_heads={self.num_heads}")
        return self


class TrainConfig(BaseModel):
    """The optimisation loop: steps, batch, optimiser, schedule, checkpoints, processes, device."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="run the trainer after curation")
    epochs: float = Field(default=3.0, gt=0, le=10_000, description="passes over the train shards (if max_steps=0)")
    max_steps: int = Field(default=0, ge=0, description="optimizer steps; 0: derived from epochs")
    micro_batch_size: int = Field(default=2, ge=1, le=65_536, description="packed rows per forward pass")
    grad_accum: int = Field(default=1, ge=1, le=65_536, description="micro-batches per optimizer step (per process)")
    lr: float = Field(default=2e-3, gt=0, le=10, description="peak learning rate")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="final lr of the cosine decay, as a share of lr")
    warmup_steps: int = Field(default=5, ge=0, description="linear warm-up steps")
    warmup_ratio: float | None = Field(
        default=None, ge=0, le=1, description="warm-up as a share of all steps; set, it replaces warmup_steps"
    )
    weight_decay: float = Field(default=0.0, ge=0, le=10, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW betas, each in [0, 1)")
    eps: float = Field(default=1e-8, gt=0, le=1, description="AdamW epsilon")
    clip: float = Field(default=1.0, ge=0, description="max global grad norm; 0: no clipping")
    seed: int | None = Field(default=None, ge=0, description="model init and shuffling seed; absent: the run seed")
    eval_every: int = Field(default=0, ge=0, description="evaluate every N steps (0: only at step 0 and the end)")
    eval_max_rows: int = Field(default=0, ge=0, description="val rows evaluated (0: all)")
    save_every: int = Field(default=50, ge=0, description="checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(default=2, ge=1, le=1000, description="newest checkpoints kept on disk")
    log_every: int = Field(default=1, ge=1, description="write a metrics line every N steps")
    nproc: int = Field(default=1, ge=1, le=1024, description="processes: 1 runs in-process; >1 launches torchrun")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when available")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="compute dtype: auto = bf16 autocast on CUDA, float32 on CPU; trained weights and their "
        "AdamW state stay fp32, frozen weights (the base under LoRA) are kept in bf16 when computing in bf16",
    )
    compile: bool = Field(default=False, description="torch.compile the model (slow first step)")
    attn_implementation: Literal["auto", "varlen", "flex", "sdpa", "eager", "flash_attention_2"] = Field(
        default="auto",
        description="auto: flash_attention_2 on CUDA when flash-attn is installed, else flex (FlexAttention "
        "with a document mask) on CUDA, else varlen (SDPA per packed segment); none pads. sdpa/eager: "
        "padded rows with a block-diagonal causal mask",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="recompute each block's activations in backward: far less memory, ~30% slower"
    )
    loss_chunk_tokens: int = Field(
        default=0, ge=0, le=1_048_576,
        description="target tokens whose logits are computed at once (the rest recomputed in backward); "
        "0: auto, 2^26 / vocab (a 152k vocabulary: 441 tokens), so full logits never materialise",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="with nproc > 1: ddp replicates the model; fsdp shards weights, gradients and optimizer "
        "state over the processes (FSDP2, fully_shard per block)",
    )
    save_initial_model: bool = Field(
        default=True, description="save the starting model to train/model_init/ for the before/after report"
    )
    shuffle_window: int = Field(
        default=8, ge=1, le=1_000_000, description="row groups whose rows are shuffled together (bounds memory)"
    )
    num_threads: int = Field(default=0, ge=0, le=1024, description="torch CPU threads per process (0: torch default)")

    @model_validator(mode="after")
    def _betas_in_range(self) -> TrainConfig:
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise ValueError(f"train.betas[{i}]={b} must be in [0, 1)")
        return self


class LoraConfig(BaseModel):
    """Low-rank adapters (through peft) instead of full fine-tuning: the base stays frozen."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=False, description="train LoRA adapters; off: full fine-tuning")
    r: int = Field(default=16, ge=1, le=4096, description="adapter rank")
    alpha: float = Field(default=32.0, gt=0, le=1_000_000, description="scaling numerator: updates are x alpha / r")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear",
        description="modules given adapters: all-linear = every linear projection of the blocks (Llama, "
        "Qwen: q/k/v/o/gate/up/down_proj), not the output head; or a list of module names",
    )
    merge: bool = Field(
        default=True, description="also write the merged full model to model/ (the adapter is in model/adapter/)"
    )
    quantize: Literal["none", "4bit"] = Field(
        default="none", description="4bit: QLoRA, the frozen base in NF4 through bitsandbytes (CUDA only)"
    )

    @model_validator(mode="after")
    def _targets_named(self) -> LoraConfig:
        names = self.target_modules
        if isinstance(names, list) and (not names or not all(t.strip() for t in names)):
            raise ValueError(f"lora.target_modules={names!r}: give module names (e.g. ['q_proj', 'v_proj']) or 'all-linear'")
        return self


#: [train] values for fine-tuning a pre-trained model (`model.path` set), each applied only when the
#: config leaves that key unset: the from-scratch demo's lr of 2e-3 would wreck pre-trained weights.
#: lr by method (full fine-tuning / LoRA), the common recipes' 3% linear warm-up, 2 epochs.
FINETUNE_DEFAULTS: dict[str, Any] = {"lr": {"full": 2e-5, "lora": 2e-4}, "warmup_ratio": 0.03, "epochs": 2.0}

