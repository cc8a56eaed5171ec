"""Model and tokenizer loading, device and attention choice, and saving a Hugging Face directory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from schemas.config_train import ModelConfig, TrainConfig


class ModelError(ValueError):
    """A model or tokenizer the trainer cannot use; the message says what to fix."""


def load_tokenizer(tok_dir: Path) -> PreTrainedTokenizerFast:
    """The run's tokenizer (tokenizer.json + tokenizer_config.json with its chat_template).

    Built directly from the two files rather than through AutoTokenizer so that a minimal
    tokenizer_config.json (only the chat template and special tokens) is enough.
    """
    tok_file = tok_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise ModelError(f"{tok_file}: not found; the run directory's tokenizer/ must hold tokenizer.json")
    conf_file = tok_dir / "tokenizer_config.json"
    conf = json.loads(conf_file.read_text(encoding="utf-8")) if conf_file.is_file() else {}
    template = conf.get("chat_template")
    jinja = tok_dir / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    special = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = conf.get(key)
        if isinstance(value, dict):  # AddedToken serialisation
            value = value.get("content")
        if value:
            special[key] = value
    if conf.get("model_max_length"):
        special["model_max_length"] = conf["model_max_length"]
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), chat_template=template, **special)
    vocab = tok.get_vocab()
    if tok.eos_token is None:
        for cand in ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"):
            if cand in vocab:
                tok.eos_token = cand
                break
    if tok.pad_token is None:
        for cand in ("<|pad|>", "<pad>"):
            if cand in vocab:
                tok.pad_token = cand
                break
        else:
            if tok.eos_token is not None:
                tok.pad_token = tok.eos_token
    return tok


def resolve_device(train: TrainConfig) -> torch.device:
    """cpu, cuda, or (auto) cuda when available; a clear error when cuda is asked for and absent."""
    if train.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device = 'cuda' but no CUDA device is available; set train.device = 'auto' or 'cpu'")
    if train.device == "cpu" or (train.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def choose_attn(want: str, device_type: str, *, flash_attn: bool, flex: bool) -> str:
    """The attention for packed rows: flash-attn's varlen kernels on CUDA when installed, else
    FlexAttention with a document mask on CUDA, else per-segment SDPA ("varlen"); "sdpa"/"eager" pad
    the rows and use a block-diagonal mask. A choice the device or the installation cannot run is an error."""
    if want == "auto":
        if device_type == "cuda" and flash_attn:
            return "flash_attention_2"
        if device_type == "cuda" and flex:
            return "flex"
        return "varlen"
    if want in ("flash_attention_2", "flex") and device_type != "cuda":
        raise ModelError(f"train.attn_implementation = {want!r} needs CUDA; use 'varlen' (or 'auto') on the CPU")
    if want == "flash_attention_2" and not flash_attn:
        raise ModelError("train.attn_implementation = 'flash_attention_2' needs flash-attn: pip install flash-attn")
    if want == "flex" and not flex:
        raise ModelError("train.attn_implementation = 'flex' needs torch >= 2.5 (torch.nn.attention.flex_attention)")
    return want


def resolve_attn(train: TrainConfig, device: torch.device) -> str:
    """The transformers attn_implementation for `choose_attn`'s choice (ours registered under their names)."""
    from trainer.attention import flash_attn_available, flex_available, register, register_flex

    name = choose_attn(train.attn_implementation, device.type, flash_attn=flash_attn_available(), flex=flex_available())
    if name == "varlen":
        return register()
    if name == "flex":
        return register_flex()
    return name


def build_model(
    mcfg: ModelConfig,
    tokenizer: PreTrainedTokenizerFast,
    *,
    max_seq_len: int,
    attn: str,
    seed: int,
    positions: int | None = None,
    dtype: torch.dtype = torch.float32,
    frozen_embeddings: bool = False,
    quantization: object | None = None,
) -> PreTrainedModel:
    """The starting model: loaded from `model.path`, or a Llama built from the config and seeded init.

    `max_seq_len` is the longest row to train on; `positions` (default: the same) sizes a new model's
    max_position_embeddings. Embeddings are resized when the tokenizer has more tokens than the model
    (a trained tokenizer with new special tokens), unless they stay frozen (LoRA), where new rows could
    never be learnt: that is an error. Weights are fp32 unless `dtype` says otherwise (a frozen base in
    bf16); `quantization` is a transformers quantization config (QLoRA), which places the weights itself.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if mcfg.path is not None:
        if not (Path(mcfg.path) / "config.json").is_file():
            raise ModelError(f"model.path = {str(mcfg.path)!r}: no config.json there; give a local HF model directory")
        extra = {}
        if quantization is not None:  # bitsandbytes places the weights itself, on this rank's GPU
            extra = {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}
        model = AutoModelForCausalLM.from_pretrained(mcfg.path, dtype=dtype, attn_implementation=attn, **extra)
        rows = model.get_input_embeddings().num_embeddings
        if rows < len(tokenizer):
            if frozen_embeddings:
                raise ModelError(
                    f"the run's tokenizer has {len(tokenizer)} tokens, model.path {str(mcfg.path)!r} embeds {rows}: "
                    "LoRA keeps the embeddings frozen, so new tokens could not be learnt; curate with the model's "
                    "own tokenizer and template (leave tokenizer.path and template.name unset), or turn lora off"
                )
            model.resize_token_embeddings(len(tokenizer))
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=mcfg.hidden_size,
            intermediate_size=mcfg.intermediate_size or 3 * mcfg.hidden_size,
            num_hidden_layers=mcfg.num_layers,
            num_attention_heads=mcfg.num_heads,
            num_key_value_heads=mcfg.num_kv_heads or mcfg.num_heads,
            max_position_embeddings=mcfg.max_position_embeddings or positions or max_seq_len,
            rms_norm_eps=mcfg.rms_norm_eps,
            rope_theta=mcfg.rope_theta,
            tie_word_embeddings=mcfg.tie_word_embeddings,
            initializer_range=mcfg.init_std,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
        config._attn_implementation = attn
        model = LlamaForCausalLM(config)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_seq_len > limit:
        raise ModelError(
            f"shard rows are up to {max_seq_len} tokens but the model's max_position_embeddings is {limit}: "
            "lower pack.max_seq_len or raise model.max_position_embeddings"
        )
    set_generation_ids(model, tokenizer)
    if quantization is not None:
        return model
    return model.float() if dtype == torch.float32 else model.to(dtype)


def set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """The generation config's special ids are the run tokenizer's (a saved model stops where it should)."""
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id


def save_hf(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    extra: Callable[[Path], None] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a Hugging Face directory (config, safetensors weights, tokenizer with chat template) atomically.

    Written next to the target and renamed into place, so a reader never sees half a model. `extra`
    writes more into the temporary directory first (a LoRA adapter in adapter/); `model=None` writes
    only the tokenizer and `extra`; `state_dict` replaces the model's own tensors (gathered from shards).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if model is not None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        extra(tmp)
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)
    return out_dir
