"""Configuration of the source mixture and example selection ([mix], [select])."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MixConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
