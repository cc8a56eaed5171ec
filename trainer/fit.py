"""The training loop: `train` (entry point) = `setup` + `fit` (the loop); `evaluate` (val loss by source
and tier); `lr_at` (the schedule).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from pipeline.core.rundir import atomic_write_json
from schemas.config import RunConfig
from schemas.config_train import LoraConfig, TrainConfig
from trainer.attention import FLEX, VARLEN
from trainer.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.data import Batch, ShardSet, StepPlan, TrainStream, collate, eval_batches
from trainer.defaults import finetune_defaults, warmup_of
from trainer.inputs import conversation_meta, read_manifest, shard_paths
from trainer.loss import TargetLoss, step_scale
from trainer.model import load_tokenizer, resolve_attn, resolve_device, save_hf
from trainer.prepare import Prepared, compute_dtype, prepare_model

Log = Callable[[str], None]


def lr_at(step: int, total_steps: int, tcfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine to lr x min_lr_ratio."""
    warm = min(warmup_of(tcfg, total_steps), max(0, total_steps - 1))
    if step < warm:
        return tcfg.lr * (step + 1) / warm
    span = max(1, total_steps - warm - 1)
    progress = min(1.0, (step - warm) / span)
    floor = tcfg.lr * tcfg.min_lr_ratio
    return floor + (tcfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _amp(device: torch.device, tcfg: TrainConfig) -> contextlib.AbstractContextManager:
    if compute_dtype(device, tcfg) == torch.bfloat16:
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
    sharded: bool = False,
) -> dict[str, Any]:
    """Validation loss overall, per source and per tier (conversation_id -> source/tier via curated/).

    `sharded` (FSDP): every forward all-gathers weights with the other ranks, so a rank with fewer
    validation batches runs extra forwards, whose losses it drops, until all ranks ran as many.
    """
    per_conv: dict[str, list[float]] = {}
    was_training = module.training
    module.eval()
    done = 0
    for rows in eval_batches(shards, batch_rows, rank, world, tcfg.eval_max_rows):
        with _amp(device, tcfg):
            part = segment_losses(module, collate(rows, pad_id, flat=flat), device)
        _add_into(per_conv, part)
        done += 1
    if sharded:
        n_rows = min(tcfg.eval_max_rows, shards.n_rows) if tcfg.eval_max_rows else shards.n_rows
        n_batches = math.ceil(n_rows / batch_rows)
        for _ in range(math.ceil(n_batches / world) - done):
            with _amp(device, tcfg):
                segment_losses(module, collate([shards.row(0, 0)], pad_id, flat=flat), device)
    module.train(was_training)
    if world > 1:
        per_conv = _gather_losses(per_conv, world, device)
    return _summarise(per_conv, meta, step)


def _add_into(acc: dict[str, list[float]], part: dict[str, list[float]]) -> None:
    for cid, (s, c) in part.items():
        entry = acc.setdefault(cid, [0.0, 0.0])
        entry[0] += s
        entry[1] += c


