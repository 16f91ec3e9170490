"""`galaxy-morph`: one command for the project's tools, each a module's own main.

    galaxy-morph --help
    galaxy-morph classify --input samples/galaxy10_decals --out catalog.csv
    galaxy-morph similar query --image galaxy.jpg --k 5
    python -m galaxy_morph_cli predict --help

Everything after the subcommand goes to that module's main unchanged, and the command exits with its
status. Modules are imported only when their subcommand runs, so --help stays fast (no torch).
"""
from __future__ import annotations

import importlib
import sys

PROG = "galaxy-morph"
PROJECT = {"galaxy_morph", "handlers", "torchserve_ops", "survey", "prediction", "labelling", "training",
           "simulation", "dashboard"}

# subcommand -> (module with main(argv), the extra it needs, one line of help)
COMMANDS = {
    "classify": ("torchserve_ops.bulk", "serving",
                 "classify a folder, HDF5 file or table of sky positions through TorchServe (make classify)"),
    "predict": ("prediction.ray_predict", "ray", "classify offline on Ray Data, no server (make predict)"),
    "similar": ("prediction.similarity", "ray", "build a similarity index, find the nearest galaxies (make similar)"),
    "queue": ("labelling.queue", "dashboard", "queue the least certain galaxies for the Review page (make queue)"),
    "retrain": ("training.retrain", "training",
                "fine-tune on your labels, compare, register the next version (make retrain)"),
    "train": ("training.train", "training", "train one model on a Galaxy10-schema HDF5 file (make train)"),
    "evaluate": ("training.evaluate", "training", "evaluate a run's checkpoints and ensemble rules (make evaluate)"),
    "archive": ("torchserve_ops.archive", "serving", "build the TorchServe archives from a run (make archive)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [args...]   ({PROG} <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, extra, _ = COMMANDS[name]
    try:
        run = importlib.import_module(module).main
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in PROJECT:
            raise
        print(f"{PROG} {name} needs {e.name}: pip install 'galaxy-morph[{extra}]'", file=sys.stderr)
        return 1
    if argv is None:  # argparse names the program after argv[0] where the module does not set prog
        sys.argv[0] = f"{PROG} {name}"
    status = run(rest)  # archive's main returns None; argparse errors raise SystemExit themselves
    return 0 if status is None else int(status)
