"""The names of the quality filters, in their default order.

The one list that the registry (pipeline.quality.registry.FILTERS) and the configuration
(schemas.config_curation.QualityConfig.filters) share; it imports nothing, so schemas can read it
without loading the filters (which themselves import schemas). tests/test_quality_filters.py
checks that the registry holds exactly these names, in this order.
"""

from __future__ import annotations

FILTER_NAMES: tuple[str, ...] = (
    "empty", "echo", "length", "repetition", "refusal", "language", "contamination", "pii",
)