def _gather_losses(per_conv: dict[str, list[float]], world: int, device: torch.device) -> dict[str, list[float]]:
    """Every rank's {conversation_id: [loss sum, target tokens]}, merged in rank order.

    Sent as data (the ids as JSON bytes, the sums as float64), not as pickled objects, which a
    receiving rank would have to unpickle.
    """
    ids = torch.frombuffer(bytearray(orjson.dumps(list(per_conv))), dtype=torch.uint8).to(device)
    sums = torch.tensor(list(per_conv.values()), dtype=torch.float64, device=device).reshape(-1, 2)
    sizes = [torch.zeros(2, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([ids.numel(), sums.shape[0]], dtype=torch.int64, device=device))
    n_ids, n_rows = (max(int(s[i]) for s in sizes) for i in (0, 1))
    # all_gather needs equal shapes: pad to the largest rank's
    all_ids = [torch.zeros(n_ids, dtype=torch.uint8, device=device) for _ in range(world)]
    all_sums = [torch.zeros(n_rows, 2, dtype=torch.float64, device=device) for _ in range(world)]
    dist.all_gather(all_ids, torch.cat([ids, ids.new_zeros(n_ids - ids.numel())]))
    dist.all_gather(all_sums, torch.cat([sums, sums.new_zeros(n_rows - sums.shape[0], 2)]))
    merged: dict[str, list[float]] = {}
    for size, raw, values in zip(sizes, all_ids, all_sums, strict=True):
        cids = orjson.loads(raw[: int(size[0])].cpu().numpy().tobytes())
        _add_into(merged, dict(zip(cids, values[: int(size[1])].tolist(), strict=True)))
    return merged


# ---------------------------------------------------------------------------------------------------
# the entry point: process group, config, then setup and fit


#: distributed runs whose DDP model must outlive `train` (see there)
_LIVE_RUNS: list[Any] = []


def train(run_dir: Path, cfg: RunConfig, *, resume: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Train on the run directory's shards; writes model/, train/metrics.jsonl, train/eval.json, checkpoints.

    Works in one process or under torchrun (DDP: gloo on CPU, nccl on CUDA). `resume=True` continues
    from the newest checkpoint in train/checkpoints/ (a fresh start when there is none).
    `log` receives human-readable progress lines (rank 0 only). Returns a summary dict.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    splits = shard_paths(run_dir, manifest)
    cfg, applied = finetune_defaults(cfg)
    tcfg = cfg.train
    rank, world, own_group = _dist_setup(tcfg.device)
    say: Log = (log or _default_log) if rank == 0 else (lambda _line: None)
    if applied:
        shown = ", ".join(f"{k}={v:g}" for k, v in applied.items())
        say(f"fine-tuning defaults for model.path (the config leaves them unset): {shown}")
    template = manifest.get("template")
    if cfg.model.path is not None and template:
        own = Path(str(template)) == Path(cfg.model.path)
        say("the shards were rendered with " + ("the model's own chat template" if own else f"template {template!r}"))
    if world == 1 and tcfg.nproc > 1:
        # not launched by torchrun: one process accumulating nproc x as many micro-batches takes
        # exactly the same steps (the loss is normalised over the whole step either way)
        say(f"train.nproc={tcfg.nproc} but not under torchrun: one process with grad_accum x {tcfg.nproc}")
        tcfg = tcfg.model_copy(update={"grad_accum": tcfg.grad_accum * tcfg.nproc, "nproc": 1})
        cfg = cfg.model_copy(update={"train": tcfg})
    try:
        # the row capacity the shards were packed for sizes a from-scratch model's positions
        seq_cap = int(manifest.get("max_seq_len") or cfg.pack.max_seq_len)
        run, loop = setup(run_dir, cfg, splits, seq_cap=seq_cap, rank=rank, world=world, resume=resume, say=say)
        if world > 1:
            # Keep the DDP model (its reducer holds the gloo process group) alive past this function:
            # freeing it here, with the GIL held, destroys the group and joins gloo's worker thread
            # while that thread waits for the GIL to release a finished collective's tensors: a
            # deadlock seen at the end of 2-rank runs. `python -m trainer` leaves with os._exit.
            _LIVE_RUNS.append(run)
        return fit(run, loop)
    finally:
        if own_group:
            dist.destroy_process_group()


def _dist_setup(device_pref: str) -> tuple[int, int, bool]:
    """(rank, world, we_initialised): joins torchrun's process group when launched by it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _default_log(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)


# ---------------------------------------------------------------------------------------------------
# setup: everything built once


@dataclass
class Run:
    """What the loop works with, built once by `setup`."""

    run_dir: Path
    tcfg: TrainConfig
    rank: int
    world: int
    say: Log
    device: torch.device
    attn: str
    flat: bool  # varlen attention: one concatenated sequence per micro-batch, no padding, no mask
    tokenizer: PreTrainedTokenizerFast
    lora: LoraConfig
    prepared: Prepared  # the model and, under LoRA, its PeftModel, base fingerprint and base directory
    pad_id: int
    train_shards: ShardSet
    val_shards: ShardSet | None
    meta: dict[str, tuple[str, str]]  # conversation_id -> (source, tier), for the eval breakdown
    stream: TrainStream
    total_steps: int
    model: PreTrainedModel
    optimizer: torch.optim.Optimizer
    module: nn.Module  # what a train step runs: TargetLoss(model), compiled and DDP-wrapped as configured
    eval_module: nn.Module  # the same without DDP: ranks may see different numbers of val batches
    sharded: bool = False  # FSDP2: the model's parameters are sharded over the ranks (trainer.fsdp)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def train_dir(self) -> Path:
        return self.run_dir / "train"

    @property
    def ckpt_root(self) -> Path:
        return self.train_dir / "checkpoints"


@dataclass
class Loop:
    """The loop's running state; the start step and eval history come back from a checkpoint."""

    start_step: int = 0
    resumed: bool = False
    eval_state: dict[str, Any] = field(default_factory=lambda: {"history": []})
    tokens: float = 0.0  # real tokens trained on so far (this session), all ranks
    targets: float = 0.0
    slots: float = 0.0  # tokens computed, padding included
    last_loss: float = float("nan")
    t0: float = 0.0


def setup(
    run_dir: Path,
    cfg: RunConfig,
    splits: dict[str, list[Path]],
    *,
    seq_cap: int,
    rank: int,
    world: int,
    resume: bool,
    say: Log,
) -> tuple[Run, Loop]:
    """Device, tokenizer, shards, model, optimizer; restored from the newest checkpoint with `resume`."""
    tcfg = cfg.train
    seed = tcfg.seed if tcfg.seed is not None else cfg.seed
    device = resolve_device(tcfg)
    if device.type == "cpu":
        threads = tcfg.num_threads or (max(1, (os.cpu_count() or 1) // world) if world > 1 else 0)
        if threads:
            torch.set_num_threads(threads)
    attn = resolve_attn(tcfg, device)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    train_shards, val_shards = _shards(run_dir, splits, tcfg)
    max_len = max(train_shards.max_row_len(), val_shards.max_row_len() if val_shards else 0)
    sharded = tcfg.parallel == "fsdp" and world > 1
    prepared = prepare_model(
        cfg, tokenizer, device, attn, max_len=max_len, positions=max(seq_cap, max_len), seed=seed,
        run_dir=run_dir, write_base=rank == 0, sharded=sharded,
    )  # fmt: skip
    model = prepared.model
    loss_module = TargetLoss(model, tcfg.loss_chunk_tokens)
    if sharded:  # before the optimizer, which then holds the shards
        from trainer.fsdp import shard_model

        shard_model(loss_module, compute_dtype(device, tcfg))
    plan = StepPlan(tcfg.micro_batch_size, tcfg.grad_accum, world)
    stream = TrainStream(train_shards, plan, seed, tcfg.shuffle_window)
    total_steps = tcfg.max_steps or max(1, math.ceil(tcfg.epochs * stream.steps_per_epoch))
    optimizer = _optimizer(model, tcfg, total_steps)
    ckpts = run_dir / "train" / "checkpoints"
    loop = _resume(ckpts, model, optimizer, plan, total_steps, say, prepared.base_hash, sharded) if resume else Loop()
    # wrapped after the checkpoint is loaded: DDP broadcasts rank 0's weights when it is built
    eval_module: nn.Module = loss_module
    if tcfg.compile:
        eval_module = torch.compile(eval_module)
    module = eval_module
    if world > 1 and not sharded:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(eval_module, device_ids=ids, broadcast_buffers=False)
    run = Run(
        run_dir=run_dir, tcfg=tcfg, rank=rank, world=world, say=say, device=device, attn=attn,
        flat=attn in ("flash_attention_2", VARLEN, FLEX),
        tokenizer=tokenizer, lora=cfg.lora, prepared=prepared,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        train_shards=train_shards, val_shards=val_shards,
        meta=conversation_meta(run_dir) if val_shards is not None else {},
        stream=stream, total_steps=total_steps, model=model, optimizer=optimizer, module=module,
        eval_module=eval_module, sharded=sharded,
    )  # fmt: skip
    return run, loop


def _shards(run_dir: Path, splits: dict[str, list[Path]], tcfg: TrainConfig) -> tuple[ShardSet, ShardSet | None]:
    """The train shards and the val shards (None when there are no val rows)."""
    train_shards = ShardSet(splits["train"], cache_units=tcfg.shuffle_window + 1)
    val_shards = ShardSet(splits["val"]) if splits["val"] else None
    if val_shards is not None and val_shards.n_rows == 0:
        val_shards = None
    if train_shards.n_rows == 0:
        raise ValueError(f"{run_dir}: the train shards hold no rows; nothing to train on")
    return train_shards, val_shards


def _optimizer(model: nn.Module, tcfg: TrainConfig, total_steps: int) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr_at(0, total_steps, tcfg),
        betas=tcfg.betas,
        eps=tcfg.eps,
        foreach=True,
    )


def _resume(
    ckpt_root: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: StepPlan,
    total_steps: int,
    say: Log,
    base_hash: str | None = None,
    sharded: bool = False,
) -> Loop:
    """Model, optimizer and RNG from the newest checkpoint, and the loop state to go on from."""
    latest = latest_checkpoint(ckpt_root)
    if latest is None:
        say("no checkpoint to resume from; starting fresh")
        return Loop()
    state = load_checkpoint(latest, model, optimizer, base_hash, sharded)
    if state.get("rows_per_step") != plan.rows_per_step:
        raise CheckpointError(
            f"{latest}: saved with {state.get('rows_per_step')} rows per step, now "
            f"{plan.rows_per_step} (micro_batch_size x grad_accum x processes); resume with the same "
            "settings or start a fresh run without --resume"
        )
    say(f"resumed from {latest.name} (step {state['step']}/{total_steps})")
    return Loop(start_step=state["step"], resumed=True, eval_state=state.get("eval_state", {"history": []}))


# ---------------------------------------------------------------------------------------------------
# the loop


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did (token counts over all ranks)."""

    loss: float
    lr: float
    grad_norm: float  # before clipping
    tokens: float
    targets: float
    slots: float
    seconds: float


def fit(run: Run, loop: Loop) -> dict[str, Any]:
    """Train from `loop.start_step` to `run.total_steps`, evaluating and checkpointing on the way.

    Evaluates at step 0 (on a fresh start), every `eval_every` steps and at the end; checkpoints every
    `save_every` steps and at the end, with model/. Returns the summary (also train/summary.json).
    """
    tcfg, total = run.tcfg, run.total_steps
    # under LoRA the starting model is the base the adapter names (trainer.prepare wrote a from-scratch one)
    if tcfg.save_initial_model and loop.start_step == 0 and run.prepared.peft is None:
        _save_full_model(run, run.train_dir / "model_init")
    metrics = _Metrics(run.train_dir / "metrics.jsonl", run.is_main, loop.start_step if loop.resumed else None)
    run.say(
        f"training {_describe_params(run)} on {run.device} ({run.attn}), {run.world} process(es): "
        f"{run.train_shards.n_rows} train rows, {run.stream.plan.rows_per_step} rows/step, {total} steps, "
        f"lr {tcfg.lr:g}"
    )
    if loop.start_step == 0:
        _validate(run, loop, 0)

    bar = _progress(total, loop.start_step, run.is_main)
    loop.t0 = time.perf_counter()
    every = max(1, total // 20)
    run.module.train()
    for step in range(loop.start_step, total):
        res = train_step(run, step)
        loop.tokens += res.tokens
        loop.targets += res.targets
        loop.slots += res.slots
        loop.last_loss = res.loss
        elapsed = time.perf_counter() - loop.t0
        n = step + 1
        if n % tcfg.log_every == 0 or n == total:
            metrics.write(_metrics_row(run, step, res, elapsed))
        bar.set_postfix(loss=f"{res.loss:.3f}", tok_s=f"{loop.tokens / elapsed:,.0f}", refresh=False)
        bar.update(1)
        if _due(tcfg.save_every, n, total):
            _save(run, loop, n)
        if _due(tcfg.eval_every, n, total):
            _validate(run, loop, n)
        if n % every == 0 or n == total or n == loop.start_step + 1:
            eta = (total - n) * elapsed / max(1, n - loop.start_step)
            run.say(
                f"step {n}/{total} loss {res.loss:.4f} lr {res.lr:.2e} grad_norm {res.grad_norm:.3f} "
                f"{loop.tokens / elapsed:,.0f} tok/s ({loop.targets / elapsed:,.0f} target tok/s) eta {eta:,.0f}s"
            )
    bar.close()
    return _finish(run, loop)


def train_step(run: Run, step: int) -> StepResult:
    """One optimizer step: this rank's micro-batches, the loss normalised over the whole step, clip, AdamW."""
    t = time.perf_counter()
    micro = [collate(rows, run.pad_id, flat=run.flat) for rows in run.stream.step_rows(step, run.rank)]
    targets, tokens, slots = _all_reduce(
        [sum(m.n_targets for m in micro), sum(m.n_tokens for m in micro), sum(m.n_slots for m in micro)],
        run.world,
        run.device,
    )
    lr = lr_at(step, run.total_steps, run.tcfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = forward_backward(
        run.module, micro, global_targets=int(targets), world_size=run.world, device=run.device,
        amp=lambda: _amp(run.device, run.tcfg),
    )  # fmt: skip
    params = [p for p in run.model.parameters() if p.requires_grad]  # model order: the norm's float sum
    grad_norm = torch.nn.utils.clip_grad_norm_(params, run.tcfg.clip if run.tcfg.clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
        grad_norm = grad_norm.full_tensor()
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    (loss_total,) = _all_reduce([loss_sum], run.world, run.device)
    seconds = time.perf_counter() - t
    return StepResult(loss_total / max(1.0, targets), lr, float(grad_norm), tokens, targets, slots, seconds)


def _describe_params(run: Run) -> str:
    p = run.prepared
    if p.peft is None:
        return f"{p.total / 1e6:.2f}M params"
    from trainer.lora import adapted_modules

    return (
        f"LoRA r={run.lora.r} alpha={run.lora.alpha:g} on {len(adapted_modules(p.model))} modules: "
        f"{p.trainable / 1e6:.3f}M trainable of {p.total / 1e6:.2f}M params ({100 * p.trainable / p.total:.2f}%)"
    )


def _due(every: int, n: int, total: int) -> bool:
    """A periodic event after step n (the end has its own)."""
    return bool(every) and n % every == 0 and n < total


def _metrics_row(run: Run, step: int, res: StepResult, elapsed: float) -> dict[str, Any]:
    return {
        "step": step + 1, "loss": res.loss, "lr": res.lr, "grad_norm": res.grad_norm,
        "tokens": int(res.tokens), "target_tokens": int(res.targets),
        "padding_frac": 1 - res.tokens / max(1, res.slots),
        "tokens_per_s": res.tokens / res.seconds, "target_tokens_per_s": res.targets / res.seconds,
        "elapsed": elapsed, "epoch": run.stream.position(step)[0],
    }  # fmt: skip


def _validate(run: Run, loop: Loop, step: int) -> dict[str, Any] | None:
    """Evaluate at `step`, record it in the eval history and train/eval.json; None without val shards."""
    if run.val_shards is None:
        return None
    res = evaluate(
        run.eval_module, run.val_shards, run.meta, step=step, batch_rows=run.tcfg.micro_batch_size,
        pad_id=run.pad_id, device=run.device, tcfg=run.tcfg, flat=run.flat, rank=run.rank, world=run.world,
        sharded=run.sharded,
    )  # fmt: skip
    loop.eval_state["history"].append(res)
    loop.eval_state.setdefault("initial", res)
    loop.eval_state["final"] = res
    if run.is_main:
        atomic_write_json(run.train_dir / "eval.json", loop.eval_state)
    shown = "n/a" if res["loss"] is None else f"{res['loss']:.4f}"
    run.say(f"eval step {step}: val loss {shown} on {res['target_tokens']} target tokens")
    return res


def _save(run: Run, loop: Loop, step: int) -> None:
    """Checkpoint after `step` steps, with what a resume needs besides weights and optimizer (rank 0
    writes; under FSDP every rank first takes part in gathering the full tensors)."""
    full = None
    if run.sharded:
        from trainer.fsdp import full_model_state, full_optimizer_state

        lora = run.prepared.peft is not None
        full = (full_model_state(run.model, lora), full_optimizer_state(run.model, run.optimizer))
    if not run.is_main:
        return
    epoch, row_in_epoch = run.stream.position(step)
    extra = {"rows_per_step": run.stream.plan.rows_per_step, "total_steps": run.total_steps,
             "eval_state": loop.eval_state, "epoch": epoch, "row_in_epoch": row_in_epoch}  # fmt: skip
    save_checkpoint(
        run.ckpt_root, step, run.model, run.optimizer, extra, run.tcfg.keep_checkpoints, run.prepared.base_hash,
        full,
    )


def _finish(run: Run, loop: Loop) -> dict[str, Any]:
    """The final evaluation, model/ and the last checkpoint (rank 0), and the summary."""
    elapsed = time.perf_counter() - loop.t0
    if loop.start_step < run.total_steps or "final" not in loop.eval_state:
        final = _validate(run, loop, run.total_steps)
    else:  # resumed a finished run: nothing was trained
        final = loop.eval_state["final"]
    _save_model(run)
    _save(run, loop, run.total_steps)
    if run.world > 1:
        dist.barrier()
    summary = {
        "rank": run.rank,
        "steps": run.total_steps,
        "start_step": loop.start_step,
        "world_size": run.world,
        "device": str(run.device),
        "attn_implementation": run.attn,
        "params": run.prepared.total,
        "trainable_params": run.prepared.trainable,
        "lora": run.lora.model_dump(mode="json") if run.prepared.peft is not None else None,
        "train_loss": loop.last_loss,
        "eval_initial": (loop.eval_state.get("initial") or {}).get("loss"),
        "eval_final": (final or {}).get("loss"),
        "tokens": int(loop.tokens),
        "target_tokens": int(loop.targets),
        "padding_frac": 1 - loop.tokens / loop.slots if loop.slots else 0.0,
        "tokens_per_s": loop.tokens / elapsed if elapsed > 0 else 0.0,
        "target_tokens_per_s": loop.targets / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
        "model_dir": str(run.run_dir / "model"),
        "metrics": str(run.train_dir / "metrics.jsonl"),
        "eval": str(run.train_dir / "eval.json"),
    }
    if run.is_main:
        atomic_write_json(run.train_dir / "summary.json", summary)
    return summary


def _save_full_model(run: Run, out: Path) -> None:
    """A Hugging Face directory of the model as it is now (rank 0 writes; under FSDP, from gathered tensors)."""
    state = None
    if run.sharded:
        from trainer.fsdp import full_model_state

        state = full_model_state(run.model, trainable_only=False, tied_once=False)
    if run.is_main:
        save_hf(run.model, run.tokenizer, out, state_dict=state)


def _save_model(run: Run) -> None:
    """model/: the trained model; under LoRA model/adapter/ and (lora.merge) the merged model around it."""
    out = run.run_dir / "model"
    if run.prepared.peft is None:
        _save_full_model(run, out)
        run.say(f"saved model to {out}")
        return
    from trainer.lora import save_lora

    adapter_state = None
    if run.sharded:
        from trainer.fsdp import full_model_state

        adapter_state = full_model_state(run.model, trainable_only=True)
    if not run.is_main:
        return
    save_lora(run.prepared.peft, run.tokenizer, out, merge=run.lora.merge, state_dict=adapter_state)
    shown = "the merged model in model/, " if run.lora.merge else ""
    run.say(f"saved {shown}the LoRA adapter in {out / 'adapter'} (base: {run.prepared.base_dir})")


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
