"""Start, watch and stop a TorchServe instance (used by scripts/serve.sh, scripts/stop.sh, tests).

    python -m torchserve_ops.server start [--store model_store] [--workdir .] [--no-workflow]
    python -m torchserve_ops.server status [--workdir .]
    python -m torchserve_ops.server stop [--workdir .]

`start` renders config.properties into WORKDIR/logs/config.properties (ports from
TS_INFERENCE_PORT, TS_MANAGEMENT_PORT, TS_METRICS_PORT, TS_GRPC_INFERENCE_PORT,
TS_GRPC_MANAGEMENT_PORT; the absolute model store in allowed_urls), starts the Java frontend in
the background with WORKDIR as its working directory (so key_file.json lands there), waits until
/ping answers and every worker is READY, registers the galaxy-ensemble workflow, and writes
WORKDIR/logs/torchserve.pid (JSON: pid, ports, paths). `stop` ends the whole process group.
The models loaded at start are the workflow's members (galaxy-M.mar for each model in the .war's
ensemble.json), galaxy-b0.mar and galaxy-b2.mar without a workflow.

The `torchserve` CLI is not used: it keeps one global pid file in /tmp, so a second instance
(tests, benchmarks, another user) would refuse to start or stop the wrong one. Each instance also
gets its own java.io.tmpdir, where TorchServe puts its worker sockets (/tmp/.ts.sock.9000 ...).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from galaxy_morph.answers import WORKFLOW_NAME, WORKFLOW_SETTINGS, served_name
from galaxy_morph.specs import PAIR
from torchserve_ops import frontend
from torchserve_ops.client import (DEFAULT_HOST, KEY_FILE_NAME, PORT_ENV, TorchServeClient, TorchServeError,
                                   read_key_file)

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "config.properties"
LOG_CONFIG = Path(__file__).resolve().parent / "log4j2.xml"  # the frontend's logging: INFO, each line once
HOST = DEFAULT_HOST
# The default pair's archives; a workflow names its own members (PAIR without an ensemble.json list).
ARCHIVES = tuple(f"{served_name(m)}.mar" for m in PAIR)
WORKFLOW = f"{WORKFLOW_NAME}.war"
PID_FILE = "torchserve.pid"


class LaunchError(RuntimeError):
    """TorchServe could not be started (ports busy, archives missing, not READY in time)."""


@dataclass
class Server:
    """A TorchServe started by this module: its pid, paths, ports and key file."""

    pid: int
    workdir: Path
    model_store: Path
    log_dir: Path
    ports: dict = field(default_factory=dict)

    @property
    def inference_url(self) -> str:
        return f"http://{HOST}:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://{HOST}:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.ports['metrics']}"

    @property
    def key_file(self) -> Path:
        return self.workdir / KEY_FILE_NAME

    @property
    def pid_file(self) -> Path:
        return self.log_dir / PID_FILE

    def keys(self) -> dict:
        """{"inference": key, "management": key, "API": key}, read now (keys change per start)."""
        return read_key_file(self.key_file)

    def inference_key(self) -> str:
        return self.keys()["inference"]

    def management_key(self) -> str:
        return self.keys()["management"]

    def api_key(self) -> str:
        return self.keys()["API"]

    def auth(self, kind: str = "inference") -> dict:
        """The Authorization header for plain HTTP calls (tests, curl-like use)."""
        return {"Authorization": f"Bearer {self.keys()[kind]}"}

    def client(self, **kw) -> TorchServeClient:
        return TorchServeClient(self.inference_url, self.management_url, self.metrics_url,
                                key_file=self.key_file, **kw)

    def alive(self) -> bool:
        return _alive(self.pid)

    def to_json(self) -> str:
        d = asdict(self)
        d.update(workdir=str(self.workdir), model_store=str(self.model_store), log_dir=str(self.log_dir))
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "Server":
        d = json.loads(text)
        return cls(pid=d["pid"], workdir=Path(d["workdir"]), model_store=Path(d["model_store"]),
                   log_dir=Path(d["log_dir"]), ports=d["ports"])


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports() -> dict:
    """One free port for each of TorchServe's listeners: {"inference": p, "management": p, ...}."""
    ports = set()
    while len(ports) < len(PORT_ENV):
        ports.add(free_port())
    return dict(zip(PORT_ENV, sorted(ports)))


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def env_ports() -> dict:
    return {k: int(os.environ.get(var) or default) for k, (var, default) in PORT_ENV.items()}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _regex_path(path: Path) -> str:
    """An absolute path as a regex without backslashes (Java properties files eat them)."""
    return "".join(f"[{c}]" if c in ".+*?()|{}$^" else c for c in str(path))


