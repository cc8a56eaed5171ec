"""LoRA through peft: adapters on a frozen base, the base's fingerprint, the adapter directory, the merge.

`add_adapters` injects peft's LoRA layers into the model in place (the Hugging Face model object stays
the one the loop, the loss and DDP work with; the PeftModel around it is kept for saving). Only the
adapters require gradients; the base, embeddings included, is frozen. Checkpoints then hold the
trainable tensors alone (trainer.checkpoint), with `base_fingerprint`, a hash of every base tensor,
so a resume on another base is refused.

Output: `model/adapter/` (adapter_config.json naming the base directory, adapter_model.safetensors,
the tokenizer), loadable with `PeftModel.from_pretrained(base, "model/adapter")`; with `lora.merge`,
`model/` also holds the merged model, made the way a user would make it: the base loaded afresh in
fp32 from its directory, the saved adapter loaded onto it with peft, `merge_and_unload()`.

QLoRA (`lora.quantize = "4bit"`): the base is loaded in NF4 through bitsandbytes, on CUDA only;
`check_quantize` names everything missing before anything is loaded.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch
import xxhash
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from schemas.config_train import LoraConfig
from trainer.lora_fused import fuse
from trainer.model import ModelError, save_hf, set_generation_ids

ADAPTER_DIR = "adapter"


def require_peft() -> Any:
    """The peft module, or a ModelError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ModelError("lora.enabled = true needs peft: pip install peft") from None
    return peft


def check_quantize(lcfg: LoraConfig, model_path: Path | None, device: torch.device) -> None:
    """With lora.quantize = "4bit": LoRA on, a pre-trained model, a CUDA device, bitsandbytes installed;
    one error listing whatever is missing."""
    if lcfg.quantize == "none":
        return
    missing = []
    if not lcfg.enabled:
        missing.append("lora.enabled = true (the quantized base is frozen; only adapters train)")
    if model_path is None:
        missing.append("model.path, a pre-trained model to quantize")
    if device.type != "cuda":
        missing.append(
            f"a CUDA GPU (this run's device is {device.type}; bitsandbytes' 4-bit kernels need CUDA)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes (pip install bitsandbytes)")
    if missing:
        raise ModelError(f"lora.quantize = {lcfg.quantize!r} needs " + "; ".join(missing))


def quantization_config(lcfg: LoraConfig) -> Any:
    """NF4 weights, double quantization, bf16 compute: the QLoRA recipe."""
    if lcfg.quantize == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip


def base_fingerprint(model: nn.Module) -> str:
    """A hash of every tensor of the base (names, dtypes, shapes, bytes), taken before adapters are added."""
    h = xxhash.xxh3_128()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def add_adapters(model: PreTrainedModel, lcfg: LoraConfig, base_dir: Path | None) -> Any:
    """Inject LoRA into `model` in place and freeze everything else; returns the PeftModel around it.

    `base_dir` is written into the adapter's config as the base to load it onto.
    """
    peft = require_peft()
    targets = lcfg.target_modules if isinstance(lcfg.target_modules, str) else list(lcfg.target_modules)
    config = peft.LoraConfig(
        r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout, target_modules=targets, bias="none",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    if getattr(model, "is_loaded_in_4bit", False):
        # QLoRA: fp32 norms and an input that requires grad, as peft's recipe prepares a k-bit model
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as e:  # peft's "Target modules ... not found in the base model"
        raise ModelError(f"lora.target_modules = {lcfg.target_modules!r}: {e}") from None
    if base_dir is not None:
        wrapped.peft_config["default"].base_model_name_or_path = str(Path(base_dir).resolve())
    fuse(wrapped)  # one autograd node per adapted linear where it is plain LoRA (trainer.lora_fused)
    return wrapped


def adapted_modules(model: nn.Module) -> list[str]:
    """Names of the modules that carry an adapter (for the log and the tests)."""
    return sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))


def save_adapter(
    peft_model: Any,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """The PEFT adapter directory (adapter_config.json, adapter_model.safetensors) and the tokenizer.

    `state_dict`: the adapter tensors by the inner model's names (gathered from FSDP shards).
    """
    if state_dict is not None:  # the PeftModel's names carry its wrapper's prefix
        state_dict = {f"base_model.model.{k}": v for k, v in state_dict.items()}
    peft_model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def merged_model(adapter_dir: Path, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """The base named by the adapter's config, loaded in fp32, with the adapter loaded onto it and merged."""
    peft = require_peft()
    from transformers import AutoModelForCausalLM

    base_dir = peft.PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    set_generation_ids(merged, tokenizer)
    return merged


def save_lora(
    peft_model: Any,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    *,
    merge: bool,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """`out_dir/adapter/` and, with `merge`, the merged model in `out_dir` itself, written atomically.

    The adapter is written first and the merge reads it back from disk, so the merged model is exactly
    what a user gets from the saved adapter and the base.
    """
    out_dir = Path(out_dir)
    staged = out_dir.with_name(f".{out_dir.name}.adapter.tmp")
    if staged.exists():
        shutil.rmtree(staged)
    save_adapter(peft_model, tokenizer, staged, state_dict)
    merged = merged_model(staged, tokenizer) if merge else None
    save_hf(merged, tokenizer, out_dir, extra=lambda tmp: staged.rename(tmp / ADAPTER_DIR))
    return out_dir
