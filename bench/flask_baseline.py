"""The seed system's serving architecture, kept as a baseline: one Flask process, models in it.

    python -m bench.flask_baseline --port 38001 --b0 checkpoints/demo/b0 --b2 checkpoints/demo/b2

Every request decodes the image, applies the model's eval transform and runs the model on that one
image (no batching across requests), as the seed's Flask endpoint did. Endpoints (127.0.0.1 only):

    GET  /ping                      -> {"status": "Healthy"}
    POST /predict/b0 | /predict/b2  raw image bytes (or multipart field "file") -> the answer
    POST /predict/ensemble          both models, seed rule

`make bench` (bench/serving.py) starts it as a subprocess and measures it beside TorchServe.
"""
from __future__ import annotations

import argparse

import torch
from flask import Flask, jsonify, request

from galaxy_morph.answers import ensemble_prediction, prediction
from galaxy_morph.ensemble import combine
from galaxy_morph.imaging import ImageError, decode_image
from galaxy_morph.models import load_checkpoint


def load(ckpt_dir: str) -> dict:
    ckpt = load_checkpoint(ckpt_dir)
    return {"model": ckpt.model, "transform": ckpt.transform, "meta": ckpt.meta,
            "class_names": ckpt.class_names}


def predict_probs(entry: dict, image) -> list[float]:
    x = entry["transform"](image).unsqueeze(0)
    with torch.inference_mode():
        return torch.softmax(entry["model"](x), 1)[0].tolist()


def answer(name: str, entry: dict, probs: list[float]) -> dict:
    return prediction(name, str(entry["meta"].get("version", "")), probs, entry["class_names"])


def create_app(models: dict) -> Flask:
    app = Flask("flask_baseline")

    @app.get("/ping")
    def ping():
        return jsonify(status="Healthy")

    @app.post("/predict/<name>")
    def predict(name):
        data = request.files["file"].read() if "file" in request.files else request.get_data()
        try:
            image = decode_image(data)
        except ImageError as e:
            return jsonify(error=str(e)), 400
        if name in models:
            return jsonify(answer(name, models[name], predict_probs(models[name], image)))
        if name == "ensemble" and {"b0", "b2"} <= set(models):
            p0 = predict_probs(models["b0"], image)
            p2 = predict_probs(models["b2"], image)
            members = {"b0": answer("b0", models["b0"], p0), "b2": answer("b2", models["b2"], p2)}
            return jsonify(ensemble_prediction("ensemble", combine("seed", p0, p2),
                                               models["b0"]["class_names"], members))
        return jsonify(error=f"unknown model {name!r}"), 404

    return app


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=38001)
    p.add_argument("--b0", help="checkpoint folder of the B0 model")
    p.add_argument("--b2", help="checkpoint folder of the B2 model")
    args = p.parse_args(argv)
    models = {name: load(d) for name, d in (("b0", args.b0), ("b2", args.b2)) if d}
    # Flask's own threaded server, as the seed ran it: one thread per request, one process.
    create_app(models).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