def render_config(out: Path, ports: dict, model_store: Path, models=ARCHIVES,
                  template: Path = TEMPLATE) -> Path:
    """The template with this run's ports, model store and start-up models."""
    store = model_store.resolve()
    overrides = {
        "inference_address": f"http://{HOST}:{ports['inference']}",
        "management_address": f"http://{HOST}:{ports['management']}",
        "metrics_address": f"http://{HOST}:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": str(store), "workflow_store": str(store),
        "allowed_urls": f"file://{_regex_path(store)}/[^/]+[.](mar|war)",
        "load_models": ",".join(models),
    }
    lines, seen = [], set()
    for line in template.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and "=" in line and key in overrides:
            line = f"{key}={overrides[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen and v]
    if not models:
        lines = [l for l in lines if not l.startswith("load_models=")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def worker_python(folder: Path) -> Path:
    """The Python the frontend starts its workers with: this one, through torchserve_ops.worker
    (torch imported on first use, so the workflow's function nodes never load it)."""
    path = Path(folder) / "worker-python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torchserve_ops.worker "$@"\n')
    path.chmod(0o755)
    return path


def java_command(config: Path, model_store: Path, tmp_dir: Path, log_dir: Path) -> list[str]:
    """What `torchserve --start --ncs` runs, with this instance's temp and log folders."""
    import ts

    ts_home = Path(ts.__file__).resolve().parent.parent
    java = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if os.environ.get("JAVA_HOME") else "java"
    vmargs = []
    for line in config.read_text().splitlines():
        if line.startswith("vmargs="):
            vmargs = line.split("=", 1)[1].split()
    return [java, f"-Dmodel_server_home={ts_home}", f"-Djava.io.tmpdir={tmp_dir}",
            f"-Dlog_location={log_dir}", f"-Dmetrics_location={log_dir}",
            f"-Dlog4j.configurationFile={LOG_CONFIG}", *vmargs,
            "-cp", frontend.class_path(), "org.pytorch.serve.ModelServer",
            "--python", str(worker_python(tmp_dir)), "-f", str(config), "-s", str(model_store.resolve()),
            "-w", str(model_store.resolve()), "-ncs"]


def read_pid_file(workdir: Path, log_dir: Path | None = None) -> Server | None:
    path = (log_dir or Path(workdir) / "logs") / PID_FILE
    if not path.is_file():
        return None
    try:
        return Server.from_json(path.read_text())
    except (ValueError, KeyError):
        return None


def status(workdir=REPO, log_dir=None) -> Server | None:
    """The server recorded in the pid file, if its process is still alive."""
    server = read_pid_file(Path(workdir), log_dir)
    return server if server is not None and server.alive() else None


def read_workflow_settings(war: Path) -> dict:
    """ensemble.json from a .war ({} when the file or the entry is missing or unreadable)."""
    try:
        with zipfile.ZipFile(war) as z:
            return json.loads(z.read(WORKFLOW_SETTINGS))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError):
        return {}


def workflow_members(war: Path) -> list[str]:
    """The model nodes of a workflow archive, from its ensemble.json ("b0", "b2", ...)."""
    return list(read_workflow_settings(war).get("models") or PAIR)


def workflow_model_names(war_name: str = WORKFLOW, members=PAIR) -> list[str]:
    """The names TorchServe gives the workflow's nodes: galaxy-ensemble__pre, __b0 ..."""
    stem = war_name.rsplit(".", 1)[0]
    return [f"{stem}__{n}" for n in ("pre", *members, "ensemble")]


