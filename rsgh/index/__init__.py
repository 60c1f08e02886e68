"""Hashing your own images: a trained model's encoder, an index on disk, search and evaluation."""
