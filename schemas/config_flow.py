"""Configuration of the report, the approval gate and the task runner ([report], [gate], [runner])."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False


class RunnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
