"""Configuration of the model and the trainer ([model], [train])."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
