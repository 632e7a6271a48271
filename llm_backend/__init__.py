"""Transformers policy/critic backend, math tasks and rewards."""
