"""Benchmarks: ``python -m benchmarks run [scenario ...]`` (see benchmarks/README.md)."""
