"""The seed system's serving architecture, kept as a baseline: one Flask process, models in it.

    python -m bench.flask_baseline --port 38001 --run checkpoints/demo [--runtime onnx]

Every request answers its one image on its own (no batching across requests), as the seed's Flask
endpoint did, with the predictor the other servers serve: galaxy_morph.Predictor.from_run(RUN,
model, runtime=RUNTIME) for b0, b2 and the ensemble, so that only the architecture differs.
Endpoints (127.0.0.1 only):

    GET  /ping                      -> {"status": "Healthy"}
    POST /predict/b0 | /predict/b2  raw image bytes (or multipart field "file") -> the answer
    POST /predict/ensemble          both models, the run's ensemble rule

`make bench` (bench/serving.py) starts it as a subprocess and measures it beside TorchServe.
"""
from __future__ import annotations

import argparse

from flask import Flask, jsonify, request

from bench.common import TARGETS
from galaxy_morph import Predictor


def create_app(predictors: dict) -> Flask:
    app = Flask("flask_baseline")

    @app.get("/ping")
    def ping():
        return jsonify(status="Healthy")

    @app.post("/predict/<name>")
    def predict(name):
        if name not in predictors:
            return jsonify(error=f"unknown model {name!r}"), 404
        data = request.files["file"].read() if "file" in request.files else request.get_data()
        answer = predictors[name].answer_batch([data])[0]
        if isinstance(answer, Exception):  # the ImageError that refused it
            return jsonify(error=str(answer)), getattr(answer, "status", 400)
        return jsonify(answer)

    return app


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=38001)
    p.add_argument("--run", required=True, help="run folder with b0/ and b2/")
    p.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    args = p.parse_args(argv)
    predictors = {m: Predictor.from_run(args.run, m, runtime=args.runtime) for m in TARGETS}
    # Flask's own threaded server, as the seed ran it: one thread per request, one process.
    create_app(predictors).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
