"""Model version management for a running TorchServe (what scripts/versions.sh runs).

    python -m torchserve_ops.versions list [galaxy-b0 ...]
    python -m torchserve_ops.versions register galaxy-b0-v2.0.mar [--workers 1]
    python -m torchserve_ops.versions set-default galaxy-b0 2.0
    python -m torchserve_ops.versions rollback galaxy-b0 [--to 1.0]
    python -m torchserve_ops.versions promote 1.1 [--models galaxy-b0 ...]   # + refresh-workflow
    python -m torchserve_ops.versions rollback --all [--to 1.0]               # + refresh-workflow
    python -m torchserve_ops.versions unregister galaxy-b0 2.0
    python -m torchserve_ops.versions refresh-workflow [--store model_store]

Options: --key-file (default $TS_KEY_FILE, else ./key_file.json, else the repository's),
--management-url (default http://$TS_HOST:$TS_MANAGEMENT_PORT). Build a new version's archive first with
`python -m torchserve_ops.archive --run DIR --models b0 --version 2.0 --versioned-name --no-workflow`.

The workflow keeps its own copies of the models (galaxy-ensemble__b0, __b2, ...) and does not
follow set-default: `refresh-workflow` rebuilds galaxy-ensemble.war over the current default version
of each of its members (galaxy-b0, galaxy-b2, and galaxy-convnext in a workflow built over it: the
members of the store's .war; their model-store files, their per-class F1 from the model cards) and
re-registers it. `list` without names lists those members.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from galaxy_morph.answers import WORKFLOW_NAME, WORKFLOW_SETTINGS, served_name
from torchserve_ops.client import TorchServeClient, TorchServeError, locate_key_file, server_settings

REPO = Path(__file__).resolve().parent.parent


def members(store: str | os.PathLike, name: str = WORKFLOW_NAME) -> list[str]:
    """The spec names of the workflow's models, from STORE/NAME.war (b0 and b2 without one)."""
    from torchserve_ops.server import workflow_members

    return workflow_members(Path(store) / f"{name}.war")


class VersionError(RuntimeError):
    pass


class Management:
    """Version handling on top of the project's TorchServe client (management key from the key file)."""

    def __init__(self, url: str | None = None, key_file: str | os.PathLike | None = None,
                 client: TorchServeClient | None = None):
        if client is not None:  # the dashboard's own
            self.client = client
            return
        if not Path(key_file).is_file():
            raise VersionError(f"no key file at {key_file}: is TorchServe running (make serve)?")
        self.client = TorchServeClient(management_url=url, key_file=key_file)

    def versions(self, name: str) -> list[dict]:
        """Every registered version of a model, the default one flagged."""
        default = self.client.default_version(name)
        return [{"version": v["modelVersion"], "url": v["modelUrl"], "default": v["modelVersion"] == default,
                 "workers": [w["status"] for w in v.get("workers", [])]}
                for v in self.client.versions(name)]

    def register(self, url: str, workers: int = 1) -> dict:
        return self.client.register(url, initial_workers=workers)

    def set_default(self, name: str, version: str) -> dict:
        return self.client.set_default(name, version)

    def unregister(self, name: str, version: str) -> dict:
        return self.client.unregister(name, version)

    def rollback(self, name: str, to: str | None = None) -> str:
        """Make `to`, or else the highest version below the current default, the default."""
        versions = self.versions(name)
        current = next(v["version"] for v in versions if v["default"])
        if to is None:
            older = sorted((v["version"] for v in versions if version_key(v["version"]) < version_key(current)),
                           key=version_key)
            if not older:
                raise VersionError(f"{name}: no version older than the default {current}")
            to = older[-1]
        self.set_default(name, to)
        return to

    def _has(self, name: str, version: str) -> bool:
        return version in {v["version"] for v in self.versions(name)}

    def promote(self, version: str, store: str | os.PathLike, names: list[str] | None = None,
                include: tuple = ()) -> dict:
        """Make `version` the default of each model in `names` (default: every member of the store's
        workflow that has that version registered, and the models in `include`), then rebuild the
        workflow over the defaults. Every model is checked before any default changes."""
        if names is None:
            names = [n for n in (served_name(m) for m in members(store)) if self._has(n, version)]
            names += [n for n in include if n not in names]
        lacking = [n for n in names if not self._has(n, version)]
        if not names or lacking:
            raise VersionError(f"no version {version} registered for {', '.join(lacking) or 'any model of the ensemble'}")
        for name in names:
            self.set_default(name, version)
        self._refresh_if_served(store)
        return {name: version for name in names}

    def rollback_all(self, store: str | os.PathLike, to: str | None = None, include: tuple = ()) -> dict:
        """rollback() every member of the store's workflow (and each model in `include`) that has an
        older version (or version `to`), then rebuild the workflow over the defaults."""
        names = [served_name(m) for m in members(store)]
        names += [n for n in include if n not in names]
        if to is not None:
            names = [n for n in names if self._has(n, to)]
            if not names:
                raise VersionError(f"no model of the ensemble has a version {to}")
        done = {}
        for name in names:
            try:
                done[name] = self.rollback(name, to)
            except VersionError:
                continue  # nothing older: it stays
        if not done:
            raise VersionError("no model of the ensemble has a version older than its default")
        self._refresh_if_served(store)
        return done

    def _refresh_if_served(self, store) -> None:
        if not any(w["workflowName"] == WORKFLOW_NAME for w in self.client.list_workflows()):
            return
        try:
            self.refresh_workflow(store)
        except (OSError, subprocess.CalledProcessError) as e:  # a store elsewhere, or read-only (a pod)
            raise VersionError(f"the defaults changed, but the ensemble was not rebuilt over them ({e}): run "
                               "scripts/versions.sh refresh-workflow where the server's model store is") from e

    def card(self, name: str) -> dict:
        return self.client.describe(name)[0].get("customizedMetadata") or {}

    def refresh_workflow(self, store: str | os.PathLike, name: str = WORKFLOW_NAME) -> dict:
        """Rebuild the workflow archive over the current default versions and re-register it."""
        from torchserve_ops.archive import BUILT_FROM, build_workflow_archive

        urls, f1, versions = {}, {}, {}
        for m in members(store, name):
            d = self.client.describe(served_name(m))[0]
            urls[m], versions[m] = d["modelUrl"], d["modelVersion"]
            f1[m] = (d.get("customizedMetadata") or {}).get("val_per_class_f1")
        build_workflow_archive(Path(store), urls, f1, versions, name, rule=workflow_settings(store, name))
        # The store's .war now names these versions: make serve rebuilds the store from its RUN again.
        (Path(store) / BUILT_FROM).unlink(missing_ok=True)
        if any(w["workflowName"] == name for w in self.client.list_workflows()):
            self.client.unregister_workflow(name)
        self.client.register_workflow(f"{name}.war")
        return {"workflow": name, "models": urls, "versions": versions}


