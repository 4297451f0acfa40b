"""Loaded by pytest before any test module, so trajstack's OpenMP setting precedes torch."""

import trajstack  # noqa: F401
