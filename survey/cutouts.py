"""Sky positions -> Legacy Surveys cutouts: position tables in, cutout bytes out, politely.

    from survey.cutouts import CutoutParams, CutoutFetcher
    from survey.positions import read_positions
    fetcher = CutoutFetcher(CutoutParams())                  # defaults: as Galaxy10 DECaLS was made
    jpeg = fetcher.fetch(184.8461, 5.7975)                   # bytes, from the disk cache when there
    positions = read_positions("positions.ecsv")             # csv / fits / vot / ecsv tables

    python -m survey.cutouts --ra 184.8461 --dec 5.7975 --out galaxy.jpg   # one cutout

The service URL is `https://www.legacysurvey.org/viewer/cutout.jpg` (or `cutout.fits`, which takes
`bands=grz` too) with `ra`, `dec`, `layer`, `pixscale` and `size` added as query parameters; the
defaults (layer ls-dr10-grz, 0.262 arcsec per pixel, 256 pixels) match how Galaxy10 DECaLS was
downloaded. `--cutout-url` points elsewhere (a mirror, or the tests' local server); a URL with
`{ra}` and `{dec}` fields is used as a template instead.

Politeness and robustness:
- every answer is cached on disk (`$GALAXY_CUTOUT_CACHE`, default ~/.cache/galaxy_morph/cutouts),
  keyed by position (to 1e-6 degree) and every parameter; "no survey data here" is cached too,
  failures are not. Files are written atomically, so a killed run leaves no half cutout behind.
- at most `max_in_flight` requests (default 4) reach the service at once, from any number of threads.
- 429 and 5xx answers, connection errors and timeouts are retried with exponential backoff by
  urllib3's Retry (honouring Retry-After); 4xx answers are not retried.
- a position outside the survey's footprint (blank cutout, a FITS header with OVERLAP = F and no
  data, NaN-only pixels, or a "no overlap" answer) raises NoSurveyData; any other failure raises
  CutoutError. Both are OSError, so the bulk classifier writes them as a row with the reason.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from galaxy_morph.files import atomic_write_bytes
from galaxy_morph.imaging import IMAGE_SIGNATURES
from survey.positions import Position, parse_angle

DEFAULT_URL = "https://www.legacysurvey.org/viewer/cutout.jpg"
DEFAULT_LAYER = "ls-dr10-grz"  # the g, r, z look of Galaxy10 DECaLS (ls-dr10 adds i where it exists)
DEFAULT_PIXSCALE = 0.262  # arcsec per pixel: the native DECam pixel
DEFAULT_SIZE = 256
DEFAULT_BANDS = "grz"
MAX_SIZE = 3000  # the service's own limit
# 429 and every 5xx: what an overloaded or restarting service answers (the cutout service and
# TorchServe alike); anything else is an answer.
RETRY_STATUSES = frozenset({429} | set(range(500, 600)))
NO_OVERLAP_WORDS = ("no overlap", "outside the footprint", "no data")


class CutoutError(OSError):
    """A cutout that could not be had; the message says why and is safe to show and to store."""


class NoSurveyData(CutoutError):
    """The service has no imaging at this position (outside the footprint): not worth asking again."""



# ---------------------------------------------------------------------------------------------
# Parameters and URLs


@dataclass(frozen=True)
class CutoutParams:
    url: str = DEFAULT_URL
    layer: str = DEFAULT_LAYER
    pixscale: float = DEFAULT_PIXSCALE
    size: int = DEFAULT_SIZE
    bands: str = DEFAULT_BANDS

    def __post_init__(self):
        if not str(self.url).startswith(("http://", "https://")):
            raise ValueError(f"cutout URL must start with http:// or https://, got {self.url!r}")
        if not (1 <= int(self.size) <= MAX_SIZE):
            raise ValueError(f"cutout size must be 1..{MAX_SIZE} pixels, got {self.size}")
        if not (float(self.pixscale) > 0 and math.isfinite(float(self.pixscale))):
            raise ValueError(f"pixel scale must be a positive number of arcsec, got {self.pixscale}")

    @property
    def format(self) -> str:
        """'fits' when the URL asks for cutout.fits, else 'jpeg'."""
        path = urlsplit(self.url.split("?")[0].replace("{", "").replace("}", "")).path.lower()
        return "fits" if path.endswith((".fits", ".fit", ".fits.gz")) else "jpeg"

    def query(self, ra: float, dec: float) -> dict:
        q = {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "layer": self.layer,
             "pixscale": f"{float(self.pixscale):g}", "size": str(int(self.size))}
        if self.format == "fits":
            q["bands"] = self.bands
        return q

    def url_for(self, ra: float, dec: float) -> str:
        q = self.query(ra, dec)
        if "{ra}" in self.url or "{dec}" in self.url:
            return self.url.format(**q)
        return self.url + ("&" if "?" in self.url else "?") + urlencode(q)

    def cache_key(self, ra: float, dec: float) -> str:
        base = self.url if "{" in self.url else self.url.split("?")[0]
        doc = {"url": base, **self.query(ra, dec)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("GALAXY_CUTOUT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "galaxy_morph" / "cutouts"


# ---------------------------------------------------------------------------------------------
# Fetching


@dataclass
class FetchStats:
    requests: int = 0  # cutouts asked of the service (each counts once, however many retries)
    cache_hits: int = 0
    no_data: int = 0
    failures: int = 0
    max_in_flight: int = 0


class CutoutFetcher:
    """Thread-safe cached fetching with a bound on requests in flight and retries with backoff."""

    def __init__(self, params: CutoutParams | None = None, cache_dir: str | os.PathLike | None = None,
                 max_in_flight: int = 4, retries: int = 5, backoff: float = 0.5, timeout: float = 60.0):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.params = params or CutoutParams()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.retries = retries
        self.backoff = backoff
        self.timeout = (min(10.0, timeout), timeout)
        self.stats = FetchStats()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._local = threading.local()

    # -- cache ------------------------------------------------------------------------------
    def cache_path(self, ra: float, dec: float) -> Path:
        key = self.params.cache_key(ra, dec)
        suffix = ".fits" if self.params.format == "fits" else ".jpg"
        return self.cache_dir / key[:2] / (key + suffix)

    def _read_cache(self, path: Path) -> bytes | None:
        nodata = path.with_suffix(".nodata")
        if nodata.is_file():
            raise NoSurveyData(nodata.read_text(encoding="utf-8").strip() or "no survey data here")
        if path.is_file():
            return path.read_bytes()
        return None

    def _write_cache(self, path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data)

    # -- HTTP -------------------------------------------------------------------------------
    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            retry = Retry(total=self.retries, connect=self.retries, read=self.retries,
                          status=self.retries, other=0, backoff_factor=self.backoff, backoff_max=30.0,
                          status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET"}),
                          respect_retry_after_header=True, raise_on_status=False)
            s = requests.Session()
            s.headers["User-Agent"] = "galaxy-morph cutout fetcher (python-requests)"
            adapter = HTTPAdapter(max_retries=retry, pool_maxsize=4)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            self._local.session = s
        return s

    def fetch(self, ra: float, dec: float) -> bytes:
        """Cutout bytes (JPEG or FITS, as the URL asks) for one position; see the module docstring."""
        check_position(ra, dec)
        path = self.cache_path(ra, dec)
        cached = self._read_cache(path)
        if cached is not None:
            self._count("cache_hits")
            return cached
        url = self.params.url_for(ra, dec)
        try:
            data = self._download(url, ra, dec)
        except NoSurveyData as e:
            self._count("no_data")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_cache(path.with_suffix(".nodata"), str(e).encode("utf-8"))
            raise
        except CutoutError:
            self._count("failures")
            raise
        self._write_cache(path, data)
        return data

    def _download(self, url: str, ra: float, dec: float) -> bytes:
        import requests

        where = f"RA {ra:.6f}, Dec {dec:+.6f}"
        with self._slots:
            with self._lock:
                self._in_flight += 1
                self.stats.requests += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            try:
                r = self._session().get(url, timeout=self.timeout)
                body = r.content
            except requests.exceptions.RetryError as e:
                raise CutoutError(f"cutout service kept failing at {where} after {self.retries + 1} "
                                  f"attempts ({_short(e)})") from None
            except requests.exceptions.Timeout:
                raise CutoutError(f"cutout service timed out at {where} after {self.retries + 1} "
                                  f"attempts") from None
            except requests.exceptions.RequestException as e:
                raise CutoutError(f"cannot reach the cutout service for {where} after "
                                  f"{self.retries + 1} attempts ({_short(e)})") from None
            finally:
                with self._lock:
                    self._in_flight -= 1
        return self._check_answer(r.status_code, r.headers.get("Content-Type", ""), body, where)

    def _check_answer(self, status: int, ctype: str, body: bytes, where: str) -> bytes:
        text = _text(body, ctype)
        if status != 200:
            if text and any(w in text.lower() for w in NO_OVERLAP_WORDS):
                raise NoSurveyData(f"no survey data at {where} in {self.params.layer}: "
                                   f"the service says {text[:160]!r}")
            kept = " after retries" if status in RETRY_STATUSES else ""
            raise CutoutError(f"cutout service answered HTTP {status}{kept} for {where}"
                              + (f": {text[:200]}" if text else ""))
        check_cutout(body, where, self.params.layer)
        return body

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)


def check_cutout(data: bytes, where: str = "this position", layer: str = "the survey") -> None:
    """Raise NoSurveyData for a blank/no-data cutout, CutoutError for bytes that are not a cutout."""
    from galaxy_morph.fits_image import check_signal, is_fits, read_bands
    from galaxy_morph.imaging import ImageError, decode_image

    outside = f"no survey data at {where} in {layer} (outside the footprint)"
    if is_fits(data):
        try:
            check_signal(read_bands(data))
        except ImageError as e:
            msg = str(e)
            if msg.startswith("no data") or "OVERLAP" in msg:
                raise NoSurveyData(f"{outside}: {msg}") from None
            raise CutoutError(f"cutout service sent an unusable FITS file for {where}: {msg}") from None
        return
    text = _text(data, "")
    if text and any(w in text.lower() for w in NO_OVERLAP_WORDS):
        raise NoSurveyData(f"{outside}: the service says {text[:160]!r}")
    try:
        img = decode_image(data)
    except ImageError as e:
        raise CutoutError(f"cutout service sent something that is not an image for {where}: {e}"
                          + (f" ({text[:120]!r})" if text else "")) from None
    if max(hi for _, hi in img.getextrema()) <= 2:
        raise NoSurveyData(f"{outside}: the cutout is blank")


def _text(body: bytes, ctype: str = "") -> str:
    """A short, printable version of a text answer ('' for image and other binary bodies)."""
    import re

    head = bytes(body[:2000])
    if not head or b"\x00" in head or head.startswith(IMAGE_SIGNATURES):
        return ""
    try:
        s = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return " ".join(re.sub(r"<[^>]+>", " ", s).split())


def _short(e: Exception) -> str:
    s = str(e)
    reason = getattr(e, "args", [None])[0]
    inner = getattr(reason, "reason", None)
    return " ".join(str(inner or s).split())[:200]



def check_position(ra, dec) -> None:
    if ra is None or dec is None or not (math.isfinite(ra) and math.isfinite(dec)):
        raise CutoutError("no position: ra or dec is empty")
    if not -90.0 <= dec <= 90.0:
        raise CutoutError(f"dec {dec:g} is outside -90..90 degrees")
    if not 0.0 <= ra < 360.0:
        raise CutoutError(f"ra {ra:g} is outside 0..360 degrees")



def position_loaders(positions: list[Position], fetcher: CutoutFetcher, skip=frozenset()):
    """(id, load) for each position not in `skip`; load() fetches the cutout bytes or raises
    CutoutError (an OSError) with the reason, which the bulk classifier writes as the row's error."""
    for p in positions:
        if p.id in skip:
            continue
        if p.problem:
            yield p.id, (lambda msg=p.problem: _raise(CutoutError(msg)))
        else:
            yield p.id, (lambda ra=p.ra, dec=p.dec: fetcher.fetch(ra, dec))


