"""Attributions and their sanity checks."""
