"""Reads run directories: tables, scores and plots."""