def _raise(e: Exception):
    raise e


def position_cutout(ra_text: str, dec_text: str, fits: bool = False, url: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[str, bytes]:
    """A typed position (degrees or sexagesimal) -> (caption, cutout bytes), for the dashboard.

    The service is `url`, else $GALAXY_CUTOUT_URL, else the Legacy Surveys'; with `fits` the
    cutout.fits form of it is asked. Raises ValueError for text that is not a position, NoSurveyData
    outside the footprint and CutoutError when the download fails (both OSError)."""
    ra, dec = parse_angle(ra_text, "ra"), parse_angle(dec_text, "dec")
    if ra is None or dec is None:
        raise ValueError("give both RA and Dec")
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"Dec {dec:g} is outside -90..90 degrees")
    base = url or os.environ.get("GALAXY_CUTOUT_URL") or DEFAULT_URL
    base = base.replace("cutout.fits", "cutout.jpg")
    if fits:
        base = base.replace("cutout.jpg", "cutout.fits")
    fetcher = CutoutFetcher(CutoutParams(url=base), cache_dir=cache_dir, retries=2, timeout=30.0)
    data = fetcher.fetch(ra, dec)
    return f"RA {ra:.5f}, Dec {dec:+.5f} ({fetcher.params.layer}, {fetcher.params.format.upper()})", data


