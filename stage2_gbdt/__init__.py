"""stage2_gbdt."""
