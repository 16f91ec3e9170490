"""Bulk classification of a catalogue against running TorchServe server(s), resumable.

    python -m galaxy_service.bulk --input FOLDER_OR_H5 --out catalog.csv \
        [--model galaxy-ensemble] [--servers URL1,URL2] [--key-file K1 --key-file K2] \
        [--concurrency 8] [--rule seed]
    make classify INPUT=samples/galaxy10_decals OUT=catalog.csv [MODEL=galaxy-b0] [SERVERS=...]

Inputs are streamed: a folder is walked lazily (JPEG/PNG files, id = path relative to the folder),
an HDF5 file of the Galaxy10 schema is read row by row (id = row index, each row sent as PNG).
At most `2 x concurrency` inputs are held at any time, so memory stays flat however long the
catalogue is. Each answer is written as one CSV row and flushed at once:

    id, label, class_name, confidence, error, <one column per class: its probability, headed by
    the class name>, model, version
    (+ source, rule for the ensemble workflow)

A table of sky positions (.csv, .fits, .vot, .ecsv with ra/dec columns, an `id` column kept when
present, else id = row index) gets each cutout from the Legacy Surveys cutout service through
galaxy_morph.cutouts (disk cache, bounded requests in flight, retries with backoff; --cutout-url,
--layer, --pixscale, --size, --ra-col, --dec-col, --id-col); a position outside the footprint or a
failed download is a row with the reason in `error`. Folders may hold g, r, z FITS cutouts too.
--out catalog.fits / .vot / .ecsv: rows go to catalog.fits.csv as above, and when the run completes
it is converted to an astropy table with units and descriptions (galaxy_morph.catalog, which is
also a command of its own).

Resume: running the same command again skips every id already in the CSV (only the id column is
read), repairs a last line cut short by a kill, and appends the rest: no row is duplicated or
lost. An input the server refuses (HTTP 4xx: not an image, truncated, too large) gets a row with
the server's message in `error`; 5xx answers, 429 and connection errors are retried with
exponential backoff (on another server when there are several). When retries run out the run
stops submitting, writes what it has, and exits with status 3: re-run to resume.

Several servers share the load (least in-flight requests first). Tokens (TorchServe's token
authorisation is on by default):
  --key-file PATH   TorchServe's key_file.json, re-read when the server refuses the key (keys
                    change at every server start and expire). Give it once for all servers or
                    once per server, in the order of --servers. Default: $TS_KEY_FILE, else
                    ./key_file.json, else the repository root's (where `make serve` writes it).
  --management-url  where to ask for a fresh key when the key file still holds an expired one
                    (default: the local server's, from TS_MANAGEMENT_PORT; none for --servers).
  --token KEY       a fixed inference key, once or once per server, for a remote server whose key
                    file is not on this machine; or env GALAXY_TS_TOKENS="key1,key2".
--rule picks the ensemble rule of the workflow (sent as the X-Ensemble-Rule header).
Exit status: 0 done, 1 bad arguments / unreachable servers, 3 stopped early (re-run to resume).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tenacity import (Retrying, retry_if_exception_type, stop_after_attempt,
                      wait_exponential_jitter)

from galaxy_morph.catalog import convert, is_table_output, output_format, positions_for, working_csv
from galaxy_morph.cutouts import (PositionsError, add_cutout_arguments, fetcher_from_args, position_loaders,
                                  read_positions, table_format)
from galaxy_service.client import (AuthError, ServerError, ServerUnavailable, TorchServeClient,
                                   TorchServeError, locate_key_file, server_settings)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".fits", ".fit")  # FITS: g, r, z cutouts
BASE_COLUMNS = ["id", "label", "class_name", "confidence", "error"]
# 4xx statuses that describe the input itself: recorded in the row, never retried.
INPUT_ERRORS = {400, 406, 413, 415, 422}
RETRY_STATUSES = {429} | set(range(500, 600))


class BulkError(RuntimeError):
    """A problem with the run as a whole (arguments, servers, output file); the message says what."""


class TransientError(RuntimeError):
    """Worth retrying: a 5xx, 429, timeout or connection error."""


class FatalServerError(BulkError):
    """The server refuses every request (wrong token, unknown model): stop the run."""


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Item:
    id: str
    load: Callable[[], bytes]  # called in a worker thread: reading/encoding happens in parallel


def iter_folder(folder: Path, skip: set | frozenset = frozenset()) -> Iterator[Item]:
    """Image files under `folder`, depth first in sorted order, streamed one directory at a time."""
    folder = Path(folder)

    def walk(d: Path, rel: str):
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=False):
                yield from walk(Path(e.path), r + "/")
            elif e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
                if r not in skip:
                    path = e.path
                    yield Item(r, lambda p=path: Path(p).read_bytes())

    yield from walk(folder, "")


def count_folder(folder: Path) -> int:
    n = 0
    for _, _, files in os.walk(folder):
        n += sum(1 for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    return n


def encode_png(array) -> bytes:
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def iter_h5(path: Path, skip: set | frozenset = frozenset(), chunk: int = 64) -> Iterator[Item]:
    """Rows of the `images` dataset as PNG; read `chunk` rows at a time, encoded lazily."""
    import h5py

    with h5py.File(path, "r") as f:
        images = f["images"]
        n = images.shape[0]
        for start in range(0, n, chunk):
            ids = [str(i) for i in range(start, min(n, start + chunk))]
            if all(i in skip for i in ids):
                continue
            block = images[start:start + len(ids)]
            for k, i in enumerate(ids):
                if i not in skip:
                    yield Item(i, lambda a=block[k].copy(): encode_png(a))
            del block


def h5_size(path: Path) -> int:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "images" not in f:
                raise BulkError(f"{path}: no 'images' dataset (keys: {', '.join(f.keys()) or 'none'})")
            shape = f["images"].shape
    except OSError as e:
        raise BulkError(f"{path} is not a readable HDF5 file ({e})") from None
    if len(shape) != 4 or shape[3] not in (1, 3, 4):
        raise BulkError(f"{path}: 'images' must be (N, H, W, 3), got {shape}")
    return int(shape[0])


def open_input(path: str | os.PathLike, skip=frozenset(), fetcher=None,
               columns: dict | None = None) -> tuple[Iterator[Item], int]:
    """(lazy items, total count) for a folder, an HDF5 file or a table of sky positions (whose
    cutouts `fetcher`, a galaxy_morph.cutouts.CutoutFetcher, downloads); BulkError if unusable."""
    if not str(path).strip():
        raise BulkError("no input given: --input FOLDER_OR_H5 (make classify INPUT=...)")
    path = Path(path)
    if not path.exists():
        raise BulkError(f"input not found: {path!s} (give a folder of JPEG, PNG or FITS cutouts, an HDF5 file, or a table of sky positions)")
    if table_format(path) and path.is_file():
        return position_items(path, skip, fetcher, columns or {})
    if path.is_dir():
        total = count_folder(path)
        if total == 0:
            raise BulkError(f"no JPEG, PNG or FITS images under {path}")
        return iter_folder(path, skip), total
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        return iter_h5(path, skip), h5_size(path)
    raise BulkError(f"{path}: expected a folder of images, an .h5/.hdf5 file or a table of positions "
                    f"(.csv, .fits, .vot, .ecsv)")


def position_items(path: Path, skip, fetcher, columns: dict) -> tuple[Iterator[Item], int]:
    """Rows of a positions table; each item's load() fetches its cutout, or raises an OSError whose
    message (outside the footprint, download failed, no position) becomes the row's error."""
    try:
        positions = read_positions(path, **columns)
    except PositionsError as e:
        raise BulkError(str(e)) from None
    return (Item(i, load) for i, load in position_loaders(positions, fetcher, skip)), len(positions)


