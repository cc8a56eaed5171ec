"""Configuration of the report, the approval gate and the task runner ([report], [gate], [runner])."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReportConfig(BaseModel):
    """What the data-quality report shows."""

    model_config = ConfigDict(extra="forbid")
    examples_per_reason: int = Field(default=3, ge=0, le=50, description="example records shown per reason code")
    duplicate_clusters: int = Field(default=10, ge=0, le=1000, description="largest duplicate clusters shown")
    histogram_bins: int = Field(default=20, ge=2, le=200, description="bins of the length and token histograms")
    example_chars: int = Field(default=300, ge=40, le=20_000, description="characters kept of each example text")


class GateConfig(BaseModel):
    """Approval before training: automatic thresholds, then (optionally) a person in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=False, description="check the curated data before training")
    require_approval: bool = Field(
        default=True, description="pause the flow run for a typed approve/reject input from a person"
    )
    timeout_s: int = Field(default=3600, ge=10, le=7 * 24 * 3600, description="seconds to wait for a person")
    max_quarantined_share: float | None = Field(
        default=None, ge=0.0, le=1.0, description="reject when quarantined / read exceeds this"
    )
    max_dropped_share: float | None = Field(
        default=None, ge=0.0, le=1.0, description="reject when (quarantined + dropped) / read exceeds this"
    )
    max_contamination_hits: int | None = Field(
        default=None, ge=0, description="reject when more records than this matched a benchmark"
    )
    min_kept: int | None = Field(default=None, ge=0, description="reject when fewer conversations than this are kept")


class RunnerConfig(BaseModel):
    """Where the mapped tasks (one per source) run: a local thread pool, or Dask."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["thread", "dask"] = Field(default="thread", description="thread pool (default) or Dask")
    max_workers: int | None = Field(default=None, ge=1, le=1024, description="thread pool size; absent: Prefect's default")
    processes: int = Field(
        default=2, ge=1, le=256,
        description="thread runner: processes the sources are read in (each task hands its source to one; "
        "reading is Python-bound, so threads alone use one core); 1 = in the tasks' threads",
    )
    address: str | None = Field(
        default=None, description="dask: scheduler address (tcp://host:8786); absent: start a local cluster"
    )
    n_workers: int = Field(default=2, ge=1, le=1024, description="dask local cluster: worker processes")
    threads_per_worker: int = Field(default=1, ge=1, le=256, description="dask local cluster: threads per worker")

    @model_validator(mode="after")
    def _address_needs_dask(self) -> RunnerConfig:
        if self.address is not None and self.kind != "dask":
            raise ValueError("runner.address is only used with runner.kind = 'dask'")
        return self
