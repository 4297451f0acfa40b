"""ensembling."""
