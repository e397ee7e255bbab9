"""Data: challenge-format shards, tokenizers and their byte tables, the embedded corpora, FineWeb, the loader."""
