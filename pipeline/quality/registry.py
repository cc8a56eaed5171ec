"""Every quality filter by name: the one registry. QualityConfig.filters picks and orders them; the
names are those of pipeline.quality.names.FILTER_NAMES, which the configuration reads."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.quality.batch import Batch, FilterResult
from pipeline.quality.filters.contamination import contamination
from pipeline.quality.filters.echo import echo
from pipeline.quality.filters.empty import empty
from pipeline.quality.filters.language import language
from pipeline.quality.filters.length import length
from pipeline.quality.filters.pii import pii
from pipeline.quality.filters.placeholder import placeholder
from pipeline.quality.filters.refusal import refusal
from pipeline.quality.filters.repetition import repetition
from schemas.config_curation import QualityConfig

Filter = Callable[[Batch, QualityConfig], FilterResult]

#: name -> filter; a filter drops with the reason code quality.<name>.
FILTERS: dict[str, Filter] = {
    "contamination": contamination,
    "empty": empty,
    "echo": echo,
    "length": length,
    "repetition": repetition,
    "refusal": refusal,
    "placeholder": placeholder,
    "language": language,
    "pii": pii,
}
