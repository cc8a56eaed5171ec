"""The names of the quality filters, in their default order, and which of them are hard rules.

The one list that the registry (pipeline.quality.registry.FILTERS) and the configuration
(schemas.config_curation.QualityConfig.filters) share; it imports nothing, so schemas can read it
without loading the filters (which themselves import schemas). tests/test_quality_filters.py
checks that the registry holds exactly these names, in this order.

Contamination comes first and runs on every conversation that reaches the stage, so a benchmark
copy is reported as quality.contamination whatever else is wrong with it. The hard rules drop a
conversation of any tier; the heuristic ones do not drop the expert tier unless
[quality.tiers.expert] heuristics = true.
"""

from __future__ import annotations

FILTER_NAMES: tuple[str, ...] = (
    "contamination", "empty", "echo", "length", "repetition", "refusal", "placeholder", "language", "pii",
)
HARD_RULES: frozenset[str] = frozenset({"contamination", "empty", "language", "pii"})
HEURISTIC_RULES: frozenset[str] = frozenset(FILTER_NAMES) - HARD_RULES