def workflow_settings(store: str | os.PathLike, name: str = WORKFLOW_NAME) -> dict:
    """The ensemble.json of the store's workflow archive ({} when there is none): a rebuild keeps
    its measured default rule."""
    import zipfile

    war = Path(store) / f"{name}.war"
    if not war.is_file():
        return {}
    with zipfile.ZipFile(war) as z:
        found = [n for n in z.namelist() if Path(n).name == WORKFLOW_SETTINGS]
        return json.loads(z.read(found[0])) if found else {}


def version_key(version: str):
    """Sort key of a version string: 1.10 after 1.9; numbers before words (1.0 before 1.0-rc)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(version).replace("-", ".").split("."))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--key-file", default=str(locate_key_file()))
    ap.add_argument("--management-url", default=server_settings()["management_url"])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list versions (default marked)")
    p.add_argument("names", nargs="*", help="default: the models of the ensemble workflow in model_store")
    p = sub.add_parser("register", help="register an archive from the model store as a new version")
    p.add_argument("file", help="file name in the model store, e.g. galaxy-b0-v2.0.mar")
    p.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("set-default", help="make a version the default")
    p.add_argument("name")
    p.add_argument("version")
    p = sub.add_parser("rollback", help="default back to the previous version")
    p.add_argument("name", nargs="?", help="a model, or --all")
    p.add_argument("--all", action="store_true", help="every model of the ensemble, then refresh-workflow")
    p.add_argument("--to", default=None)
    p.add_argument("--store", default=str(REPO / "model_store"))
    p = sub.add_parser("promote", help="a version the default of every model that has it, then refresh-workflow")
    p.add_argument("version")
    p.add_argument("--models", nargs="*", default=None, help="default: the ensemble's models with that version")
    p.add_argument("--store", default=str(REPO / "model_store"))
    p = sub.add_parser("unregister", help="remove one version")
    p.add_argument("name")
    p.add_argument("version")
    p = sub.add_parser("refresh-workflow", help="ensemble onto the current default versions")
    p.add_argument("--store", default=str(REPO / "model_store"))
    args = ap.parse_args(argv)
    try:
        mgmt = Management(args.management_url, args.key_file)
        if args.command == "list":
            for name in args.names or [served_name(m) for m in members(REPO / "model_store")]:
                for v in mgmt.versions(name):
                    print(f"{name:12} {v['version']:8} {'default' if v['default'] else '':8} "
                          f"{v['url']:28} workers: {', '.join(v['workers']) or 'none'}")
        elif args.command == "register":
            print(mgmt.register(args.file, args.workers)["status"])
        elif args.command == "set-default":
            print(mgmt.set_default(args.name, args.version)["status"])
        elif args.command == "rollback" and args.all:
            for name, v in mgmt.rollback_all(args.store, args.to).items():
                print(f"{name}: default is now {v}")
        elif args.command == "rollback":
            if not args.name:
                ap.error("rollback: name a model, or --all")
            print(f"{args.name}: default is now {mgmt.rollback(args.name, args.to)}")
        elif args.command == "promote":
            for name, v in mgmt.promote(args.version, args.store, args.models).items():
                print(f"{name}: default is now {v}")
        elif args.command == "unregister":
            print(mgmt.unregister(args.name, args.version)["status"])
        elif args.command == "refresh-workflow":
            r = mgmt.refresh_workflow(args.store)
            print(f"{r['workflow']} now uses " + ", ".join(f"{u} ({r['versions'][m]})" for m, u in r["models"].items()))
    except (VersionError, TorchServeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
