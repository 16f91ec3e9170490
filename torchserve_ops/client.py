"""HTTP client for the galaxy TorchServe: inference, workflow, explanations, management, metrics.

Plain `requests`, no Streamlit and no `ts`: the dashboard, the bulk classifier, the benchmarks
and the tests all talk to the server through this one module.

    from torchserve_ops.client import TorchServeClient
    ts = TorchServeClient.from_env()          # TS_HOST, TS_*_PORT, TS_KEY_FILE
    ts.ping()                                 # {"status": "Healthy"}
    ts.predict("galaxy-b0", open("galaxy.jpg", "rb").read())
    ts.predict_workflow("galaxy-ensemble", data, rule="mean")
    ts.metrics()                              # [Sample(name, labels, value), ...]

    python -m torchserve_ops.client ping|models|metrics|predict MODEL FILE

Token authorisation: the keys come from TorchServe's `key_file.json` (repo root, or TS_KEY_FILE).
Keys change at every server start and expire; when the server refuses a key the client re-reads
the file, asks the token API for a fresh key if the file still holds the refused one, and retries
once. Every failure is one of the exceptions below, with a message fit to show a user. One class
serves TorchServe's three APIs, because the token handling above wraps every call.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from handlers.payload import EMBEDDING_HEADER, RULE_HEADER

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY_FILE_NAME = "key_file.json"
DEFAULT_KEY_FILE = REPO_ROOT / KEY_FILE_NAME  # where `make serve` starts TorchServe
DEFAULT_HOST = "127.0.0.1"
# TorchServe's listeners: the variable that moves each one and its port by default. The launcher
# (torchserve_ops.server) binds them; the client reads the first three.
PORT_ENV = {"inference": ("TS_INFERENCE_PORT", 8080), "management": ("TS_MANAGEMENT_PORT", 8081),
            "metrics": ("TS_METRICS_PORT", 8082),
            "grpc_inference": ("TS_GRPC_INFERENCE_PORT", 7070),
            "grpc_management": ("TS_GRPC_MANAGEMENT_PORT", 7071)}
DEFAULT_URLS = {kind: f"http://{DEFAULT_HOST}:{port}" for kind, (_, port) in PORT_ENV.items()}

# (connect, read) seconds. Registering a model waits for its workers to start.
TIMEOUT = (3.0, 30.0)
SLOW_TIMEOUT = (3.0, 300.0)


class TorchServeError(Exception):
    """Base class: anything that went wrong talking to TorchServe."""


class ServerUnavailable(TorchServeError):
    """No answer: connection refused, DNS failure, or a timeout."""


class ServerTimeout(ServerUnavailable):
    """The server accepted the connection but did not answer in time."""


class ServerError(TorchServeError):
    """The server answered with an HTTP error; `message` is the server's own explanation."""

    def __init__(self, status: int, message: str, type: str = "", url: str = "", body: Any = None):
        self.status, self.message, self.type, self.url, self.body = status, message, type, url, body
        kind = f" {type}" if type else ""
        super().__init__(f"HTTP {status}{kind}: {message}")

    @property
    def is_client_error(self) -> bool:
        return 400 <= self.status < 500


class AuthError(ServerError):
    """The server refused the token, even after re-reading the key file and asking for a new key."""


class NotReady(TorchServeError):
    """wait_for(): the server answers, but not yet with what is waited for."""


class ServerGone(TorchServeError):
    """wait_for(): the server process exited while we waited for it."""


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             alive: Callable[[], bool] | None = None, interval: float = 0.5) -> Any:
    """Call `check` every `interval` s until it returns without a TorchServeError (or
    requests error); return its result. `alive` (e.g. a process poll) turns an exited server into
    ServerGone at once. After `timeout` s the last error is raised as NotReady naming `what`."""
    def attempt():
        if alive is not None and not alive():
            raise ServerGone(f"{what} exited while starting")
        return check()

    retrying = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval), reraise=True,
                        retry=retry_if_exception(lambda e: isinstance(e, (TorchServeError,
                                                                          requests.RequestException))
                                                 and not isinstance(e, ServerGone)))
    try:
        return retrying(attempt)
    except ServerGone:
        raise
    except (TorchServeError, requests.RequestException) as e:
        raise NotReady(f"{what} not ready after {timeout:.0f} s: {e}") from None


