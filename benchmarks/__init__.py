"""Benchmarks: `make bench` runs them and writes their tables into README.md."""

import trajstack  # noqa: F401  (before torch: sets the OpenMP wait policy)
