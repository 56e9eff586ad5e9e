"""Checkpoints: known records, verified downloads, safe loading."""
