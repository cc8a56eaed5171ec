"""The training loop: `train` (fit on the train shards), `evaluate` (val loss by source and tier), `lr_at`.

One optimizer step = world_size x grad_accum micro-batches of `micro_batch_size` packed rows. Its
loss is sum(target-token CE) / (target tokens of the whole step, all ranks), so accumulation and
data parallelism change nothing but speed. Rank 0 alone writes; every rank reads the same shards
and takes its own micro-batches of each step.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist
from torch import nn

from pipeline.core.rundir import atomic_write_json
from schemas.config import RunConfig
from schemas.config_train import TrainConfig
from trainer.attention import VARLEN
from trainer.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from trainer.data import Batch, ShardSet, StepPlan, TrainStream, collate, eval_batches
from trainer.inputs import conversation_meta, read_manifest, shard_paths
from trainer.loss import TargetLoss, step_scale
from trainer.model import build_model, load_tokenizer, resolve_attn, resolve_device, save_hf

Log = Callable[[str], None]


def lr_at(step: int, total_steps: int, tcfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine to lr x min_lr_ratio."""
    warm = min(tcfg.warmup_steps, max(0, total_steps - 1))
    if step < warm:
        return tcfg.lr * (step + 1) / warm
    span = max(1, total_steps - warm - 1)
    progress = min(1.0, (step - warm) / span)
    floor = tcfg.lr * tcfg.min_lr_ratio
    return floor + (tcfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _amp(device: torch.device, tcfg: TrainConfig) -> contextlib.AbstractContextManager:
    if tcfg.dtype == "bfloat16" or (tcfg.dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _all_reduce(values: list[float], world: int, device: torch.device) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def forward_backward(
    module: nn.Module,
    micro_batches: list[Batch],
    *,
    global_targets: int,
    world_size: int = 1,
    device: torch.device | None = None,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """Accumulate the gradients of one optimizer step's micro-batches (this rank's); returns the loss sum.

    Each micro-batch's summed loss is scaled by `step_scale`, so the accumulated gradient is that of
    sum(loss) / global_targets whatever the cut into micro-batches and ranks. Under DDP the gradient
    all-reduce runs on the last micro-batch only (`no_sync` before).
    """
    device = device or torch.device("cpu")
    scale = step_scale(global_targets, world_size)
    total = 0.0
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()
        b = mb.to(device)
        with sync:
            with amp():
                losses, _, _ = module(b.input_ids, b.loss_mask, b.position_ids, b.attention_mask, b.segments)
            loss_sum = losses.sum()
            (loss_sum * scale).backward()
        total += float(loss_sum.detach())
    return total


@torch.no_grad()
def segment_losses(module: nn.Module, batch: Batch, device: torch.device) -> dict[str, list[float]]:
    """{conversation_id: [loss sum, target tokens]} of one batch (a conversation repeated sums up)."""
    b = batch.to(device)
    losses, rows, pos = module(b.input_ids, b.loss_mask, b.position_ids, b.attention_mask, b.segments)
    seg = b.segment_ids[rows, pos]
    n = len(batch.conversation_ids)
    sums = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, seg, losses.double())
    counts = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, seg, torch.ones_like(losses).double())
    out: dict[str, list[float]] = {}
    for cid, s, c in zip(batch.conversation_ids, sums.tolist(), counts.tolist(), strict=True):
        acc = out.setdefault(cid, [0.0, 0.0])
        acc[0] += s
        acc[1] += c
    return out


def _summarise(per_conv: dict[str, list[float]], meta: dict[str, tuple[str, str]], step: int) -> dict[str, Any]:
    def agg(key_of: Callable[[str], str]) -> dict[str, dict[str, float]]:
        groups: dict[str, list[float]] = {}
        for cid, (s, c) in per_conv.items():
            g = groups.setdefault(key_of(cid), [0.0, 0.0, 0])
            g[0] += s
            g[1] += c
            g[2] += 1
        return {
            k: {"loss": s / c if c else None, "target_tokens": int(c), "conversations": n}
            for k, (s, c, n) in sorted(groups.items())
        }

    total_s = sum(s for s, _ in per_conv.values())
    total_c = sum(c for _, c in per_conv.values())
    loss = total_s / total_c if total_c else None  # None, not NaN: eval.json stays valid JSON
    return {
        "step": step,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)) if loss is not None else None,
        "target_tokens": int(total_c),
        "conversations": len(per_conv),
        "per_source": agg(lambda c: meta.get(c, ("unknown", "unknown"))[0]),
        "per_tier": agg(lambda c: meta.get(c, ("unknown", "unknown"))[1]),
    }


