"""Stage 3, quality: heuristic filters, language, PII, benchmark contamination; each drop names its rule."""