def start(model_store=REPO / "model_store", workdir=REPO, ports: dict | None = None,
          models=None, workflow: str | None = WORKFLOW, log_dir=None,
          timeout: float = 300.0, template: Path = TEMPLATE, quiet: bool = False) -> Server:
    """Start TorchServe in the background and return once everything answers. `models`: the
    .mar files to load at start (default: the workflow's members, else ARCHIVES)."""
    workdir, model_store = Path(workdir).resolve(), Path(model_store).resolve()
    members = workflow_members(model_store / workflow) if workflow else list(PAIR)
    if models is None:
        models = tuple(f"{served_name(m)}.mar" for m in members) if workflow else ARCHIVES
    log_dir = Path(log_dir or workdir / "logs").resolve()
    running = status(workdir, log_dir)
    if running is not None:
        raise LaunchError(f"already running (pid {running.pid}, {running.inference_url})")
    ports = {**env_ports(), **(ports or {})}
    busy = [f"{k} {p}" for k, p in ports.items() if port_in_use(p)]
    if busy:
        raise LaunchError(f"port(s) in use on {HOST}: {', '.join(busy)}")
    missing = [m for m in list(models) + ([workflow] if workflow else []) if not (model_store / m).is_file()]
    if missing:
        raise LaunchError(f"missing in {model_store}: {', '.join(missing)} (run make archive)")
    tmp_dir = log_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config = render_config(log_dir / "config.properties", ports, model_store, models, template)
    (workdir / KEY_FILE_NAME).unlink(missing_ok=True)  # a stale one from a killed run holds old keys
    # Passive OpenMP waiting: with spinning threads (torch's default) workers that share a few
    # cores with the frontend and each other ran 3-20x slower (make bench --tune).
    env = {**os.environ, "TMPDIR": str(tmp_dir), "TEMP": str(tmp_dir),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    t0 = time.time()
    with open(log_dir / "torchserve.out", "ab") as out:
        proc = subprocess.Popen(java_command(config, model_store, tmp_dir, log_dir), cwd=workdir,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    server = Server(pid=proc.pid, workdir=workdir, model_store=model_store, log_dir=log_dir, ports=ports)
    server.pid_file.write_text(server.to_json())
    ts = server.client()
    frontend_up = lambda: proc.poll() is None  # noqa: E731
    try:
        times = ts.wait_until_ready([m.rsplit(".", 1)[0] for m in models], timeout, frontend_up)
        if not quiet:
            print(f"models READY after {', '.join(f'{n} {s} s' for n, s in times.items())}")
        if workflow:
            t1 = time.time()
            ts.register_workflow(workflow, timeout=(3.0, timeout))
            ts.wait_until_ready(workflow_model_names(workflow, members), timeout, frontend_up)
            if not quiet:
                print(f"workflow {workflow} registered and READY in {time.time() - t1:.1f} s")
    except TorchServeError as e:
        stop(workdir, log_dir)
        raise LaunchError(f"{e}; see {log_dir}") from None
    except BaseException:
        stop(workdir, log_dir)
        raise
    finally:
        ts.close()
    if not quiet:
        print(f"TorchServe up in {time.time() - t0:.1f} s (pid {proc.pid})")
    return server


def stop(workdir=REPO, log_dir=None, timeout: float = 30.0) -> bool:
    """Stop the instance recorded in the pid file (its whole process group). True if one ran."""
    workdir = Path(workdir).resolve()
    server = read_pid_file(workdir, log_dir)
    if server is None:
        return False
    was_alive = server.alive()
    try:
        front = psutil.Process(server.pid)
        procs = [front, *front.children(recursive=True)]
    except psutil.Error:
        procs = []
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, sig)  # the whole group: workers whose frontend already died too
        _, procs = psutil.wait_procs(procs, timeout=wait_s)  # reaps our own children
        if not procs:
            break
    server.pid_file.unlink(missing_ok=True)
    server.key_file.unlink(missing_ok=True)
    return was_alive


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("start", "stop", "status"))
    ap.add_argument("--store", default=str(REPO / "model_store"), help="model store folder")
    ap.add_argument("--workdir", default=str(REPO), help="working directory (key_file.json lands here)")
    ap.add_argument("--log-dir", default=None, help="default: WORKDIR/logs")
    ap.add_argument("--no-workflow", action="store_true", help="do not register galaxy-ensemble")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    if args.command == "start":
        try:
            s = start(args.store, args.workdir, workflow=None if args.no_workflow else WORKFLOW,
                      log_dir=args.log_dir, timeout=args.timeout)
        except LaunchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"inference  {s.inference_url}\nmanagement {s.management_url}\n"
              f"metrics    {s.metrics_url}/metrics\nkeys       {s.key_file}\nlogs       {s.log_dir}")
        return 0
    if args.command == "stop":
        print("stopped" if stop(args.workdir, args.log_dir) else "not running")
        return 0
    s = status(args.workdir, args.log_dir)
    if s is None:
        print("not running")
        return 3
    print(f"running: pid {s.pid}, {s.inference_url}, keys {s.key_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
