"""The deployments of the repository, served from this process (run it from the repository root).

    prefect server start                                  # in one terminal
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    sftforge serve                                        # or: python -m flows.serve
    prefect deployment run curate-and-train/local --watch

`local` is for ad-hoc runs, `nightly` runs on a cron schedule; both take the parameters `config`
(a path relative to the repository root) and `overrides` (["train.max_steps=10", ...]).
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import serve

from flows.curate import curate, curate_and_train


def deployments(config: str = "configs/demo.toml", overrides: list[str] | None = None,
                cron: str = "0 3 * * *") -> list[Any]:
    """curate-and-train/local (ad hoc), curate-and-train/nightly (cron) and curate/local."""
    params = {"config": config, "overrides": list(overrides or [])}
    return [
        curate_and_train.to_deployment(name="local", parameters=params, description="ad-hoc curate + train"),
        curate_and_train.to_deployment(name="nightly", parameters=params, cron=cron,
                                       description=f"curate + train on a schedule ({cron})"),
        curate.to_deployment(name="local", parameters=params, description="ad-hoc curation, no training"),
    ]


def serve_deployments(config: str = "configs/demo.toml", overrides: list[str] | None = None,
                      cron: str = "0 3 * * *") -> None:
    """Register the deployments and run their flow runs until interrupted (SIGINT/SIGTERM)."""
    serve(*deployments(config, overrides, cron))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="serve the sftforge deployments")
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--cron", default="0 3 * * *")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    serve_deployments(a.config, a.set, a.cron)
