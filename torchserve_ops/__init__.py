"""Operating TorchServe from outside: building its archives, starting and stopping it, managing
model versions, and talking to it over HTTP (single requests and bulk catalogue runs).

    torchserve_ops.archive    python -m torchserve_ops.archive --run checkpoints/demo --store model_store
    torchserve_ops.server     python -m torchserve_ops.server start|stop|status (the launcher behind make serve)
    torchserve_ops.versions   python -m torchserve_ops.versions list|register|set-default|rollback|unregister
    torchserve_ops.client     TorchServeClient: keys, token renewal, readiness, every API call
    torchserve_ops.pool       replicas, retries and backoff for a bulk run
    torchserve_ops.bulk       python -m torchserve_ops.bulk --input DIR_H5_OR_POSITIONS --out catalog.csv

What runs inside a worker lives in handlers/ and the core it ships in galaxy_morph/; survey I/O
(inputs, cutouts, catalogue rows and tables) in survey/. Only archive.py imports the worker package,
to pack it.
"""
