"""What training did: the starting and the trained model answer the same validation prompts, and
the validation loss per source and tier before and after (from the trainer's train/eval.json).

The prompts are a fixed, seeded choice among the validation conversations (the conversations in
`shards/val-*.parquet`), taken round-robin over the sources so each source shows up; when there
are fewer than asked, training conversations fill up, each row saying its `split`. A prompt is the conversation up to its last assistant turn, and
that turn is the reference answer. Decoding is greedy (`before_after.max_new_tokens`), rendered
with each model directory's own chat template.

Under LoRA the starting model is the base the adapter names (no copy in train/model_init/), and the
trained one is model/ when it holds the merged model, else the base with model/adapter/ loaded onto it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core.rundir import RunDir, atomic_write_json
from pipeline.mix.select import sample_keys
from schemas.config import RunConfig


def val_conversation_ids(run_dir: Path) -> set[str]:
    """conversation_ids in the validation shards (empty when there are none)."""
    ids: set[str] = set()
    for p in sorted(RunDir.of(run_dir).shards.glob("val-*.parquet")):
        ids.update(
            pl.read_parquet(p, columns=["conversation_ids"])["conversation_ids"].explode().drop_nulls()
        )
    return ids


def choose_prompts(run_dir: Path, n: int, seed: int) -> pl.DataFrame:
    """`n` conversations (conversation_id, origin, source, tier, messages, split): validation ones
    first, a seeded choice by conversation hash taken round-robin over sources; when the
    validation split has fewer than `n`, training conversations fill up, marked split = "train"."""
    parts = sorted(RunDir.of(run_dir).curated.glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(
            f"{RunDir.of(run_dir).curated}: no curated conversations to take prompts from"
        )
    cols = ["conversation_id", "origin", "source", "tier", "messages"]
    df = pl.concat([pl.read_parquet(p, columns=cols) for p in parts]).unique("conversation_id", keep="first")
    val = val_conversation_ids(run_dir)
    df = df.with_columns(
        pl.when(pl.col("conversation_id").is_in(list(val)))
        .then(pl.lit("val"))
        .otherwise(pl.lit("train" if val else "curated"))
        .alias("split"),
        pl.Series("_key", sample_keys(df["conversation_id"], seed)),
    )
    df = df.sort("_key", "origin").with_columns(pl.int_range(pl.len()).over("split", "source").alias("_turn"))
    return df.sort(pl.col("split") != "val", "_turn", "_key", "origin").head(n).drop("_key", "_turn")


def split_reference(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """(prompt turns, reference answer): everything before the last assistant turn, and that turn.
    The prompt turns keep their canonical fields (tool calls, tool results, reasoning), without the
    ones that are null."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = [{k: v for k, v in m.items() if v is not None} for m in messages[:last]]
    return prompt, messages[last]["content"]


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: str | None = None) -> str:
    """The prompt as the model's chat template renders it, ready for the assistant's answer: tool calls,
    tool results and the offered tools passed as transformers passes them (pipeline.render.templates)."""
    if getattr(tokenizer, "chat_template", None):
        from pipeline.render.templates import template_messages, template_tools

        return tokenizer.apply_chat_template(template_messages(messages), tools=template_tools(tools),
                                             add_generation_prompt=True, tokenize=False)
    # No template saved with the model: a plain transcript, so the comparison still runs.
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def load_model(model_dir: Path, fallback_tokenizer_dirs: list[Path]) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face directory; the tokenizer from the first directory
    that has one (a starting model may have been saved without it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no Hugging Face model here (config.json missing)")
    for d in [model_dir, *fallback_tokenizer_dirs]:
        if (d / "tokenizer.json").exists() or (d / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(d)
            break
    else:
        raise FileNotFoundError(
            f"{model_dir}: no tokenizer next to the model, nor in {fallback_tokenizer_dirs}"
        )
    # a PEFT adapter directory loads as its base with the adapter on (transformers' peft integration)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tokenizer


def adapter_base(adapter_dir: Path) -> Path | None:
    """The base model directory a PEFT adapter names (None without an adapter)."""
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.is_file():
        return None
    base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return Path(base) if base else None


def compared_models(rd: RunDir) -> dict[str, tuple[Path, str]]:
    """{"before": (directory, label), "after": (directory, label)}: the starting and the trained model."""
    adapter = rd.model / "adapter"
    base = adapter_base(adapter)
    before = rd.root / "train" / "model_init"
    if not (before / "config.json").exists():
        if base is None:
            raise FileNotFoundError(
                f"{before}: the starting model was not saved; set train.save_initial_model = true and train again"
            )
        before = base
    if (rd.model / "config.json").exists() or base is None:
        after = (rd.model, str(rd.model))
    else:  # LoRA without merging: the base with the adapter on
        after = (adapter, f"{base} + {adapter}")
    return {"before": (before, str(before)), "after": after}


def shown_answer(text: str) -> str:
    """The answer as a reader should see it: stripped, but a whitespace-only answer (what a barely
    trained model often emits under greedy decoding) is said, not shown as an empty cell."""
    answer = text.strip()
    if text and not answer:
        return f"(whitespace only: {text[:12]!r}{'…' if len(text) > 12 else ''})"
    return answer


def greedy_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, Any]]],
    max_new_tokens: int,
    max_prompt_tokens: int,
    tools: list[str | None] | None = None,
) -> list[dict[str, Any]]:
    """Greedy answers, one prompt at a time (no padding, so no pad-token assumptions); `tools`: each
    prompt's offered tools (the curated `tools` column), if any."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    out = []
    for msgs, offered in zip(prompts, tools or [None] * len(prompts), strict=True):
        ids = tokenizer(render_prompt(tokenizer, msgs, offered), add_special_tokens=False)["input_ids"]
        truncated = len(ids) > max_prompt_tokens
        ids = ids[-max_prompt_tokens:]
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids], dtype=torch.long),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        new = gen[0, len(ids) :].tolist()
        out.append(
            {
                "answer": shown_answer(tokenizer.decode(new, skip_special_tokens=True)),
                "new_tokens": len(new),
                "stopped": eos is not None and eos in new,
                "prompt_truncated": truncated,
            }
        )
    return out


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def loss_table(eval_state: dict[str, Any]) -> dict[str, Any]:
    """Val loss before (first evaluation) and after (last) overall, per source and per tier."""
    first, last = eval_state.get("initial") or {}, eval_state.get("final") or {}

    def pair(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        before, after = _finite(a.get("loss")), _finite(b.get("loss"))
        change = after - before if before is not None and after is not None else None
        return {"before": before, "after": after, "change": change, "target_tokens": b.get("target_tokens")}

    table: dict[str, Any] = {
        "before_step": first.get("step"),
        "after_step": last.get("step"),
        "overall": pair(first, last),
    }
    for key in ("per_source", "per_tier"):
        a, b = first.get(key) or {}, last.get(key) or {}
        table[key] = {k: pair(a.get(k) or {}, b.get(k) or {}) for k in sorted(set(a) | set(b))}
    return table


def compare(run_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """Answer the fixed validation prompts with train/model_init/ (before) and model/ (after), put
    them next to the reference answers and the val losses; write report/before_after.json.
    Returns None (and writes nothing) when before_after.enabled is false."""
    rd = RunDir.of(run_dir)
    bcfg = cfg.before_after
    if not bcfg.enabled:
        return None
    models = compared_models(rd)
    chosen = choose_prompts(rd.root, bcfg.num_prompts, cfg.seed)
    split = [split_reference(m) for m in chosen["messages"].to_list()]
    prompts = [p for p, _ in split]
    answers: dict[str, list[dict[str, Any]]] = {}
    for side, (model_dir, _) in models.items():
        model, tokenizer = load_model(model_dir, [rd.model, rd.model / "adapter", rd.tokenizer])
        answers[side] = greedy_answers(model, tokenizer, prompts, bcfg.max_new_tokens, bcfg.max_prompt_tokens,
                                       chosen["tools"].to_list() if "tools" in chosen.columns else None)
        del model
    eval_path = rd.root / "train" / "eval.json"
    losses = loss_table(json.loads(eval_path.read_text())) if eval_path.exists() else None
    rows = [
        {
            "conversation_id": r["conversation_id"],
            "origin": r["origin"],
            "source": r["source"],
            "tier": r["tier"],
            "split": r["split"],
            "prompt": prompt,
            "reference": reference,
            "before": before["answer"],
            "after": after["answer"],
            "before_tokens": before["new_tokens"],
            "after_tokens": after["new_tokens"],
            "prompt_truncated": before["prompt_truncated"],
        }
        for r, (prompt, reference), before, after in zip(
            chosen.iter_rows(named=True), split, answers["before"], answers["after"], strict=True
        )
    ]
    result = {
        "models": {side: label for side, (_, label) in models.items()},
        "decoding": {
            "greedy": True,
            "max_new_tokens": bcfg.max_new_tokens,
            "max_prompt_tokens": bcfg.max_prompt_tokens,
        },
        "prompt_splits": dict(chosen.group_by("split").len().sort("split").iter_rows()),
        "prompts": rows,
        "val_loss": losses,
    }
    atomic_write_json(rd.report / "before_after.json", result)
    return result