def evaluate(
    module: nn.Module,
    shards: ShardSet,
    meta: dict[str, tuple[str, str]],
    *,
    step: int,
    batch_rows: int,
    pad_id: int,
    device: torch.device,
    tcfg: TrainConfig,
    flat: bool = False,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Validation loss overall, per source and per tier (conversation_id -> source/tier via curated/)."""
    per_conv: dict[str, list[float]] = {}
    was_training = module.training
    module.eval()
    for rows in eval_batches(shards, batch_rows, rank, world, tcfg.eval_max_rows):
        with _amp(device, tcfg):
            part = segment_losses(module, collate(rows, pad_id, flat=flat), device)
        for cid, (s, c) in part.items():
            acc = per_conv.setdefault(cid, [0.0, 0.0])
            acc[0] += s
            acc[1] += c
    module.train(was_training)
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, per_conv)
        per_conv = {}
        for part in gathered:
            for cid, (s, c) in part.items():
                acc = per_conv.setdefault(cid, [0.0, 0.0])
                acc[0] += s
                acc[1] += c
    return _summarise(per_conv, meta, step)


def _dist_setup(device_pref: str) -> tuple[int, int, int, bool]:
    """(rank, world, local_rank, we_initialised): joins torchrun's process group when launched by it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local, True


class _Metrics:
    """train/metrics.jsonl, one JSON object per logged step; on resume, lines past the checkpoint are cut."""

    def __init__(self, path: Path, active: bool, resume_step: int | None) -> None:
        self.path, self.active = path, active
        if not active:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[bytes] = []
        if resume_step is not None and path.is_file():
            kept = [ln for ln in path.read_bytes().splitlines() if ln and orjson.loads(ln)["step"] <= resume_step]
        path.write_bytes(b"".join(ln + b"\n" for ln in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.active:
            with open(self.path, "ab") as f:
                f.write(orjson.dumps(row) + b"\n")


def _progress(total: int, initial: int, active: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not active, unit="step", dynamic_ncols=True, leave=True)


def train(run_dir: Path, cfg: RunConfig, *, resume: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Train on the run directory's shards; writes model/, train/metrics.jsonl, train/eval.json, checkpoints.

    Works in one process or under torchrun (DDP: gloo on CPU, nccl on CUDA). `resume=True` continues
    from the newest complete checkpoint in train/checkpoints/ (a fresh start when there is none).
    `log` receives human-readable progress lines (rank 0 only). Returns a summary dict.
    """
    run_dir = Path(run_dir)
    tcfg = cfg.train
    manifest = read_manifest(run_dir)
    splits = shard_paths(run_dir, manifest)
    rank, world, _local, own_group = _dist_setup(tcfg.device)
    is_main = rank == 0
    say: Log = (log or _default_log) if is_main else (lambda _line: None)
    if world == 1 and tcfg.nproc > 1:
        # not launched by torchrun: one process accumulating nproc x as many micro-batches takes
        # exactly the same steps (the loss is normalised over the whole step either way)
        say(f"train.nproc={tcfg.nproc} but not under torchrun: one process with grad_accum x {tcfg.nproc}")
        tcfg = tcfg.model_copy(update={"grad_accum": tcfg.grad_accum * tcfg.nproc, "nproc": 1})
        cfg = cfg.model_copy(update={"train": tcfg})
    try:
        # the row capacity the shards were packed for sizes a from-scratch model's positions
        seq_cap = int(manifest.get("max_seq_len") or cfg.pack.max_seq_len)
        return _train(run_dir, cfg, splits, seq_cap, rank, world, is_main, resume, say)
    finally:
        if own_group:
            dist.destroy_process_group()


def _default_log(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)


def _train(
    run_dir: Path,
    cfg: RunConfig,
    splits: dict[str, list[Path]],
    seq_cap: int,
    rank: int,
    world: int,
    is_main: bool,
    resume: bool,
    say: Log,
) -> dict[str, Any]:
    tcfg, mcfg = cfg.train, cfg.model
    seed = tcfg.seed if tcfg.seed is not None else cfg.seed
    device = resolve_device(tcfg)
    if device.type == "cpu":
        threads = tcfg.num_threads or (max(1, (os.cpu_count() or 1) // world) if world > 1 else 0)
        if threads:
            torch.set_num_threads(threads)
    attn = resolve_attn(tcfg, device)
    # varlen attention: one concatenated sequence per micro-batch, no padding, no mask
    flat = attn in ("flash_attention_2", VARLEN)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    train_shards = ShardSet(splits["train"], cache_units=tcfg.shuffle_window + 1)
    val_shards = ShardSet(splits["val"]) if splits["val"] else None
    if val_shards is not None and val_shards.n_rows == 0:
        val_shards = None
    if train_shards.n_rows == 0:
        raise ValueError(f"{run_dir}: the train shards hold no rows; nothing to train on")
    max_len = max(train_shards.max_row_len(), val_shards.max_row_len() if val_shards else 0)
    model = build_model(
        mcfg, tokenizer, max_seq_len=max_len, positions=max(seq_cap, max_len), attn=attn, seed=seed
    ).to(device)
    n_params = sum(p.numel() for p in model.parameters())

    plan = StepPlan(tcfg.micro_batch_size, tcfg.grad_accum, world)
    stream = TrainStream(train_shards, plan, seed, tcfg.shuffle_window)
    total_steps = tcfg.max_steps or max(1, math.ceil(tcfg.epochs * stream.steps_per_epoch))

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr_at(0, total_steps, tcfg),
        betas=tcfg.betas,
        eps=tcfg.eps,
        foreach=True,
    )

    train_dir = run_dir / "train"
    ckpt_root = train_dir / "checkpoints"
    start_step = 0
    eval_state: dict[str, Any] = {"history": []}
    found = list_checkpoints(ckpt_root) if resume else []
    if found:
        state = load_checkpoint(found[-1], model, optimizer)
        if state.get("rows_per_step") != plan.rows_per_step:
            raise ValueError(
                f"{found[-1]}: saved with {state.get('rows_per_step')} rows per step, now "
                f"{plan.rows_per_step} (micro_batch_size x grad_accum x processes); resume with the same "
                "settings or start a fresh run without --resume"
            )
        start_step = state["step"]
        eval_state = state.get("eval_state", eval_state)
        say(f"resumed from {found[-1].name} (step {start_step}/{total_steps})")
    elif resume:
        say("no checkpoint to resume from; starting fresh")

    module: nn.Module = TargetLoss(model)
    if tcfg.compile:
        module = torch.compile(module)
    # evaluation runs outside DDP: ranks may see different numbers of val batches, and DDP's
    # forward is a collective
    eval_module = module
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    if is_main and tcfg.save_initial_model and start_step == 0:
        save_hf(model, tokenizer, train_dir / "model_init")
    metrics = _Metrics(train_dir / "metrics.jsonl", is_main, start_step if found else None)

    def checkpoint_state(step: int) -> dict[str, Any]:
        """What a resume needs besides the weights and optimizer: the batch layout and data position."""
        epoch, row_in_epoch = stream.position(step)
        return {"rows_per_step": plan.rows_per_step, "total_steps": total_steps, "eval_state": eval_state,
                "epoch": epoch, "row_in_epoch": row_in_epoch}

    def run_eval(step: int) -> dict[str, Any] | None:
        if val_shards is None:
            return None
        res = evaluate(
            eval_module, val_shards, meta, step=step, batch_rows=tcfg.micro_batch_size, pad_id=pad_id,
            device=device, tcfg=tcfg, flat=flat, rank=rank, world=world,
        )  # fmt: skip
        eval_state["history"].append(res)
        eval_state.setdefault("initial", res)
        eval_state["final"] = res
        if is_main:
            atomic_write_json(train_dir / "eval.json", eval_state)
        shown = "n/a" if res["loss"] is None else f"{res['loss']:.4f}"
        say(f"eval step {step}: val loss {shown} on {res['target_tokens']} target tokens")
        return res

    meta = conversation_meta(run_dir) if val_shards is not None else {}
    say(
        f"training {n_params / 1e6:.2f}M params on {device} ({attn}), {world} process(es): "
        f"{train_shards.n_rows} train rows, {plan.rows_per_step} rows/step, {total_steps} steps"
    )
    if start_step == 0:
        run_eval(0)

    amp = lambda: _amp(device, tcfg)  # noqa: E731
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _progress(total_steps, start_step, is_main)
    t0 = time.perf_counter()
    done_tokens = done_targets = done_slots = 0.0
    last_loss = float("nan")
    every = max(1, total_steps // 20)
    module.train()
    for step in range(start_step, total_steps):
        t_step = time.perf_counter()
        micro = [collate(rows, pad_id, flat=flat) for rows in stream.step_rows(step, rank)]
        targets, tokens, slots = _all_reduce(
            [sum(m.n_targets for m in micro), sum(m.n_tokens for m in micro), sum(m.n_slots for m in micro)],
            world,
            device,
        )
        lr = lr_at(step, total_steps, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = forward_backward(
            module, micro, global_targets=int(targets), world_size=world, device=device, amp=amp
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip if tcfg.clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        (loss_total,) = _all_reduce([loss_sum], world, device)
        last_loss = loss_total / max(1.0, targets)
        dt = time.perf_counter() - t_step
        done_tokens += tokens
        done_targets += targets
        done_slots += slots
        elapsed = time.perf_counter() - t0
        n = step + 1
        if n % tcfg.log_every == 0 or n == total_steps:
            metrics.write(
                {
                    "step": n, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                    "tokens": int(tokens), "target_tokens": int(targets), "padding_frac": 1 - tokens / max(1, slots),
                    "tokens_per_s": tokens / dt, "target_tokens_per_s": targets / dt, "elapsed": elapsed,
                    "epoch": stream.position(step)[0],
                }  # fmt: skip
            )
        bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{done_tokens / elapsed:,.0f}", refresh=False)
        bar.update(1)
        if tcfg.save_every and n % tcfg.save_every == 0 and n < total_steps and is_main:
            save_checkpoint(ckpt_root, n, model, optimizer, checkpoint_state(n), tcfg.keep_checkpoints)
        if tcfg.eval_every and n % tcfg.eval_every == 0 and n < total_steps:
            run_eval(n)
        if n % every == 0 or n == total_steps or n == start_step + 1:
            remaining = (total_steps - n) * elapsed / max(1, n - start_step)
            say(
                f"step {n}/{total_steps} loss {last_loss:.4f} lr {lr:.2e} grad_norm {float(grad_norm):.3f} "
                f"{done_tokens / elapsed:,.0f} tok/s ({done_targets / elapsed:,.0f} target tok/s) "
                f"eta {remaining:,.0f}s"
            )
    bar.close()
    elapsed = time.perf_counter() - t0
    final = run_eval(total_steps) if start_step < total_steps or "final" not in eval_state else eval_state["final"]
    if is_main:
        save_hf(model, tokenizer, run_dir / "model")
        save_checkpoint(ckpt_root, total_steps, model, optimizer, checkpoint_state(total_steps), tcfg.keep_checkpoints)
        say(f"saved model to {run_dir / 'model'}")
    if world > 1:
        dist.barrier()
    summary = {
        "rank": rank,
        "steps": total_steps,
        "start_step": start_step,
        "world_size": world,
        "device": str(device),
        "attn_implementation": attn,
        "params": n_params,
        "train_loss": last_loss,
        "eval_initial": (eval_state.get("initial") or {}).get("loss"),
        "eval_final": (final or {}).get("loss"),
        "tokens": int(done_tokens),
        "target_tokens": int(done_targets),
        "padding_frac": 1 - done_tokens / done_slots if done_slots else 0.0,
        "tokens_per_s": done_tokens / elapsed if elapsed > 0 else 0.0,
        "target_tokens_per_s": done_targets / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
        "model_dir": str(run_dir / "model"),
        "metrics": str(run_dir / "train" / "metrics.jsonl"),
        "eval": str(run_dir / "train" / "eval.json"),
    }
    if is_main:
        atomic_write_json(train_dir / "summary.json", summary)
    return summary