# ---------------------------------------------------------------------------------------------
# Command-line options shared by the bulk classifier and this module


def add_cutout_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cutouts (when the input is a table of sky positions)")
    g.add_argument("--cutout-url", default=os.environ.get("GALAXY_CUTOUT_URL", DEFAULT_URL),
                   help=f"cutout service; .../cutout.fits asks for FITS (default {DEFAULT_URL})")
    g.add_argument("--layer", default=DEFAULT_LAYER, help=f"survey layer (default {DEFAULT_LAYER})")
    g.add_argument("--pixscale", type=float, default=DEFAULT_PIXSCALE,
                   help=f"arcsec per pixel (default {DEFAULT_PIXSCALE}, the native pixel)")
    g.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"pixels a side (default {DEFAULT_SIZE})")
    g.add_argument("--bands", default=DEFAULT_BANDS, help="bands for FITS cutouts (default grz)")
    g.add_argument("--ra-col", default=None, help="ra column (default: ra, RA, RAJ2000, ...)")
    g.add_argument("--dec-col", default=None, help="dec column (default: dec, DEC, DEJ2000, ...)")
    g.add_argument("--id-col", default=None, help="id column (default: id when present, else the row index)")
    g.add_argument("--cache-dir", default=None,
                   help="cutout cache (default $GALAXY_CUTOUT_CACHE or ~/.cache/galaxy_morph/cutouts)")
    g.add_argument("--cutout-requests", type=int, default=4,
                   help="requests in flight to the cutout service (default 4: be polite)")
    g.add_argument("--cutout-retries", type=int, default=5,
                   help="retries per cutout on 429/5xx/timeouts, with exponential backoff")


