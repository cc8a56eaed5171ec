"""The report summary as Prefect artifacts on the flow run, so the UI shows it next to the logs."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.report.summary import FUNNEL_STEPS, summary_markdown


def publish_report(summary: dict[str, Any]) -> None:
    """A markdown summary, the funnel and the reason codes as tables (artifact keys are stable,
    so the UI shows each key's history across runs)."""
    create_markdown_artifact(key="data-quality-report", markdown=summary_markdown(summary), description="data-quality report")
    create_table_artifact(
        key="funnel",
        table=[{c: r[c] for c in ("source", "tier", *FUNNEL_STEPS)} for r in summary["funnel"]],
        description="records per source: read, where they left, kept",
    )
    if summary["reasons"]:
        create_table_artifact(
            key="reasons",
            table=[{k: r[k] for k in ("reason", "stage", "outcome", "count")} for r in summary["reasons"]],
            description="every reason code with its count",
        )