# ----------------------------------------------------------------------------- Prometheus

def parse_prometheus(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (prometheus_client's parser).

    A malformed exposition raises ValueError."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metric_total(samples: Iterable[Sample], name: str, **match) -> float:
    """Sum of the samples called `name` whose labels include `match`; 0.0 when there are none."""
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in match.items()))



# ----------------------------------------------------------------------------- keys

def locate_key_file(env: dict | None = None) -> Path:
    """The key file to use: $TS_KEY_FILE, else ./key_file.json when there is one, else the
    repository root's (where `make serve` starts TorchServe)."""
    env = os.environ if env is None else env
    if env.get("TS_KEY_FILE"):
        return Path(env["TS_KEY_FILE"])
    here = Path(KEY_FILE_NAME)
    return here if here.is_file() else DEFAULT_KEY_FILE


def server_settings(env: dict | None = None) -> dict:
    """The configured server: {"host", "inference_url", "management_url", "metrics_url",
    "key_file"} from TS_HOST, TS_INFERENCE_PORT, TS_MANAGEMENT_PORT, TS_METRICS_PORT, TS_KEY_FILE
    (defaults 127.0.0.1, 8080, 8081, 8082, locate_key_file())."""
    env = os.environ if env is None else env
    host = env.get("TS_HOST") or DEFAULT_HOST
    urls = {f"{kind}_url": f"http://{host}:{env.get(PORT_ENV[kind][0]) or PORT_ENV[kind][1]}"
            for kind in ("inference", "management", "metrics")}
    return {"host": host, **urls, "key_file": locate_key_file(env)}


