"""The container's entrypoint: TorchServe in the foreground with a pod's config.properties, as is.

    python -m deploy.serve_foreground --config deploy/k8s/base/config.properties \
        [--log-dir logs] [--ready-file /tmp/galaxy-morph-ready] [--no-workflow] [--timeout 600]

`python -m torchserve_ops.server start` is made for one host: it rewrites the addresses to 127.0.0.1,
relies on token authorisation (key_file.json) and returns once TorchServe runs in the background.
A container needs the opposite: the config used unchanged (0.0.0.0, tokens off: see
deploy/k8s/base/config.properties), the server as the container's main process with its logs on
stdout, and SIGTERM from Kubernetes stopping it cleanly. This module starts the same Java command
as the launcher (torchserve_ops.server.java_command), waits until /ping answers and the start-up models
are READY, registers the galaxy-ensemble workflow (TorchServe cannot load workflows at start),
writes the ready file that the pod's startupProbe checks, and then waits: its exit status is
TorchServe's. SIGTERM or SIGINT stop TorchServe and its workers. Exit 1: bad config or archives
missing; 2: TorchServe did not become READY in time.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from torchserve_ops.client import TorchServeClient, TorchServeError
from torchserve_ops.server import WORKFLOW, java_command, workflow_members, workflow_model_names


class StartError(RuntimeError):
    pass


def read_properties(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def local_url(address: str) -> str:
    """http://0.0.0.0:8080 -> http://127.0.0.1:8080 (what this process itself calls)."""
    scheme, rest = address.split("://", 1)
    return f"{scheme}://127.0.0.1:{rest.rsplit(':', 1)[1]}"


def signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """`sig` to TorchServe's process group (frontend and model workers); False when it is gone."""
    try:
        os.killpg(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to TorchServe's process group, SIGKILL after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if not signal_group(proc, sig):
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.serve_foreground", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="TorchServe config.properties, used unchanged")
    ap.add_argument("--log-dir", default="logs", help="TorchServe's log files (also on stdout)")
    ap.add_argument("--ready-file", default=None, help="written once everything is READY (startupProbe)")
    ap.add_argument("--no-workflow", action="store_true", help=f"do not register {WORKFLOW}")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to become READY")
    ap.add_argument("--stop-grace", type=float, default=30.0,
                    help="seconds between SIGTERM and SIGKILL when stopping (Kubernetes' default grace "
                         "is 30 s; TorchServe 0.12's frontend often needs all of it)")
    args = ap.parse_args(argv)

    config = Path(args.config).resolve()
    if not config.is_file():
        print(f"error: config not found: {config}", file=sys.stderr)
        return 1
    conf = read_properties(config)
    store = Path(conf.get("model_store", ""))
    wanted = [m for m in conf.get("load_models", "").split(",") if m] + ([] if args.no_workflow else [WORKFLOW])
    missing = [m for m in wanted if not (store / m).is_file()]
    if not store.is_absolute() or "inference_address" not in conf or "management_address" not in conf or missing:
        print(f"error: {config} needs an absolute model_store, inference_address and management_address, "
              f"and the archives {', '.join(missing) or wanted} in {store}", file=sys.stderr)
        return 1
    log_dir = Path(args.log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix="torchserve-"))  # worker sockets, unpacked archives
    ready_file = Path(args.ready_file) if args.ready_file else None
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
    # Passive OpenMP waiting, as the launcher does: spinning threads slow the other workers.
    env = {**os.environ, "TMPDIR": str(tmp_dir), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.Popen(java_command(config, store, tmp_dir, log_dir), cwd=tmp_dir, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    stopping = []

    def on_signal(signum, _frame):
        # Only signals here: the main thread is inside proc.wait(), which holds the lock that reaping
        # needs, so a wait in the handler could never see TorchServe exit. SIGKILL follows the grace.
        if not stopping:
            signal_group(proc, signal.SIGTERM)
            kill = threading.Timer(args.stop_grace, signal_group, (proc, signal.SIGKILL))
            kill.daemon = True  # nothing to wait for once TorchServe has exited
            kill.start()
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Tokens are off in the pod (the ingress authenticates): a client without a key file.
    client = TorchServeClient(local_url(conf["inference_address"]), local_url(conf["management_address"]),
                              metrics_url=None, key_file=None)
    alive = lambda: proc.poll() is None  # noqa: E731
    deadline = time.monotonic() + args.timeout
    try:
        names = [m.rsplit(".", 1)[0] for m in wanted if m != WORKFLOW]
        client.wait_until_ready(names, timeout=args.timeout, alive=alive)
        if not args.no_workflow:
            try:
                client.register_workflow(WORKFLOW)
            except TorchServeError as e:
                raise StartError(f"registering {WORKFLOW} failed: {e}") from None
            nodes = workflow_model_names(WORKFLOW, workflow_members(store / WORKFLOW))
            client.wait_until_ready(nodes, timeout=max(1.0, deadline - time.monotonic()), alive=alive)
    except (StartError, TorchServeError) as e:
        if stopping:  # asked to stop while starting
            return 0
        print(f"error: {e}", file=sys.stderr, flush=True)
        stop(proc)
        return 2
    if ready_file is not None:
        ready_file.write_text(str(proc.pid))
    print(f"galaxy-morph ready: inference {conf['inference_address']}, management "
          f"{conf['management_address']}, metrics {conf.get('metrics_address', '-')}", flush=True)
    code = proc.wait()
    if stopping:
        signal_group(proc, signal.SIGKILL)  # a model worker that outlived the frontend
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
