"""The model a run trains: built or loaded, given LoRA adapters when asked, placed on the device.

Full fine-tuning keeps every weight in fp32 (the master weights, and AdamW's state with them) and
computes in bf16 under autocast on CUDA. Under LoRA the base is frozen, so it is held in the compute
dtype (bf16 on CUDA: half the memory; NF4 with QLoRA) while the adapters, the only trained weights,
stay fp32. `train.gradient_checkpointing` recomputes each block's activations in backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from schemas.config import RunConfig
from schemas.config_train import TrainConfig
from trainer.model import build_model, save_hf


@dataclass
class Prepared:
    """The model the loop trains, and under LoRA what saving and resuming need besides."""

    model: PreTrainedModel  # adapters injected in place under LoRA: the loss and DDP wrap this
    peft: Any | None = None  # the PeftModel around `model` (LoRA), for the adapter directory
    base_hash: str | None = None  # the frozen base's fingerprint (LoRA), kept in checkpoints
    base_dir: Path | None = None  # where the base lives on disk: model.path, or train/model_init

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def compute_dtype(device: torch.device, tcfg: TrainConfig) -> torch.dtype:
    """bf16 when asked, or (auto) on CUDA; else fp32."""
    if tcfg.dtype == "bfloat16" or (tcfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def prepare_model(
    cfg: RunConfig,
    tokenizer: PreTrainedTokenizerFast,
    device: torch.device,
    attn: str,
    *,
    max_len: int,
    positions: int,
    seed: int,
    run_dir: Path,
    write_base: bool,
    sharded: bool = False,
) -> Prepared:
    """Build the starting model (trainer.model.build_model) and, with lora.enabled, add the adapters.

    A from-scratch base under LoRA is written to train/model_init/ (by the rank with `write_base`), as
    the adapter needs a base directory to be loaded onto; it is a function of the seed, so a resume
    that finds it missing writes the same weights again. `sharded` (FSDP) keeps every weight fp32: FSDP
    shards need one dtype per block, and its mixed-precision policy computes in bf16.
    """
    lcfg = cfg.lora
    if not lcfg.enabled:
        model = build_model(
            cfg.model, tokenizer, max_seq_len=max_len, positions=positions, attn=attn, seed=seed
        )
        _checkpointing(model, cfg.train)
        return Prepared(model.to(device))

    from trainer.lora import add_adapters, base_fingerprint, check_quantize, quantization_config

    check_quantize(lcfg, cfg.model.path, device)
    frozen_dtype = torch.float32 if sharded else compute_dtype(device, cfg.train)
    quant = quantization_config(lcfg)
    # a pre-trained base is loaded in its frozen dtype at once (no fp32 copy first); with QLoRA the
    # layers not quantized come in bf16 (peft's k-bit preparation then keeps norms in fp32)
    load_dtype = (
        torch.bfloat16 if quant is not None else frozen_dtype if cfg.model.path is not None else torch.float32
    )
    model = build_model(
        cfg.model, tokenizer, max_seq_len=max_len, positions=positions, attn=attn, seed=seed, dtype=load_dtype,
        frozen_embeddings=True, quantization=quant,
    )  # fmt: skip
    base_dir = Path(cfg.model.path) if cfg.model.path is not None else run_dir / "train" / "model_init"
    if cfg.model.path is None and write_base and not (base_dir / "config.json").is_file():
        save_hf(model, tokenizer, base_dir)
    base_hash = base_fingerprint(model)
    peft_model = add_adapters(model, lcfg, base_dir)
    if quant is None:
        for p in model.parameters():
            if not p.requires_grad and p.dtype != frozen_dtype:
                p.data = p.data.to(frozen_dtype)
        model.to(device)
    _checkpointing(model, cfg.train)
    return Prepared(model, peft_model, base_hash, base_dir)


def _checkpointing(model: PreTrainedModel, tcfg: TrainConfig) -> None:
    # non-reentrant: works with a frozen embedding (no input that requires grad) and passes the
    # packed-segment keyword arguments through to attention
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
