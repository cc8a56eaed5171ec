"""The one registry of stages: name, function, config sections read, inputs, outputs, code.

The flow (flows.curate), the cache keys and the output fingerprints (flows.cache) are all derived
from `STAGES`; nothing else lists the stages. Every stage function has the same shape,
`run(inputs, run_dir, cfg) -> StageResult`, where `inputs` maps each input stage's name to the
Parquet parts it handed on. Stage modules are imported when a stage runs, so importing the registry
stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.rundir import RunDir

Inputs = dict[str, list[Path]]


@dataclass(frozen=True)
class Stage:
    """One data stage of the curation."""

    name: str
    #: "module:function" with the signature (inputs, run_dir, cfg) -> StageResult
    entry: str
    #: the project modules whose code computes it (with what they import: part of the cache key)
    code: tuple[str, ...]
    #: config sections that decide the output (part of the cache key)
    sections: tuple[str, ...]
    #: stages whose parts this one reads, in order
    inputs: tuple[str, ...]
    #: what it writes, relative to a run directory (files or folders), for the output fingerprint
    outputs: Callable[[RunDir, str | None], list[Path]]
    #: files named by the config whose bytes decide the output (a given tokenizer, a template file)
    config_files: Callable[[Any], list[Path]] = lambda cfg: []

    def run(self, inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)(inputs, run_dir, cfg)


#: the files of a Hugging Face directory that decide tokenization and the chat template (a model
#: directory's weights do not, and hashing gigabytes of them would cost minutes per run)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")


def _render_files(cfg: Any) -> list[Path]:
    paths = [Path(cfg.tokenizer.path)] if cfg.tokenizer.path is not None else []
    name = Path(str(cfg.template.name))
    if name.exists() and name not in paths:
        paths.append(name)
    files: list[Path] = []
    for p in paths:
        files += [p / f for f in _TOKENIZER_FILES if (p / f).is_file()] if p.is_dir() else [p]
    return files


def _reference_files(cfg: Any) -> list[Path]:
    """The reference model's config, tokenizer and (up to the content-hash limit) weight files."""
    ref = cfg.select.reference_model
    if ref is None or not Path(ref).is_dir():
        return []
    from pipeline.score.reference import CONTENT_HASH_LIMIT, model_files

    return [p for p in model_files(Path(ref)) if p.stat().st_size <= CONTENT_HASH_LIMIT]


STAGES: dict[str, Stage] = {s.name: s for s in (
    # per source: the flow maps it over the sources, keyed by each source's own settings and file
    Stage("ingest", "pipeline.ingest.stage:ingest_source", ("pipeline.ingest.stage",), (), (),
          lambda rd, src: [rd.stage_dir("ingest") / str(src), rd.quarantine / f"{src}.parquet",
                           rd.ledger / f"ingest-{src}.parquet"]),
    Stage("dedup", "flows.stages:run_dedup", ("pipeline.dedup.stage",), ("dedup",), ("ingest",),
          lambda rd, _: [rd.stage_dir("dedup"), rd.ledger / "dedup.parquet", rd.dedup_index]),
    Stage("quality", "flows.stages:run_quality", ("pipeline.quality.stage",), ("quality",), ("dedup",),
          lambda rd, _: [rd.stage_dir("quality"), rd.ledger / "quality.parquet"]),
    Stage("encode", "flows.stages:run_encode", ("pipeline.render.encode",), ("template", "tokenizer", "pack", "seed"), ("quality",),
          lambda rd, _: [rd.stage_dir("encode"), rd.tokenizer, rd.ledger / "tokenize.parquet"], _render_files),
    Stage("score", "flows.stages:run_score", ("pipeline.score.stage",), ("select", "template", "tokenizer", "pack"),
          ("quality", "encode"), lambda rd, _: [rd.stage_dir("score")], _reference_files),
    Stage("mix", "flows.stages:run_mix", ("pipeline.mix.stage",), ("mix", "select", "seed", "pack"), ("quality", "encode", "score"),
          lambda rd, _: [rd.curated, rd.stage_dir("mix"), rd.ledger / "mix.parquet"]),
    Stage("pack", "flows.stages:run_pack", ("pipeline.render.pack",), ("pack", "seed"), ("mix", "encode"),
          lambda rd, _: [rd.shards, rd.stage_dir("pack")]),
    # the proxy ablation ([ablation] enabled): small models on the selection, a random subset, each tier
    Stage("ablation", "flows.stages:run_ablation", ("pipeline.score.ablation",),
          ("ablation", "select", "seed", "template", "tokenizer", "pack"), ("quality", "encode", "mix"),
          lambda rd, _: [rd.stage_dir("ablation")], _reference_files),
)}
#: not a data stage, but cached the same way: the model trained on the shards
TRAIN = Stage("train", "trainer.fit:train", ("trainer.fit",), ("model", "train", "lora", "seed"), ("pack",),
              lambda rd, _: [rd.model, rd.train])


def stage(name: str) -> Stage:
    return TRAIN if name == "train" else STAGES[name]


# ------------------------------------------------------------------ the stage functions, one shape


def run_dedup(inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
    from pipeline.dedup.stage import run_dedup as dedup

    return dedup(inputs["ingest"], run_dir, cfg.dedup)


def run_quality(inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
    from pipeline.quality.stage import run_quality as quality

    return quality(inputs["dedup"], run_dir, cfg.quality)


def run_encode(inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
    from pipeline.render.encode import run_encode as encode

    return encode(inputs["quality"], run_dir, cfg)


def run_score(inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
    from pipeline.score.stage import run_score as score

    return score(inputs["quality"], run_dir, cfg, encoded=inputs["encode"])


def run_mix(inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
    from pipeline.mix.stage import run_mix as mix

    return mix(inputs["quality"], run_dir, cfg, encoded=inputs["encode"], scores=inputs.get("score"))


def run_pack(inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
    from pipeline.render.pack import run_pack as pack

    return pack(run_dir, cfg)


def run_ablation(inputs: Inputs, run_dir: Path, cfg: Any) -> Any:
    from pipeline.score.ablation import run_ablation as ablation

    return ablation(inputs["quality"], inputs["encode"], inputs["mix"], run_dir, cfg)
