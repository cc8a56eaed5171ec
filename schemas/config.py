"""The run configuration: TOML validated by pydantic, unknown keys rejected, errors naming key and file.

Each stage owns its section model in `schemas/config_<area>.py`; this module assembles them.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.config_curation import DedupConfig, QualityConfig
from schemas.config_flow import GateConfig, ReportConfig, RunnerConfig
from schemas.config_mix import AblationConfig, BeforeAfterConfig, MixConfig, SelectConfig
from schemas.config_render import PackConfig, TemplateConfig, TokenizerConfig
from schemas.config_sources import SourceConfig
from schemas.config_train import LoraConfig, ModelConfig, TrainConfig


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the file and every bad key."""


class RunConfig(BaseModel):
    """A whole run: sources in, run directory out."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="run name")
    output_dir: Path = Field(description="the run directory")
    seed: int = Field(default=0, ge=0, description="seed for every sampled decision of the run")
    sources: list[SourceConfig] = Field(min_length=1)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    before_after: BeforeAfterConfig = Field(default_factory=BeforeAfterConfig)
    ablation: AblationConfig = Field(default_factory=AblationConfig)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @model_validator(mode="after")
    def _unique_sources(self) -> RunConfig:
        seen: set[str] = set()
        for s in self.sources:
            if s.name in seen:
                raise ValueError(f"source name {s.name!r} is used twice; names must be unique")
            seen.add(s.name)
        return self

    @model_validator(mode="after")
    def _model_renders_with_its_own_tokenizer(self) -> RunConfig:
        """With a pre-trained model (model.path), the shards are made with the model directory's own
        tokenizer and chat template, what it will be served with, unless the config names others
        (`model_fields_set`: what the file or a --set gave)."""
        if self.model.path is None:
            return self
        if "path" not in self.tokenizer.model_fields_set:
            self.tokenizer = self.tokenizer.model_copy(update={"path": self.model.path})
        if "name" not in self.template.model_fields_set:
            self.template = self.template.model_copy(update={"name": str(self.model.path)})
        return self

    #: sections that do not decide the curated data: where it goes, how the flow runs, training
    NOT_DATA: ClassVar[frozenset[str]] = frozenset(
        {"name", "output_dir", "runner", "gate", "report", "model", "train", "lora", "before_after", "ablation"}
    )

    def data_hash(self) -> str:
        """Hash of what decides the curated data and shards (the manifest's `config_hash`): the same
        sources and settings give the same hash whatever the run is called or where it is written."""
        return self.section_hash(*(k for k in type(self).model_fields if k not in self.NOT_DATA))

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some sections (for cache keys): same settings, same hash."""
        data = self.model_dump(mode="json", include=set(sections) if sections else None)
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a table")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.max_steps=10' -> ('train.max_steps', 10); the value is read as TOML, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.max_steps=10")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid configuration ({err.error_count()} error(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> RunConfig:
    """Read and validate a TOML run config. Relative paths in it resolve against the working directory.

    `overrides` are dotted keys ("train.max_steps") applied on top of the file.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
