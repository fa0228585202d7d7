"""Shared by the benchmark scripts: provenance records and the segmentation results writer (not benchmarks)."""
