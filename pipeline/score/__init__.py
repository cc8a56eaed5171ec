"""Stage 4b, score: per-conversation scores from a reference language model (perplexity, IFD), and
the proxy ablation that trains a small model on the selection, a random subset and each tier."""