def read_key_file(path: str | os.PathLike) -> dict:
    """{"inference": key, "management": key, "API": key} from TorchServe's key_file.json.

    A missing file gives {} (a server started with token auth off needs no keys)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TorchServeError(f"cannot read the key file {path}: {e}") from None
    keys = {}
    for kind in ("inference", "management", "API"):
        entry = data.get(kind)
        if isinstance(entry, dict) and entry.get("key"):
            keys[kind] = entry["key"]
        elif isinstance(entry, str):
            keys[kind] = entry
    return keys


def _image_headers(embedding: bool = False) -> dict:
    headers = {"Content-Type": "application/octet-stream"}
    if embedding:
        headers[EMBEDDING_HEADER] = "true"
    return headers


def _is_auth_failure(status: int, body: Any) -> bool:
    if status in (401, 403):
        return True
    # TorchServe 0.12 answers a bad or expired token with 400 InvalidKeyException.
    return isinstance(body, dict) and body.get("type") == "InvalidKeyException"


def _error_body(resp: requests.Response) -> tuple[Any, str, str]:
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text, "", text[:500] or resp.reason or "no message"
    if isinstance(body, dict):
        msg = body.get("message") or body.get("error") or json.dumps(body)[:500]
        return body, str(body.get("type", "")), str(msg)
    return body, "", json.dumps(body)[:500]


# ----------------------------------------------------------------------------- client

class TorchServeClient:
    """One TorchServe instance: three base URLs and its key file."""

    def __init__(self, inference_url: str = DEFAULT_URLS["inference"],
                 management_url: str = DEFAULT_URLS["management"],
                 metrics_url: str | None = DEFAULT_URLS["metrics"],
                 key_file: str | os.PathLike | None = DEFAULT_KEY_FILE,
                 keys: dict | None = None, timeout=TIMEOUT):
        """`management_url` / `metrics_url` None: a remote inference endpoint only (no token
        renewal, no management or metrics calls)."""
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/") if management_url else None
        self.metrics_url = metrics_url.rstrip("/") if metrics_url else None
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self._fixed_keys = dict(keys or {})
        self._keys: dict = {}
        self._lock = threading.Lock()
        self._renew_lock = threading.Lock()
        self._session = requests.Session()
        self.reload_keys()

    @classmethod
    def from_env(cls, env: dict | None = None, **kw) -> "TorchServeClient":
        """Build from TS_HOST, TS_INFERENCE_PORT, TS_MANAGEMENT_PORT, TS_METRICS_PORT, TS_KEY_FILE."""
        settings = server_settings(env)
        settings.pop("host")
        return cls(**{**settings, **kw})

    def __repr__(self) -> str:
        return (f"TorchServeClient({self.inference_url!r}, {self.management_url!r}, "
                f"{self.metrics_url!r}, key_file={str(self.key_file)!r})")

    def close(self) -> None:
        self._session.close()

    # -- keys
    def reload_keys(self) -> dict:
        keys = read_key_file(self.key_file) if self.key_file else {}
        keys.update(self._fixed_keys)
        with self._lock:
            self._keys = keys
        return keys

    def _key(self, kind: str) -> str | None:
        with self._lock:
            return self._keys.get(kind)

    def renew_key(self, kind: str = "inference") -> str | None:
        """Ask the token API (with the API key) for a new `inference` or `management` key.

        TorchServe writes the new key into its key file, so this only helps a client that can
        read that file; returns the new key, or None when there is no API key."""
        api_key = self._key("API")
        if not api_key or not self.management_url:
            return None
        self._raw("GET", f"{self.management_url}/token", params={"type": kind},
                  headers={"Authorization": f"Bearer {api_key}"}, timeout=self.timeout)
        return self.reload_keys().get(kind)

    # -- transport
    def _raw(self, method: str, url: str, **kw) -> requests.Response:
        try:
            resp = self._session.request(method, url, **kw)
        except requests.Timeout:
            raise ServerTimeout(f"TorchServe did not answer in time: {method} {url}") from None
        except requests.ConnectionError:
            raise ServerUnavailable(f"cannot connect to TorchServe at {url.split('/', 3)[:3][-1]}"
                                    f" ({method} {url}): is it running?") from None
        except requests.RequestException as e:
            raise ServerUnavailable(f"request to {url} failed: {e}") from None
        if resp.status_code >= 400:
            body, typ, msg = _error_body(resp)
            cls = AuthError if _is_auth_failure(resp.status_code, body) else ServerError
            raise cls(resp.status_code, msg, typ, url, body)
        return resp

    def _request(self, method: str, api: str, path: str, *, timeout=None, **kw) -> requests.Response:
        """A call to the inference or management API with its key; one retry with a fresh key."""
        base = self.inference_url if api == "inference" else self.management_url
        url = base + path
        timeout = timeout or self.timeout
        headers = dict(kw.pop("headers", None) or {})

        def send(key):
            h = dict(headers)
            if key:
                h["Authorization"] = f"Bearer {key}"
            return self._raw(method, url, headers=h, timeout=timeout, **kw)

        used = self._key(api)
        try:
            return send(used)
        except AuthError:
            # One renewal at a time: a thread that waited here finds the new key in the file.
            with self._renew_lock:
                fresh = self.reload_keys().get(api)
                if fresh is None or fresh == used:
                    # Same key still in the file: it has probably expired, ask for a new one.
                    try:
                        fresh = self.renew_key(api)
                    except TorchServeError:
                        fresh = None
            if fresh is None or fresh == used:
                raise AuthError(401, "TorchServe refused the token, and the key file "
                                f"({self.key_file}) has no newer key: was the server restarted "
                                "with another working directory?", "InvalidKeyException", url)
            return send(fresh)

    def _json(self, method: str, api: str, path: str, **kw) -> Any:
        resp = self._request(method, api, path, **kw)
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def wait_until_ready(self, models: Iterable[str] = (), timeout: float = 300.0,
                         alive: Callable[[], bool] | None = None) -> dict:
        """The one readiness wait: until /ping answers (with the keys of a key file that may
        appear only now) and every worker of each model is READY. Returns {model: seconds}."""
        models, t0, ready = list(models), time.monotonic(), {}

        def check():
            self.reload_keys()
            self.ping()
            for name in models:
                versions = [] if name in ready else self.describe(name, customized=False)
                if versions and all(v.get("workers") and all(w.get("status") == "READY"
                                                             for w in v["workers"]) for v in versions):
                    ready[name] = round(time.monotonic() - t0, 1)
            if len(ready) < len(models):
                raise NotReady(f"READY: {', '.join(ready) or 'none'} of {', '.join(models)}")

        wait_for(check, timeout, f"TorchServe at {self.inference_url}", alive)
        return ready

    # -- inference API
    def ping(self) -> dict:
        """{"status": "Healthy"} or {"status": "Partial Healthy"/"Unhealthy"}."""
        return self._json("GET", "inference", "/ping")

    def predict(self, model: str, image: bytes, version: str | None = None, embedding: bool = False) -> dict:
        """One image (JPEG/PNG bytes) -> {"model","version","label","class_name","confidence",
        "probabilities", ...}; `embedding`: with the model's "embedding" too."""
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        return self._json("POST", "inference", path, data=image, headers=_image_headers(embedding))

    def predict_workflow(self, name: str, image: bytes, rule: str | None = None, embedding: bool = False) -> dict:
        """The ensemble workflow: adds "source", "rule", "b0", "b2" to the per-image answer.

        The rule (seed, mean, weighted) travels in the RULE_HEADER (X-Ensemble-Rule). TorchServe answers
        a workflow with HTTP 200 even when a node failed; an {"error", "code"} body is raised here
        as a ServerError like any other refusal. `embedding`: each member's answer carries its
        "embedding" (the header reaches every node)."""
        headers = _image_headers(embedding)
        if rule:
            headers[RULE_HEADER] = rule
        url_path = f"/wfpredict/{name}"
        out = self._json("POST", "inference", url_path, data=image, headers=headers)
        if isinstance(out, dict) and "error" in out and "label" not in out:
            raise ServerError(int(out.get("code") or 500), str(out["error"]), "WorkflowError",
                              self.inference_url + url_path, out)
        return out

    def explain(self, model: str, image: bytes, target: int | str | None = None,
                version: str | None = None) -> dict:
        """Grad-CAM for the predicted class (or `target`, index or name) from the explanations
        API: {"target", "target_name", "predicted", "heatmap" (2-D, 0..1, over the model's
        centre crop), "shape", ...}."""
        path = f"/explanations/{model}" + (f"/{version}" if version else "")
        if target is None:
            return self._json("POST", "inference", path, data=image,
                              headers={"Content-Type": "application/octet-stream"})
        # multipart: the target travels as a form field beside the image
        return self._json("POST", "inference", path, files={"data": ("image", image)},
                          data={"target": str(target)})

    # -- management API
    def list_models(self) -> list[dict]:
        """[{"modelName", "modelUrl"}, ...], following pagination."""
        models, token = [], None
        while True:
            params = {"limit": 100}
            if token:
                params["next_page_token"] = token
            page = self._json("GET", "management", "/models", params=params)
            models += page.get("models", [])
            token = page.get("nextPageToken")
            if not token:
                return models

    def describe(self, model: str, version: str | None = None, customized: bool = True) -> list[dict]:
        """Describe a model: the default version, a given version, or version="all".

        With `customized`, the handler's model card is parsed from "customizedMetadata"."""
        path = f"/models/{model}" + (f"/{version}" if version else "")
        params = {"customized": "true"} if customized else None
        out = self._json("GET", "management", path, params=params)
        out = out if isinstance(out, list) else [out]
        for entry in out:
            meta = entry.get("customizedMetadata") if isinstance(entry, dict) else None
            if isinstance(meta, str):
                try:
                    entry["customizedMetadata"] = json.loads(meta)
                except ValueError:
                    pass
        return out

    def versions(self, model: str) -> list[dict]:
        return self.describe(model, "all", customized=False)

    def default_version(self, model: str) -> str | None:
        d = self.describe(model, customized=False)
        return d[0].get("modelVersion") if d else None

    def register(self, url: str, initial_workers: int = 1, model_name: str | None = None,
                 synchronous: bool = True, batch_size: int | None = None,
                 max_batch_delay: int | None = None, response_timeout: int | None = None,
                 timeout=SLOW_TIMEOUT) -> dict:
        """Register an archive: a file name in the server's model store (or an allowed URL)."""
        params = {"url": url, "initial_workers": initial_workers,
                  "synchronous": str(synchronous).lower()}
        for k, v in (("model_name", model_name), ("batch_size", batch_size),
                     ("max_batch_delay", max_batch_delay), ("response_timeout", response_timeout)):
            if v is not None:
                params[k] = v
        return self._json("POST", "management", "/models", params=params, timeout=timeout)

    def set_default(self, model: str, version: str) -> dict:
        return self._json("PUT", "management", f"/models/{model}/{version}/set-default")

    def scale_workers(self, model: str, min_worker: int, max_worker: int | None = None,
                      version: str | None = None, synchronous: bool = True,
                      timeout=SLOW_TIMEOUT) -> dict:
        params = {"min_worker": min_worker, "max_worker": max(min_worker, max_worker or min_worker),
                  "synchronous": str(synchronous).lower()}
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return self._json("PUT", "management", path, params=params, timeout=timeout)

    def unregister(self, model: str, version: str | None = None, timeout=SLOW_TIMEOUT) -> dict:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return self._json("DELETE", "management", path, timeout=timeout)

    def list_workflows(self) -> list[dict]:
        page = self._json("GET", "management", "/workflows", params={"limit": 100})
        return page.get("workflows", []) if isinstance(page, dict) else []

    def describe_workflow(self, name: str) -> list[dict]:
        out = self._json("GET", "management", f"/workflows/{name}")
        return out if isinstance(out, list) else [out]

    def register_workflow(self, url: str, workflow_name: str | None = None,
                          timeout=SLOW_TIMEOUT) -> dict:
        params = {"url": url}
        if workflow_name:
            params["workflow_name"] = workflow_name
        return self._json("POST", "management", "/workflows", params=params, timeout=timeout)

    def unregister_workflow(self, name: str, timeout=SLOW_TIMEOUT) -> dict:
        return self._json("DELETE", "management", f"/workflows/{name}", timeout=timeout)

    # -- metrics API (no token needed)
    def metrics_text(self) -> str:
        return self._raw("GET", f"{self.metrics_url}/metrics", timeout=self.timeout).text

    def metrics(self) -> list[Sample]:
        return parse_prometheus(self.metrics_text())


def _main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(description="Talk to the galaxy TorchServe (TS_* env vars).")
    p.add_argument("command", choices=["ping", "models", "metrics", "predict", "describe"])
    p.add_argument("args", nargs="*")
    a = p.parse_args(argv)
    ts = TorchServeClient.from_env()
    try:
        if a.command == "ping":
            out = ts.ping()
        elif a.command == "models":
            out = ts.list_models()
        elif a.command == "describe":
            out = ts.describe(*a.args[:2])
        elif a.command == "metrics":
            out = [[s.name, s.labels, s.value] for s in ts.metrics()]
        else:
            model, path = a.args
            data = Path(path).read_bytes()
            out = (ts.predict_workflow(model, data) if model.endswith("ensemble")
                   else ts.predict(model, data))
    except TorchServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