# ---------------------------------------------------------------------------------------------
# The catalogue file


def read_done_ids(path: Path, expected_header: list[str] | None = None) -> tuple[set, list[str] | None]:
    """Ids already in the CSV; a last line cut short by a kill is removed from the file.

    Returns (ids, header). Only the first column of each row is kept in memory.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set(), None
    with open(path, "rb") as f:  # never cut the last line of a run that is still writing
        _lock(f, path)
        repair_tail(path)
    ids: set = set()
    header = None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if header is None:
                header = row
                if not header or header[0] != "id":
                    raise BulkError(f"{path} exists and is not a catalogue (first column is not 'id'): "
                                    f"choose another --out")
                if expected_header is not None and header != expected_header:
                    raise BulkError(f"{path} was written with other columns ({len(header)}: "
                                    f"{', '.join(header[5:8])}...): use another --out for this model")
                continue
            if row and len(row) == len(header):
                ids.add(row[0])
    return ids, header


def repair_tail(path: Path) -> int:
    """Cut the file back to its last newline (a row half written when the run was killed).

    Returns the number of bytes removed.
    """
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos, block = size, 4096
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            data = f.read(pos - start)
            k = data.rfind(b"\n")
            if k >= 0:
                keep = start + k + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


def _lock(f, path: Path) -> None:
    """An exclusive lock on the catalogue for as long as `f` is open: one run per file."""
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise BulkError(f"another run is writing {path}: wait for it or choose another --out") from None


class CatalogWriter:
    """Appends rows and flushes each one; holds an exclusive lock so two runs cannot interleave."""

    def __init__(self, path: Path, header: list[str], write_header: bool):
        self.path = Path(path)
        self.header = header
        self.f = open(self.path, "a", newline="", encoding="utf-8")
        try:
            _lock(self.f, self.path)
        except BulkError:
            self.f.close()
            raise
        if write_header:
            self.write(header)

    def write(self, values: list) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self.f.write(buf.getvalue())  # one write per row: a kill leaves at most one partial line
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def header_for(class_names: list[str], workflow: bool) -> list[str]:
    return BASE_COLUMNS + list(class_names) + ["model", "version"] + (
        ["source", "rule"] if workflow else [])


def row_for(item_id: str, answer: dict | None, error: str, header: list[str], class_names) -> list:
    if answer is None:
        return [item_id, "", "", "", one_line(error)] + [""] * (len(header) - 5)
    probs = answer.get("probabilities") or {}
    if isinstance(probs, list):
        probs = dict(zip(class_names, probs))
    row = [item_id, answer.get("label", ""), answer.get("class_name", ""),
           _fmt(answer.get("confidence")), ""]
    row += [_fmt(probs.get(c)) for c in class_names]
    row += [answer.get("model", ""), answer.get("version", "")]
    if len(header) > len(row):
        row += [answer.get("source", ""), answer.get("rule", "")]
    return row


def _fmt(x) -> str:
    return "" if x is None else f"{float(x):.6g}"


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


# ---------------------------------------------------------------------------------------------
# Servers


class Replica:
    """One TorchServe inference endpoint with its own credentials and in-flight count.

    Requests go through galaxy_service.client (one client per thread: each has its own HTTP
    session), which re-reads the key file and retries once when the server refuses the key.
    """

    def __init__(self, url: str, key_file: Path | None = None, token: str | None = None,
                 timeout: float = 120.0, management_url: str | None = None):
        self.url = url.rstrip("/")
        self.management_url = management_url  # for token renewal; None: re-read the key file only
        self.timeout = (5.0, timeout)
        self.key_file = Path(key_file) if key_file else None
        self.token = token
        self.in_flight = 0
        self.down_until = 0.0
        self.requests = 0
        self.failures = 0
        self._local = threading.local()

    def client(self) -> TorchServeClient:
        c = getattr(self._local, "client", None)
        if c is None:
            keys = {"inference": self.token} if self.token else None
            c = self._local.client = TorchServeClient(
                inference_url=self.url, management_url=self.management_url, metrics_url=None,
                key_file=self.key_file, keys=keys, timeout=self.timeout)
        return c

    def __repr__(self):
        return f"Replica({self.url})"


class Pool:
    """Least in-flight first; a server that failed is avoided for a short, growing while."""

    def __init__(self, servers: list[Replica]):
        self.servers = servers
        self.lock = threading.Lock()
        self.rr = 0

    def acquire(self, avoid: Replica | None = None) -> Replica:
        with self.lock:
            now = time.monotonic()
            up = [s for s in self.servers if s.down_until <= now] or list(self.servers)
            if avoid is not None and len(up) > 1:
                up = [s for s in up if s is not avoid] or up
            self.rr += 1
            n = len(self.servers)
            best = min(up, key=lambda s: (s.in_flight, (self.servers.index(s) - self.rr) % n))
            best.in_flight += 1
            best.requests += 1
            return best

    def release(self, server: Replica, failed: bool, backoff: float = 0.0) -> None:
        with self.lock:
            server.in_flight -= 1
            if failed:
                server.failures += 1
                server.down_until = time.monotonic() + backoff


@dataclass
class Endpoint:
    model: str
    workflow: bool = False
    rule: str | None = None

    def send(self, server: Replica, data: bytes) -> dict:
        c = server.client()
        if self.workflow:
            return c.predict_workflow(self.model, data, rule=self.rule)
        return c.predict(self.model, data)


def one_error(e: ServerError) -> str:
    return one_line(f"HTTP {e.status}: {e.message}")


@dataclass
class RetryPolicy:
    retries: int = 6  # attempts after the first
    backoff: float = 0.5  # seconds before the first retry; doubles each time (with jitter)
    max_backoff: float = 8.0
    timeout: float = 120.0  # seconds to wait for an answer (a full queue on a small machine is slow)

    def retrying(self, retries: int | None = None, on_retry=None) -> Retrying:
        """tenacity: retry TransientError with exponential backoff; reraise the last one."""
        return Retrying(stop=stop_after_attempt((self.retries if retries is None else retries) + 1),
                        wait=wait_exponential_jitter(multiplier=self.backoff, max=self.max_backoff,
                                                     jitter=self.backoff / 2),
                        retry=retry_if_exception_type(TransientError), reraise=True,
                        before_sleep=on_retry)


def classify_one(pool: Pool, endpoint: Endpoint, data: bytes, policy: RetryPolicy,
                 stats: "Stats") -> tuple[dict | None, str]:
    """(answer, "") on success, (None, message) for an input the server refuses (4xx).

    5xx, 429, timeouts and connection errors are retried (tenacity), on another server when there
    are several: TransientError when retries run out. FatalServerError when the server refuses the
    request itself (token, unknown model).
    """
    last_failed: list[Replica] = []

    def attempt() -> tuple[dict | None, str]:
        server = pool.acquire(avoid=last_failed[-1] if last_failed else None)
        try:
            answer = endpoint.send(server, data)
        except AuthError as e:
            pool.release(server, False)
            raise FatalServerError(f"{server.url} refused the token ({one_error(e)}): give the "
                                   f"server's key file with --key-file, or its key with --token") from None
        except ServerError as e:
            pool.release(server, False)
            if e.status in INPUT_ERRORS:
                stats.count("refused")
                return None, one_error(e)
            if e.status not in RETRY_STATUSES:
                raise FatalServerError(f"{server.url}: {endpoint.model}: {one_error(e)}") from None
            last_failed.append(server)
            raise TransientError(one_error(e)) from None
        except TorchServeError as e:  # no answer: keep away from this server for a while
            pool.release(server, True, policy.backoff * 2 ** min(len(last_failed), 4))
            last_failed.append(server)
            raise TransientError(one_line(str(e))) from None
        pool.release(server, False)
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
        if isinstance(answer, dict) and "label" in answer:
            return answer, ""
        return None, one_line(f"unexpected answer: {str(answer)[:200]}")

    try:
        return policy.retrying(on_retry=lambda _: stats.count("retries"))(attempt)
    except TransientError as e:
        raise TransientError(f"gave up after {len(last_failed)} attempts: {e}") from None


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Stats:
    written: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    unfinished: int = 0
    retries: int = 0
    refused: int = 0
    max_pending: int = 0  # inputs pulled from the source and not yet written: the memory bound
    stopped: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


PROBE_SIZE = 64


def probe_image() -> bytes:
    """A small valid PNG (a smooth blob) used to check servers, token and model before the run."""
    import numpy as np

    y, x = np.mgrid[:PROBE_SIZE, :PROBE_SIZE]
    r = np.hypot(x - PROBE_SIZE / 2, y - PROBE_SIZE / 2)
    img = np.clip(255 * np.exp(-(r / 12.0) ** 2), 0, 255).astype(np.uint8)
    return encode_png(np.stack([img] * 3, -1))


def probe(server: Replica, endpoint: Endpoint, data: bytes, policy: RetryPolicy) -> dict:
    """Send the probe image, riding out a short outage; BulkError if the server never answers."""
    def attempt():
        try:
            return endpoint.send(server, data)
        except ServerUnavailable as e:
            raise TransientError(one_line(str(e))) from None

    try:
        return policy.retrying(retries=2)(attempt)
    except TransientError as e:
        raise BulkError(f"no TorchServe answering at {server.url} ({e}): start it with `make serve` "
                        f"or check --servers") from None


def resolve_endpoint(pool: Pool, model: str, rule: str | None, policy: RetryPolicy) -> tuple[Endpoint, dict]:
    """Find whether `model` is a model or a workflow, check every server and its token, and read
    the class names from a probe answer. Raise BulkError with the reason otherwise."""
    candidates = [Endpoint(model), Endpoint(model, workflow=True, rule=rule)]
    data = probe_image()
    chosen, answer = None, None
    for server in pool.servers:
        problem = ""
        for ep in ([chosen] if chosen else candidates):
            try:
                got = probe(server, ep, data, policy)
            except AuthError as e:
                raise BulkError(f"{server.url} refused the token ({one_error(e)}): pass --key-file "
                                f"(TorchServe's key_file.json) or --token for this server") from None
            except ServerError as e:
                problem = one_error(e)
                if e.status == 404:
                    problem = f"no model or workflow named {model!r} ({problem})"
                    continue
                break
            except TorchServeError as e:
                problem = one_line(str(e))
                break
            if isinstance(got, dict) and "label" in got:
                chosen, answer, problem = ep, got, ""
                break
            problem = one_line(f"unexpected answer: {str(got)[:200]}")
        if problem:
            raise BulkError(f"{server.url} cannot classify with {model!r}: {problem}")
    if isinstance(answer.get("probabilities"), dict):
        class_names = list(answer["probabilities"])
    else:
        from galaxy_morph.specs import GALAXY10_CLASSES

        class_names = list(GALAXY10_CLASSES)
    return chosen, {"class_names": class_names, "probe": answer}


def classify(items: Iterable[Item], out: Path, pool: Pool, endpoint: Endpoint, class_names: list[str],
             concurrency: int = 8, policy: RetryPolicy | None = None, progress=None,
             stats: Stats | None = None, done: set | None = None, window: int | None = None) -> Stats:
    """Send every item, write one row per answer as it completes; return the Stats.

    `window` (default 2 x concurrency) bounds the inputs held at once: the source iterator is
    pulled only when a slot frees up.
    """
    policy = policy or RetryPolicy()
    stats = stats or Stats()
    window = window or 2 * concurrency
    header = header_for(class_names, endpoint.workflow)
    out = Path(out)
    if done is None:
        done, existing = read_done_ids(out, header)
    else:
        existing = header if out.exists() and out.stat().st_size else None
    writer = CatalogWriter(out, header, write_header=existing is None)
    stop = threading.Event()

    def write_row(item_id, answer, error):
        writer.write(row_for(item_id, answer, error, header, class_names))
        stats.count("written")
        stats.count("ok" if answer is not None else "errors")
        if progress is not None:
            progress.update(1)
            progress.set_postfix(errors=stats.errors, retries=stats.retries, refresh=False)

    def work(item: Item):
        if stop.is_set():
            raise TransientError("run stopping")
        try:
            data = item.load()
        except OSError as e:
            return None, one_line(f"cannot read input: {e}")
        return classify_one(pool, endpoint, data, policy, stats)

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="classify") as ex:
            try:
                run_window(ex, work, iter(items), done, window, stats, stop,
                           lambda item_id, answer, error: write_row(item_id, answer, error))
            except BaseException:  # Ctrl-C: queued inputs bail out, running ones finish unwritten
                stop.set()
                raise
    finally:
        writer.close()
    return stats


def run_window(ex, work, source, done: set, window: int, stats: Stats, stop: threading.Event, emit) -> None:
    """Keep at most `window` inputs submitted; emit each result in completion order."""
    pending = {}
    exhausted = False
    while True:
        while not exhausted and not stop.is_set() and len(pending) < window:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            if item.id in done:
                stats.count("skipped")
                continue
            done.add(item.id)  # never submitted twice, even if the source repeats an id
            pending[ex.submit(work, item)] = item.id
            stats.max_pending = max(stats.max_pending, len(pending))
        if not pending:
            return
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            item_id = pending.pop(fut)
            try:
                answer, error = fut.result()
            except (TransientError, FatalServerError) as e:
                done.discard(item_id)  # not written: a re-run will send it again
                stats.count("unfinished")
                if not stop.is_set():
                    stats.stopped = str(e)
                    stop.set()
                continue
            emit(item_id, answer, error)


def make_pool(servers: list[str], key_files=(), tokens=(), timeout: float = 120.0,
              management_urls=()) -> Pool:
    """Servers with their credentials: key files / tokens / management URLs (for token renewal)
    given once for all or once per server."""
    if not servers:
        raise BulkError("no server given")
    for name, values in (("--key-file", key_files), ("--token", tokens),
                         ("--management-url", management_urls)):
        if len(values) not in (0, 1, len(servers)):
            raise BulkError(f"give {name} once for all servers or once per server "
                            f"({len(servers)} servers, {len(values)} values)")
    built = []
    for i, url in enumerate(servers):
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        kf = key_files[i if len(key_files) > 1 else 0] if key_files else None
        tok = tokens[i if len(tokens) > 1 else 0] if tokens else None
        mgmt = management_urls[i if len(management_urls) > 1 else 0] if management_urls else None
        if kf and not Path(kf).is_file() and tok is None:
            raise BulkError(f"key file not found: {kf} (TorchServe writes key_file.json in the folder "
                            f"it was started from)")
        built.append(Replica(url, key_file=kf, token=tok, timeout=timeout, management_url=mgmt))
    return Pool(built)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m galaxy_service.bulk",
                                description="Classify a folder of images or an HDF5 file into a CSV "
                                            "catalogue with running TorchServe server(s); re-run to resume.")
    p.add_argument("--input", required=True, help="folder of JPEG/PNG/FITS images, a Galaxy10-schema HDF5 "
                   "file, or a table of sky positions (.csv, .fits, .vot, .ecsv)")
    p.add_argument("--out", required=True, help="CSV catalogue to write (appended to when resuming), or "
                   ".fits / .vot / .ecsv: written from OUT.csv when the run completes")
    p.add_argument("--model", default="galaxy-ensemble",
                   help="model or workflow name (galaxy-b0, galaxy-b2, galaxy-ensemble)")
    p.add_argument("--servers", default=None,
                   help="comma-separated inference URLs (default http://$TS_HOST:$TS_INFERENCE_PORT)")
    p.add_argument("--key-file", action="append", default=[],
                   help="TorchServe key_file.json; once, or once per server (default ./key_file.json)")
    p.add_argument("--management-url", action="append", default=[],
                   help="management URL for token renewal; once, or once per server (default: "
                        "$TS_MANAGEMENT_PORT for the local server, none for --servers)")
    p.add_argument("--token", action="append", default=[],
                   help="fixed inference key; once, or once per server (or env GALAXY_TS_TOKENS=k1,k2)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--rule", default=None, help="ensemble rule for the workflow: seed, mean, weighted")
    p.add_argument("--retries", type=int, default=6, help="retries per input on 5xx/connection errors")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (doubles)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cutout_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.concurrency < 1:
            raise BulkError("--concurrency must be at least 1")
        local = server_settings()
        local_inference, local_management = local["inference_url"], local["management_url"]
        servers = [s.strip() for s in (args.servers or local_inference).split(",") if s.strip()]
        management_urls = args.management_url or ([] if args.servers else [local_management])
        tokens = args.token or [t for t in os.environ.get("GALAXY_TS_TOKENS", "").split(",") if t]
        key_files = args.key_file
        if not key_files and not tokens and locate_key_file().is_file():
            key_files = [str(locate_key_file())]
        out = table_out = Path(args.out)
        if is_table_output(table_out):  # FITS / VOTable / ECSV: CSV row by row, converted at the end
            out = working_csv(table_out)
        if out.is_dir():
            raise BulkError(f"--out {out} is a folder: give a CSV file path")
        if out.parent and not out.parent.exists():
            raise BulkError(f"folder for --out does not exist: {out.parent}")
        # Validate the input before contacting any server.
        try:
            fetcher = fetcher_from_args(args)
        except ValueError as e:
            raise BulkError(str(e)) from None
        columns = {"ra_col": args.ra_col, "dec_col": args.dec_col, "id_col": args.id_col}
        open_input(args.input, fetcher=fetcher, columns=columns)
        pool = make_pool(servers, key_files, tokens, args.timeout, management_urls)
        policy = RetryPolicy(retries=args.retries, backoff=args.backoff, timeout=args.timeout)
        endpoint, info = resolve_endpoint(pool, args.model, args.rule, policy)
        class_names = info["class_names"]
        header = header_for(class_names, endpoint.workflow)
        done, _ = read_done_ids(out, header)
        items, total = open_input(args.input, skip=done, fetcher=fetcher, columns=columns)
    except BulkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from tqdm import tqdm

    already = len(done)
    bar = tqdm(total=max(0, total - already), unit="img", desc=f"classify {args.model}",
               disable=args.no_progress, file=sys.stderr)
    stats = Stats(skipped=0)
    try:
        classify(items, out, pool, endpoint, class_names, concurrency=args.concurrency, policy=policy,
                 progress=bar, stats=stats, done=done)
    except BulkError as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: {stats.written} rows written to {out}; re-run the same command to resume",
              file=sys.stderr)
        return 3
    bar.close()
    summary = (f"{out}: {stats.written} rows written ({stats.ok} classified, {stats.errors} refused inputs), "
               f"{already} already there, {stats.retries} retries, servers: "
               + ", ".join(f"{s.url}={s.requests}" for s in pool.servers))
    print(summary, file=sys.stderr)
    if stats.stopped:
        print(f"stopped early: {stats.stopped}\n{stats.unfinished} inputs not classified: "
              f"re-run the same command to resume", file=sys.stderr)
        return 3
    if table_out != out:
        try:
            convert(out, table_out, positions_for(args.input, **columns))
        except (ValueError, OSError) as e:
            print(f"error: writing {table_out}: {e}", file=sys.stderr)
            return 1
        print(f"{table_out}: {output_format(table_out)} table written from {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
