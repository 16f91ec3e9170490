"""Benchmarks: `python -m bench.training` (training input path vs raw step rate), `python -m bench.serving`
(`make bench`: raw vs Flask vs TorchServe vs Ray), `python -m bench.gpu_serving` (`make bench-gpu`),
`python -m bench.handler` (the handler without the server). Shared pieces: bench.common, bench.raw,
bench.load, bench.servers, bench.ray_rate, bench.report."""
