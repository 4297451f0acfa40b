"""Benchmarks: `make bench` runs them and writes their tables into README.md."""
