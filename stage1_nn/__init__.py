"""stage1_nn."""
