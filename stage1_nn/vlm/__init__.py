"""Qwen2-VL features for stage 1 (issue 8): prompt, extractor, chunked cache, loader, CLI."""
