"""Stage 1, ingest: read each source's files, validate every record, write canonical conversations."""
