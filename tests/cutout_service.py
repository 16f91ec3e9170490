"""A local stand-in for the Legacy Surveys cutout service, for tests (nothing touches the internet).

    with LocalCutoutService() as svc:
        url = svc.url("cutout.jpg")            # http://127.0.0.1:PORT/viewer/cutout.jpg
        svc.rules[(10.0, 5.0)] = "503x2"      # misbehave at one position

GET /viewer/cutout.jpg and /viewer/cutout.fits take ra, dec, layer, pixscale, size (and bands for
FITS) like the real service. A galaxy is drawn in g, r, z fluxes (nanomaggies-like), seeded by the
position: FITS answers are the (3, H, W) cube in a 3-D primary HDU with BANDS / BAND0.. keys, JPEG
answers are the same cube through galaxy_morph.legacy_rgb.sdss_rgb, north up. Positions with
Dec < -70 are outside the footprint: a black JPEG, or a FITS header with OVERLAP = F and no data.
A layer other than the known ones gets HTTP 400. Per-position rules (key: (ra, dec) rounded to 4
decimals) misbehave on purpose:

    "500"      always HTTP 500          "503xN"   HTTP 503 for the first N requests, then the cutout
    "404"      HTTP 404                 "slow"    answers after `slow_s` seconds
    "text"     HTTP 200 text/plain "No overlap"   "nan"  a FITS cube of NaN only
    "garbage"  HTTP 200 with bytes that are not an image

`delay_s` delays every answer (to keep several requests in flight, or to kill a run mid-way).
`requests` counts requests per (ra, dec); `max_in_flight` is the most answered at once.
"""
from __future__ import annotations

import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from galaxy_morph.legacy_rgb import sdss_rgb, to_uint8

LAYERS = ("ls-dr10-grz", "ls-dr10", "ls-dr9")
FOOTPRINT_MIN_DEC = -70.0


def galaxy_cube(ra: float, dec: float, size: int = 64) -> np.ndarray:
    """(3, size, size) float32 g, r, z fluxes of an inclined disk galaxy with a redder bulge."""
    rng = np.random.default_rng(int(abs(ra * 1e4) + abs(dec * 1e4) * 7) % (2 ** 32))
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - (size - 1) / 2
    pa, q = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0)
    u = xx * np.cos(pa) + yy * np.sin(pa)
    v = (-xx * np.sin(pa) + yy * np.cos(pa)) / q
    r = np.hypot(u, v)
    scale = size * rng.uniform(0.06, 0.12)
    disk = np.exp(-r / scale)
    bulge = np.exp(-7.67 * ((r / (0.4 * scale)) ** 0.25 - 1))
    cube = np.stack([0.6 * disk + 0.3 * bulge, 0.9 * disk + 0.8 * bulge, 1.1 * disk + 1.5 * bulge])
    cube = cube * rng.uniform(0.5, 2.0) + rng.normal(0, 0.004, cube.shape)
    return cube.astype(np.float32)


def jpeg_of(cube: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    rgb = to_uint8(sdss_rgb(np.nan_to_num(cube, nan=-1.0)))[::-1]
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def cube_to_fits(cube: np.ndarray, bands: str = "grz", header: dict | None = None) -> bytes:
    """(bands, H, W) fluxes -> FITS bytes laid out like the service's cutout.fits (3-D primary HDU, BANDS keys)."""
    from astropy.io import fits

    hdr = fits.Header()
    hdr["BANDS"] = bands
    for i, b in enumerate(bands):
        hdr[f"BAND{i}"] = b
    for k, v in (header or {}).items():
        hdr[k] = v
    buf = io.BytesIO()
    fits.PrimaryHDU(np.asarray(cube, np.float32), header=hdr).writeto(buf)
    return buf.getvalue()


class LocalCutoutService:
    def __init__(self, delay_s: float = 0.0, slow_s: float = 1.0):
        self.rules: dict[tuple[float, float], str] = {}
        self.requests: Counter = Counter()
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str = "cutout.jpg") -> str:
        return f"http://127.0.0.1:{self.port}/viewer/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def answer(self, path: str, q: dict) -> tuple[int, str, bytes]:
        try:
            ra, dec = float(q["ra"]), float(q["dec"])
            size = int(q.get("size", 256))
        except (KeyError, ValueError):
            return 400, "text/plain", b"ra and dec are required numbers"
        key = (round(ra, 4), round(dec, 4))
        with self._lock:
            self.requests[key] += 1
            count = self.requests[key]
        rule = self.rules.get(key, "")
        if self.delay_s:
            time.sleep(self.delay_s)
        if q.get("layer", "ls-dr10-grz") not in LAYERS:
            return 400, "text/html", f"<html><body>Unknown layer {q.get('layer')}</body></html>".encode()
        if rule == "500":
            return 500, "text/plain", b"Internal Server Error"
        if rule == "404":
            return 404, "text/plain", b"Not Found"
        if rule.startswith("503x") and count <= int(rule[4:]):
            return 503, "text/plain", b"Service Unavailable"
        if rule == "slow":
            time.sleep(self.slow_s)
        if rule == "text":
            return 200, "text/plain", b"No overlap"
        if rule == "garbage":
            return 200, "image/jpeg", b"\xff\xd8\xff\xe0 this is not really a JPEG"
        fits = path.endswith(".fits")
        if dec < FOOTPRINT_MIN_DEC:
            if fits:
                return 200, "image/fits", _no_overlap_fits()
            return 200, "image/jpeg", jpeg_of(np.full((3, size, size), -1.0, np.float32))
        cube = galaxy_cube(ra, dec, min(size, 512))
        if rule == "nan":
            cube[:] = np.nan
        if fits:
            bands = q.get("bands", "grz")
            planes = {"g": cube[0], "r": cube[1], "z": cube[2], "i": 0.5 * (cube[1] + cube[2])}
            return 200, "image/fits", cube_to_fits(np.stack([planes[b] for b in bands]), bands,
                                                   {"SURVEY": "LegacySurvey", "RA": ra, "DEC": dec})
        return 200, "image/jpeg", jpeg_of(cube)

    def _handler(self):
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with svc._lock:
                    svc.in_flight += 1
                    svc.max_in_flight = max(svc.max_in_flight, svc.in_flight)
                try:
                    u = urlsplit(self.path)
                    if u.path not in ("/viewer/cutout.jpg", "/viewer/cutout.fits"):
                        status, ctype, body = 404, "text/plain", b"Not Found"
                    else:
                        q = {k: v[0] for k, v in parse_qs(u.query).items()}
                        status, ctype, body = svc.answer(u.path, q)
                finally:
                    with svc._lock:
                        svc.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        return Handler


def _no_overlap_fits() -> bytes:
    """What the service writes where no brick overlaps: a primary header, OVERLAP = F, no data."""
    from astropy.io import fits

    hdr = fits.Header()
    hdr["BANDS"] = "grz"
    hdr["OVERLAP"] = False
    buf = io.BytesIO()
    fits.PrimaryHDU(header=hdr).writeto(buf)
    return buf.getvalue()
