"""Shared plumbing of every stage: the run directory, the ledger, part files, the manifest, text normalisation."""
