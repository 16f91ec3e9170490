"""Benchmarks: `python -m bench.training` (training input path vs raw step rate), `python -m bench.serving`."""
