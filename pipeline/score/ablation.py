"""The proxy ablation: does the selection help, on this data, for a small model?

The same small model (a tiny Llama from scratch on the run's tokenizer, or LoRA on
`select.reference_model`), from the same seeded initial weights, is trained on each arm at the same
token count and evaluated on the same held-out conversations:

- `selection`: the conversations the mix kept (curated/), each once;
- `random`: a seeded random sample of every conversation that reached the mix (selected or not);
- `tier:<tier>`: each tier alone.

Held out first: `ablation.val_fraction` of every source's conversations by a seeded hash (at least
one per source), taken from every conversation that reached the mix, so no arm trains on them. The
token count T is the selection's tokens, at most `ablation.max_tokens`; each arm walks its
conversations in seeded hash order, again from the start if it has fewer than T tokens, and cuts
the last one so the arm holds exactly T tokens. Those T tokens are cut into rows of
`ablation.batch_tokens` (a conversation cut at a row boundary continues as a new segment), one row
per optimizer step, for `ablation.epochs` passes: every arm takes the same steps on the same number
of tokens. Reported per arm: validation loss overall, per source and per tier, and greedy answers to
a few validation prompts beside the untrained model's (the before/after of each arm).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.core.parts import read_parts
from pipeline.core.rundir import claim_run_dir
from pipeline.core.stage import StageResult
from pipeline.mix.select import sample_keys


@dataclass
class AblationResult(StageResult):
    """What the ablation trained and measured (read by the report's selection section)."""

    enabled: bool = False
    model: str = ""
    tokens_per_arm: int = 0
    steps_per_arm: int = 0
    val_conversations: int = 0
    val_targets: int = 0
    #: arm -> {conversations, tokens, passes, loss, per_source, per_tier, seconds}
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the untrained model's validation loss, the same breakdown
    before: dict[str, Any] = field(default_factory=dict)
    #: [{prompt, reference, before, answers: {arm: answer}}]
    answers: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


@dataclass
class Sequence:
    conversation_id: str
    source: str
    tier: str
    ids: np.ndarray
    mask: np.ndarray


def held_out(frame: pl.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Validation rows: per source, a seeded hash below `fraction` (at least one per source of two or more)."""
    from pipeline.render.pack import val_mask

    out = np.zeros(frame.height, dtype=bool)
    src = frame["source"].to_numpy()
    cids = frame["conversation_id"].to_numpy()
    for s in np.unique(src):
        idx = np.flatnonzero(src == s)
        out[idx] = val_mask(cids[idx].tolist(), fraction, seed)
    return out


def arm_stream(seqs: list[Sequence], order: np.ndarray, budget: int) -> tuple[list[Sequence], int, float]:
    """Sequences in `order`, from the start again while short, the last cut: exactly `budget` tokens.
    Returns (sequences, distinct conversations used, passes over them)."""
    out: list[Sequence] = []
    left = budget
    total = sum(len(seqs[i].ids) for i in order)
    if total == 0 or budget <= 0:
        return out, 0, 0.0
    used: set[int] = set()
    while left > 0:
        for i in order:
            s = seqs[i]
            n = len(s.ids)
            if n == 0:
                continue
            if n > left:
                s = Sequence(s.conversation_id, s.source, s.tier, s.ids[:left], s.mask[:left])
                n = left
            out.append(s)
            used.add(int(i))
            left -= n
            if left == 0:
                break
    return out, len(used), budget / total


def rows_of(stream: list[Sequence], row_tokens: int) -> list[list[Sequence]]:
    """The stream cut into rows of exactly `row_tokens` (the last may be shorter); a sequence cut at a
    row boundary continues as a new segment in the next row."""
    rows: list[list[Sequence]] = []
    cur: list[Sequence] = []
    room = row_tokens
    for s in stream:
        start = 0
        while start < len(s.ids):
            n = min(room, len(s.ids) - start)
            cur.append(Sequence(s.conversation_id, s.source, s.tier, s.ids[start:start + n], s.mask[start:start + n]))
            start += n
            room -= n
            if room == 0:
                rows.append(cur)
                cur, room = [], row_tokens
    if cur:
        rows.append(cur)
    return rows


def _batch(row: list[Sequence]) -> Any:
    from trainer.data import Row, collate

    return collate([Row(s.ids.astype(np.int64), s.mask.astype(bool), np.array([len(s.ids)]), [s.conversation_id])
                    for s in row], 0, flat=True)  # fmt: skip


def evaluate(module: Any, device: Any, val: list[Sequence], batch_tokens: int) -> dict[str, Any]:
    """Validation loss overall, per source and per tier (target-token weighted)."""
    from pipeline.score.losses import sequence_losses

    was = module.training
    module.eval()
    res = sequence_losses(module, device, [(s.ids, s.mask.astype(bool)) for s in val], batch_tokens)
    module.train(was)

    def agg(key: str) -> dict[str, dict[str, float | int]]:
        g: dict[str, list[float]] = {}
        for s, (ls, c) in zip(val, res, strict=True):
            a = g.setdefault(getattr(s, key), [0.0, 0])
            a[0] += ls
            a[1] += c
        return {k: {"loss": round(v[0] / v[1], 5) if v[1] else None, "targets": int(v[1])} for k, v in sorted(g.items())}

    total_s, total_c = sum(r[0] for r in res), sum(r[1] for r in res)
    loss = total_s / total_c if total_c else None
    return {"loss": None if loss is None else round(loss, 5), "targets": int(total_c),
            "per_source": agg("source"), "per_tier": agg("tier")}  # fmt: skip


def _new_model(cfg: Any, run_dir: Path, max_len: int) -> tuple[Any, Any]:
    """(model, tokenizer) at its seeded initial weights: a tiny Llama on the run's tokenizer, or the
    reference model with fresh LoRA adapters."""
    import torch

    from trainer.attention import register

    ab = cfg.ablation
    if ab.model == "lora":
        from transformers import AutoModelForCausalLM

        from schemas.config_train import LoraConfig
        from trainer.lora import add_adapters
        from trainer.model import load_tokenizer

        ref = Path(cfg.select.reference_model)
        torch.manual_seed(cfg.seed)
        base = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32, attn_implementation=register())
        lcfg = LoraConfig(enabled=True, r=ab.lora_r, alpha=2.0 * ab.lora_r, dropout=0.0)
        return add_adapters(base, lcfg, ref), load_tokenizer(ref)
    from schemas.config_train import ModelConfig
    from trainer.model import build_model, load_tokenizer

    tok = load_tokenizer(Path(run_dir) / "tokenizer")
    mcfg = ModelConfig(hidden_size=ab.hidden_size, num_layers=ab.num_layers, num_heads=ab.num_heads)
    return build_model(mcfg, tok, max_seq_len=max_len, attn=register(), seed=cfg.seed), tok


def train_arm(cfg: Any, run_dir: Path, rows: list[list[Sequence]], val: list[Sequence], max_len: int,
              prompts: list[list[dict[str, str]]], before_too: bool = True
              ) -> tuple[dict[str, Any], list[str], dict[str, Any], list[str]]:
    """Train one arm from the seeded initial weights; (val after, answers after, val before, answers
    before), the last two only with `before_too` (every arm starts from the same weights)."""
    import torch

    from trainer.before_after import greedy_answers
    from trainer.loss import TargetLoss

    ab = cfg.ablation
    device = torch.device("cpu")
    model, tok = _new_model(cfg, run_dir, max_len)
    module = TargetLoss(model)
    before: dict[str, Any] = {}
    before_answers: list[str] = []
    if before_too:
        before = evaluate(module, device, val, ab.batch_tokens)
        model.eval()
        before_answers = [a["answer"] for a in greedy_answers(model, tok, prompts, ab.max_new_tokens, 256)]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ab.lr, betas=(0.9, 0.95), weight_decay=0.0)
    steps = len(rows) * ab.epochs
    warmup = max(1, steps // 10)
    step = 0
    for _ in range(ab.epochs):
        for row in rows:
            lr = ab.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            for g in opt.param_groups:
                g["lr"] = lr
            b = _batch(row)
            losses, _, _ = module(b.input_ids, b.loss_mask, b.position_ids, None, b.segments)
            loss = losses.sum() / max(1, losses.numel())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
    after = evaluate(module, device, val, ab.batch_tokens)
    model.eval()
    answers = [a["answer"] for a in greedy_answers(model, tok, prompts, ab.max_new_tokens, 256)]
    return after, answers, before, before_answers


def pool_sequences(quality: list[Path], encoded: list[Path], run_dir: Path, cfg: Any) -> tuple[pl.DataFrame, list[Sequence]]:
    """Every conversation that reached the mix, with the ids the arms train on: the encode stage's
    (scratch), or the reference model's rendering (lora)."""
    df = read_parts(quality).select("conversation_id", "origin", "source", "tier", "messages")
    enc = read_parts(encoded).select("origin", "input_ids", "loss_mask")
    df = df.join(enc, on="origin", how="inner", maintain_order="left").unique("conversation_id", keep="first",
                                                                            maintain_order=True)
    df = df.sort("conversation_id")
    limit = cfg.ablation.max_seq_len
    if cfg.ablation.model == "lora":
        from pipeline.score.reference import reference_pairs

        pairs = reference_pairs(df["messages"].to_list(), Path(cfg.select.reference_model), cfg)
        ids, masks = pairs.ids, pairs.masks
    else:
        ids = [np.asarray(i, dtype=np.int64) for i in df["input_ids"].to_list()]
        masks = [np.asarray(m, dtype=np.uint8) for m in df["loss_mask"].to_list()]
    tiers = df["tier"].cast(pl.String).to_list()
    seqs = [Sequence(c, s, t, i[:limit], m[:limit])
            for c, s, t, i, m in zip(df["conversation_id"].to_list(), df["source"].to_list(), tiers, ids, masks,
                                     strict=True)]  # fmt: skip
    return df.drop("input_ids", "loss_mask"), seqs


def plan_arms(frame: pl.DataFrame, seqs: list[Sequence], selected: set[str], cfg: Any
              ) -> tuple[dict[str, tuple[list[Sequence], int, float]], np.ndarray, int]:
    """(arm -> (stream, conversations, passes), validation mask, tokens per arm)."""
    ab = cfg.ablation
    is_val = held_out(frame, ab.val_fraction, cfg.seed + 17)
    keys = sample_keys(frame["conversation_id"], cfg.seed + 23)
    order = np.argsort(keys, kind="stable")
    train = order[~is_val[order]]
    sel = np.array([seqs[i].conversation_id in selected for i in train], dtype=bool)
    sel_order = train[sel]
    budget = min(ab.max_tokens, int(sum(len(seqs[i].ids) for i in sel_order)))
    arms = {"selection": arm_stream(seqs, sel_order, budget), "random": arm_stream(seqs, train, budget)}
    if ab.tiers:
        tiers = np.array([s.tier for s in seqs])
        for t in sorted(set(tiers[train].tolist())):
            arms[f"tier:{t}"] = arm_stream(seqs, train[tiers[train] == t], budget)
    return arms, is_val, budget


def run_ablation(quality: list[Path], encoded: list[Path], mixed: list[Path], run_dir: Path, cfg: Any
                 ) -> AblationResult:
    """Train and evaluate every arm (see the module docstring); writes work/ablation/stats.json."""
    t0 = time.perf_counter()
    rd = claim_run_dir(run_dir)
    result = AblationResult(stage="ablation", enabled=cfg.ablation.enabled)
    out = rd.stage_dir("ablation") / "stats.json"
    if not cfg.ablation.enabled or not mixed:
        result.write(out)
        return result
    import torch

    from trainer.before_after import split_reference

    ab = cfg.ablation
    threads = torch.get_num_threads()
    if ab.num_threads:
        torch.set_num_threads(ab.num_threads)
    try:
        frame, seqs = pool_sequences(quality, encoded, rd.root, cfg)
        selected = set(read_parts(mixed)["conversation_id"].to_list())
        arms, is_val, budget = plan_arms(frame, seqs, selected, cfg)
        val = [seqs[i] for i in np.flatnonzero(is_val)]
        msgs = frame["messages"].to_list()
        prompts, refs = [], []
        for i in np.flatnonzero(is_val)[: ab.num_prompts]:
            m = [{"role": x["role"], "content": x["content"] or ""} for x in msgs[i] if x["role"] in ("system", "user", "assistant")]
            if any(x["role"] == "assistant" for x in m):
                p, r = split_reference(m)
                prompts.append(p)
                refs.append(r)
        max_len = max(ab.max_seq_len, ab.batch_tokens)
        result.model = (f"LoRA r={ab.lora_r} on {cfg.select.reference_model}" if ab.model == "lora" else
                        f"Llama from scratch: {ab.num_layers} layers x {ab.hidden_size} wide, the run's tokenizer")
        result.tokens_per_arm = budget
        result.val_conversations = len(val)
        answers: dict[str, list[str]] = {}
        before_answers: list[str] = []
        done: dict[tuple, tuple] = {}
        for name, (stream, n_conv, passes) in arms.items():
            rows = rows_of(stream, ab.batch_tokens)
            t1 = time.perf_counter()
            # an arm whose stream is another's (a selection that kept everything is the random arm) is
            # trained once: same initial weights, same rows, same result
            same = tuple((s.conversation_id, len(s.ids)) for s in stream)
            if same not in done:
                done[same] = train_arm(cfg, rd.root, rows, val, max_len, prompts, before_too=not done)
            after, ans, before, b_ans = done[same]
            result.steps_per_arm = len(rows) * ab.epochs
            if before:
                result.before, before_answers = before, b_ans
            answers[name] = ans
            result.arms[name] = {"conversations": n_conv, "tokens": sum(len(s.ids) for s in stream),
                                 "passes": round(passes, 3), **after, "seconds": round(time.perf_counter() - t1, 2)}
        result.val_targets = int(result.before.get("targets", 0))
        result.answers = [
            {"prompt": p[-1]["content"] if p else "", "reference": r, "before": before_answers[k] if k < len(before_answers) else "",
             "answers": {a: v[k] for a, v in answers.items() if k < len(v)}}
            for k, (p, r) in enumerate(zip(prompts, refs, strict=True))
        ]  # fmt: skip
        result.note = (f"every arm: {budget:,} tokens, {result.steps_per_arm} steps of {ab.batch_tokens} tokens; "
                       f"validation: {len(val)} held-out conversations of every source; passes > 1: an arm with fewer "
                       "tokens than the budget repeats its data")
        result.records_in = frame.height
        result.records_out = len(arms)
    finally:
        torch.set_num_threads(threads)
    result.seconds = round(time.perf_counter() - t0, 3)
    result.write(out)
    return result
