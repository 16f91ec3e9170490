"""TorchServe replicas shared by a bulk run: least in-flight first, credentials per server, and
retries with backoff (tenacity) for what is worth retrying.

    pool = make_pool(["http://127.0.0.1:8080"], key_files=["key_file.json"])
    answer, error = classify_one(pool, Endpoint("galaxy-b0"), jpeg_bytes, RetryPolicy(), Stats())

An input the server refuses (4xx) is an answer with its error; 429, 5xx, timeouts and connection
errors are retried, on another server when there are several; a refused token or an unknown model
stops the run (FatalServerError).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from survey.cutouts import RETRY_STATUSES
from survey.rows import one_line
from torchserve_ops.client import AuthError, ServerError, TorchServeClient, TorchServeError

# 4xx statuses that describe the input itself: recorded in the row, never retried.
INPUT_ERRORS = {400, 406, 413, 415, 422}


class BulkError(RuntimeError):
    """A problem with the run as a whole (arguments, servers, output file); the message says what."""


class TransientError(RuntimeError):
    """Worth retrying: a 5xx, 429, timeout or connection error."""


class FatalServerError(BulkError):
    """The server refuses every request (wrong token, unknown model): stop the run."""


# ---------------------------------------------------------------------------------------------
# Servers


class Replica:
    """One TorchServe inference endpoint with its own credentials and in-flight count.

    Requests go through torchserve_ops.client (one client per thread: each has its own HTTP
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
                 stats: Stats) -> tuple[dict | None, str]:
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
