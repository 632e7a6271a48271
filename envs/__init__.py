"""Gymnasium token-MDPs with planted failure points."""
