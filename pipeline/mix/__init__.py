"""Stage 4, mix: quality score, selection, weights, caps and token shares per source and tier."""
