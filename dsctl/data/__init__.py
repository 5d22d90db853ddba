"""Data processing shared by the data stages: corpus I/O, cleaning, dedup, tokenization."""
