"""Benchmarks: speed measured against a baseline in the same process, written to BENCHMARKS.md."""
