"""`python -m trainer RUN_DIR [--config CFG.toml] [--resume] [--set key=value ...]`.

Also the entry point of each torchrun worker (`torchrun --nproc_per_node N -m trainer RUN_DIR ...`):
every rank runs this, joins the process group from the environment, and rank 0 alone writes.
Without --config only the [model]/[train]/[lora] defaults (plus --set overrides such as
`train.max_steps=10`) apply. User errors exit with status 2 and one message, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.config import ConfigError, RunConfig, format_validation_error, load_config, parse_override
from schemas.config_train import LoraConfig, ModelConfig, TrainConfig


def config_for(run_dir: Path, config: str | None, overrides: list[str]) -> RunConfig:
    """The run config: from a TOML file, else the [model]/[train]/[lora] defaults (and --set) for this run dir."""
    if config:
        return load_config(config, overrides)
    sections: dict[str, Any] = {"model": {}, "train": {}, "lora": {}, "seed": 0}
    for key, value in (parse_override(o) for o in overrides):
        head, _, rest = key.partition(".")
        if head == "seed" and not rest:
            sections["seed"] = value
        elif head in ("model", "train", "lora") and rest and "." not in rest:
            sections[head][rest] = value
        else:
            raise ConfigError(f"--set {key}: without --config only model.*, train.*, lora.* and seed can be set")
    try:
        part = _TrainSections.model_validate(sections)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "--set")) from None
    # no sources are needed to train on finished shards, so the source list is not validated here
    return RunConfig.model_construct(
        name=run_dir.name or "run", output_dir=run_dir, seed=part.seed, sources=[], model=part.model,
        train=part.train, lora=part.lora,
    )


class _TrainSections(BaseModel):
    """The part of a RunConfig the trainer reads, validated alone (errors name train.* / model.*)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(default=0, ge=0)
    model: ModelConfig
    train: TrainConfig
    lora: LoraConfig


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and train; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Train on a curated run directory.")
    parser.add_argument("run_dir", type=Path, help="a run directory with manifest.json, shards/ and tokenizer/")
    parser.add_argument("--config", help="the run's TOML config (its [model], [train] and [lora] sections are used)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    args = parser.parse_args(argv)

    from pipeline.core.manifest import ManifestError
    from trainer.checkpoint import CheckpointError
    from trainer.data import ShardError
    from trainer.inputs import RunDirError
    from trainer.model import ModelError

    user_errors = (ConfigError, RunDirError, ModelError, ShardError, CheckpointError, ManifestError)
    try:
        cfg = config_for(args.run_dir, args.config, args.set)
        from trainer.fit import train

        summary = train(args.run_dir, cfg, resume=args.resume)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) == 0:
        print(json.dumps({k: summary[k] for k in ("steps", "train_loss", "eval_initial", "eval_final", "model_dir")}))
    if summary.get("world_size", 1) > 1:
        # everything is written and the ranks have met at a barrier: leave without the interpreter's
        # teardown, where gloo's threads and the GIL can deadlock (trainer.fit.train)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
