"""FITS cutouts through the real TorchServe (token auth on): /predictions/galaxy-b0 and the
workflow answer a FITS cutout like its rendering, bad FITS get 4xx and the workers keep serving.

    .venv/bin/python -m pytest -q tests/test_fits_serving.py
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from galaxy_morph.fits_image import fits_to_rgb
from tests.cutout_service import LocalCutoutService, cube_to_fits, galaxy_cube
from tests.test_fits_image import huge_header_only

FITS_CUTOUT = cube_to_fits(galaxy_cube(184.8461, 5.7975, 128))


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def predict(ts, body: bytes, model: str = "galaxy-b0") -> requests.Response:
    h = {**ts.auth("inference"), "Content-Type": "application/octet-stream"}
    return requests.post(f"{ts.inference_url}/predictions/{model}", data=body, headers=h, timeout=120)


def wfpredict(ts, body: bytes) -> requests.Response:
    h = {**ts.auth("inference"), "Content-Type": "application/octet-stream"}
    return requests.post(f"{ts.inference_url}/wfpredict/galaxy-ensemble", data=body, headers=h, timeout=120)


def same_answer(a: dict, b: dict, tol: float) -> None:
    assert a["label"] == b["label"] and a["class_name"] == b["class_name"]
    assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=tol)


@pytest.mark.parametrize("model", ["galaxy-b0", "galaxy-b2"])
def test_fits_is_answered_like_its_rendering(torchserve, model):
    rgb = fits_to_rgb(FITS_CUTOUT)
    r = predict(torchserve, FITS_CUTOUT, model)
    assert r.status_code == 200, r.text
    got = r.json()
    same_answer(got, predict(torchserve, encoded(rgb, "PNG"), model).json(), 1e-5)  # the same pixels
    # (a JPEG of the rendering is not the same pixels: how far its answer moves is the model's business)


def test_workflow_answers_fits_like_its_rendering(torchserve):
    got = wfpredict(torchserve, FITS_CUTOUT).json()
    assert "error" not in got, got
    want = wfpredict(torchserve, encoded(fits_to_rgb(FITS_CUTOUT), "PNG")).json()
    same_answer(got, want, 1e-5)
    assert got["source"] == want["source"] and got["b2"]["label"] == want["b2"]["label"]


def test_service_fits_and_jpeg_of_one_position_agree(torchserve, tmp_path):
    """What the cutout service sends for one position, as cutout.fits and as cutout.jpg."""
    with LocalCutoutService() as svc:
        q = "?ra=150.1&dec=2.2&layer=ls-dr10-grz&pixscale=0.262&size=128"
        fits_bytes = requests.get(svc.url("cutout.fits") + q + "&bands=grz", timeout=30).content
        jpeg_bytes = requests.get(svc.url("cutout.jpg") + q, timeout=30).content
    # The server answers the FITS as it answers its rendering; the rendering looks like the survey's
    # own JPEG of the position (measured on the pixels: a random test model's label is too fickle).
    served = predict(torchserve, fits_bytes)
    assert served.status_code == 200, served.text
    rgb = fits_to_rgb(fits_bytes)
    same_answer(served.json(), predict(torchserve, encoded(rgb, "PNG")).json(), 1e-5)
    jpeg = np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"), np.float64)
    assert rgb.shape == jpeg.shape and np.abs(rgb - jpeg).mean() < 16  # of 255 (9.7 measured)
    assert np.corrcoef(rgb.ravel(), jpeg.ravel())[0, 1] > 0.9  # (0.965 measured)


BAD_FITS = {
    "truncated": (lambda: FITS_CUTOUT[: len(FITS_CUTOUT) // 2], 400, "truncated"),
    "no data (outside the footprint)": (lambda: cube_to_fits(np.full((3, 64, 64), np.nan)), 400, "NaN"),
    "blank": (lambda: cube_to_fits(np.zeros((3, 64, 64))), 400, "every pixel is 0"),
    "single band": (lambda: cube_to_fits(np.ones((64, 64))), 400, "single-band"),
    "wrong bands": (lambda: cube_to_fits(np.ones((2, 64, 64)), "gr"), 400, "missing band"),
    "too large": (huge_header_only, 413, "too large"),
    "header only": (lambda: FITS_CUTOUT[:2880], 400, "FITS"),
}


@pytest.mark.parametrize("case", list(BAD_FITS))
def test_bad_fits_get_4xx_json_and_the_worker_keeps_serving(torchserve, case):
    make, code, words = BAD_FITS[case]
    r = predict(torchserve, make())
    assert r.status_code == code, r.text
    assert r.json()["code"] == code and words in r.json()["error"]
    doc = wfpredict(torchserve, make()).json()  # a finished workflow answers 200 (TorchServe 0.12)
    assert doc.get("code") == code and words in doc["error"], doc
    assert predict(torchserve, FITS_CUTOUT).status_code == 200