def fetcher_from_args(args) -> CutoutFetcher:
    params = CutoutParams(url=args.cutout_url, layer=args.layer, pixscale=args.pixscale, size=args.size,
                          bands=args.bands)
    return CutoutFetcher(params, cache_dir=args.cache_dir, max_in_flight=args.cutout_requests,
                         retries=args.cutout_retries)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m survey.cutouts",
                                description="Fetch one Legacy Surveys cutout (cached) and save it.")
    p.add_argument("--ra", required=True, help="degrees, or sexagesimal hours (12:19:23.1)")
    p.add_argument("--dec", required=True, help="degrees, or sexagesimal degrees (+05:47:51)")
    p.add_argument("--out", required=True, help="file to write (.jpg or .fits, as the URL gives)")
    add_cutout_arguments(p)
    args = p.parse_args(argv)
    try:
        ra, dec = parse_angle(args.ra, "ra"), parse_angle(args.dec, "dec")
        fetcher = fetcher_from_args(args)
        data = fetcher.fetch(ra, dec)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    Path(args.out).write_bytes(data)
    print(f"{args.out}: {len(data)} bytes ({fetcher.params.format}) for RA {ra:.6f}, Dec {dec:+.6f}; "
          f"{json.dumps(asdict(fetcher.stats))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
