"""Stage 2, dedup: exact and MinHash-LSH near duplicates across sources, the higher tier's copy kept."""
