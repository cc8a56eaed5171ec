"""The approval gate between the report and training: automatic thresholds, then a person.

The thresholds read the report summary (pipeline.report.summary), so what a person sees in the report is
exactly what the gate judged. A person answers through a typed Prefect run input (`ApprovalInput`),
which the UI shows as a form on the paused flow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.input import RunInput

from schemas.config_flow import GateConfig


class ApprovalInput(RunInput):
    """The form a reviewer fills in on the paused run: approve (or not) and say why."""

    approve: bool
    note: str = ""


@dataclass(frozen=True)
class GateDecision:
    """Whether training may start, who decided, and why."""

    approved: bool
    decided_by: str  # "thresholds" | "person" | "timeout" | "disabled"
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "decided_by": self.decided_by, "reason": self.reason}


def threshold_violations(summary: dict[str, Any], cfg: GateConfig) -> list[str]:
    """Sentences naming every automatic threshold the curated data breaks (empty: none)."""
    totals = summary.get("totals", {})
    read = max(int(totals.get("read", 0)), 1)
    quarantined = int(totals.get("quarantined", 0))
    dropped = int(totals.get("dropped", 0))
    kept = int(totals.get("kept", 0))
    hits = int(sum((summary.get("contamination") or {}).values()))
    out: list[str] = []
    if cfg.max_quarantined_share is not None and quarantined / read > cfg.max_quarantined_share:
        out.append(
            f"quarantined share {quarantined / read:.1%} ({quarantined} of {read}) is over "
            f"gate.max_quarantined_share = {cfg.max_quarantined_share:.1%}"
        )
    if cfg.max_dropped_share is not None and (quarantined + dropped) / read > cfg.max_dropped_share:
        out.append(
            f"removed share {(quarantined + dropped) / read:.1%} ({quarantined + dropped} of {read}) is over "
            f"gate.max_dropped_share = {cfg.max_dropped_share:.1%}"
        )
    if cfg.max_contamination_hits is not None and hits > cfg.max_contamination_hits:
        out.append(f"{hits} benchmark contamination hit(s) is over gate.max_contamination_hits = {cfg.max_contamination_hits}")
    if cfg.min_kept is not None and kept < cfg.min_kept:
        out.append(f"only {kept} conversation(s) kept, under gate.min_kept = {cfg.min_kept}")
    return out


def run_gate(summary: dict[str, Any], cfg: GateConfig) -> GateDecision:
    """Decide whether to train. Thresholds first (no person needed to reject); then, when
    `require_approval`, pause this flow run until a person submits `ApprovalInput` or the timeout ends.
    Must be called from inside a flow run."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    if not cfg.enabled:
        return GateDecision(True, "disabled", "gate.enabled = false")
    logger = get_run_logger()
    violations = threshold_violations(summary, cfg)
    if violations:
        decision = GateDecision(False, "thresholds", "; ".join(violations))
    elif not cfg.require_approval:
        decision = GateDecision(True, "thresholds", "every automatic threshold holds")
    else:
        logger.info(
            "waiting up to %ds for approval: open this flow run in the Prefect UI and resume it with "
            "approve = true/false (or resume_flow_run(id, run_input={'approve': ..., 'note': ...}))",
            cfg.timeout_s,
        )
        try:
            answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=cfg.timeout_s)
        except FlowPauseTimeout:
            decision = GateDecision(False, "timeout", f"nobody approved within gate.timeout_s = {cfg.timeout_s}s")
        else:
            note = f": {answer.note}" if answer.note else ""
            decision = GateDecision(bool(answer.approve), "person", ("approved" if answer.approve else "rejected") + note)
    verdict = "approved" if decision.approved else "rejected"
    logger.info("gate %s by %s: %s", verdict, decision.decided_by, decision.reason)
    create_markdown_artifact(
        key="approval-gate",
        markdown=f"## Approval gate: {verdict}\n\nDecided by **{decision.decided_by}**: {decision.reason}\n",
        description=f"gate {verdict}",
    )
    return decision
