"""Stage 5, render: chat templates, tokenizer, loss masks, packing, Parquet shards."""
