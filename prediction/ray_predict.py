"""Survey-scale offline classification on Ray Data: model actors, no HTTP server.

    python -m prediction.ray_predict --input samples/galaxy10_decals --out /tmp/p.csv
    python -m prediction.ray_predict --input data/survey.h5 --out survey.parquet --model b2 \
        [--run checkpoints/demo] [--rule mean|weighted|seed] [--address ray://head:10001] \
        [--actors N] [--cpus-per-actor 1] [--gpus-per-actor 0] [--batch-size 64] [--shard-size 1024]
        [--embeddings]
    make predict INPUT=... OUT=... [MODEL=b0|b2|ensemble] [RULE=seed] [RAY_ADDRESS=...] [EMBEDDINGS=1]

Input: a folder of JPEG/PNG images, a Galaxy10-schema HDF5 file, or Parquet shards with an `image`
column (prediction/inputs.py). It is cut into shards; Ray Data reads shards in tasks and classifies
them with `map_batches` over a pool of model actors, each holding a galaxy_morph.Predictor (the
server's answer path, in-process). Output: the bulk classifier's columns, CSV or Parquet (by the --out suffix). --embeddings
(Parquet only) adds each model's penultimate-layer features as a list<float32> column
`embedding_b0`, `embedding_b2` (one per member of the run): the input of a similarity index (prediction/similarity.py).

Resume: each finished shard is written to OUT.parts/ at once; run the same command again and only
the missing shards are classified, then the parts are merged into OUT. Local Ray is started and
stopped by the command (`--num-cpus`, default all cores); with --address or RAY_ADDRESS it joins a
running cluster instead, shipping this code to it (the cluster needs the same requirements, e.g.
the project's image). Exit status: 0 done, 1 bad arguments, input or checkpoints, 3 stopped early
(re-run to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from galaxy_morph.run_files import ENSEMBLE, CheckpointError, run_members
from galaxy_morph.specs import ALL_SPECS
from survey.rows import header_for, row_for
from prediction.inputs import DEFAULT_SHARD_SIZE, InputError, Shard, plan_shards, read_shard
from prediction.parts import OutputError, PartStore, output_format

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUNS = (REPO / "checkpoints" / "demo", REPO / "runs" / "demo")
CHOICES = tuple(ALL_SPECS) + (ENSEMBLE,)  # --model
RUN_FILES = ("model.pt", "meta.json", "calibration.json", "ood.npz", "report.json")


def default_run() -> Path:
    """checkpoints/demo when the repository ships it, else runs/demo (make demo-models)."""
    return next((d for d in DEFAULT_RUNS if (d / "b0" / "meta.json").is_file()), DEFAULT_RUNS[-1])


def pack_run(run: Path, model: str) -> dict[str, bytes]:
    """{relative path: bytes} of what a Predictor of `model` loads from RUN: model actors on other
    machines of a Ray cluster need no shared file system."""
    members = run_members(run) if model == ENSEMBLE else [model]
    if not members or not all((run / m / "model.pt").is_file() and (run / m / "meta.json").is_file()
                              for m in members):
        raise CheckpointError(f"no {model} checkpoint in {run}: expected {run}/M/model.pt and meta.json "
                              f"(make demo-models, or --run DIR with b0/ and b2/)")
    files = {f"{m}/{f}": (run / m / f).read_bytes() for m in members for f in RUN_FILES if (run / m / f).is_file()}
    if model == ENSEMBLE and (run / "ensemble.json").is_file():
        files["ensemble.json"] = (run / "ensemble.json").read_bytes()
    return files


def unpack_run(files: dict[str, bytes], folder: Path) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


# --- Ray Data stages (run in Ray workers) ---------------------------------------------------------

def load_shards(batch: dict) -> dict:
    """Shard descriptors -> their rows: shard, pos, id and image bytes or pixels (HDF5)."""
    columns = defaultdict(list)
    for text in batch["shard"]:
        shard = Shard(**json.loads(str(text)))
        for row in read_shard(shard):
            columns["shard"].append(shard.index)
            for k, v in row.items():
                columns[k].append(v)
    out = {k: np.array(v) for k, v in columns.items() if k not in ("image", "pixels")}
    if "pixels" in columns:
        out["pixels"] = np.stack(columns["pixels"])
    if "image" in columns:
        out["image"] = np.array(columns["image"], dtype=object)
    out["id"] = np.array([str(i) for i in columns["id"]], dtype=object)
    return out


class ModelActor:
    """A Ray Data actor: loads the run's Predictor once, then answers batch after batch."""

    def __init__(self, files_ref, model: str, rule: str | None, threads: int, embeddings: bool = False):
        import tempfile

        import ray
        import torch

        torch.set_num_threads(max(1, threads))
        files = ray.get(files_ref[0])  # in a list, so that Ray Data hands over the reference
        with tempfile.TemporaryDirectory(prefix="galaxy-run-") as tmp:
            from galaxy_morph.predictor import Predictor

            self.predictor = Predictor.from_run(unpack_run(files, Path(tmp)), model, rule, device=None)
        self.embeddings = embeddings

    def __call__(self, batch: dict) -> dict:
        items = batch["pixels"] if "pixels" in batch else batch["image"]
        answers = self.predictor.answer_batch(list(items), self.embeddings, batch_size=len(items) or 1)
        return {"shard": batch["shard"], "pos": batch["pos"], "id": batch["id"],
                "answer": np.array([json.dumps(a) if isinstance(a, dict) else "" for a in answers], dtype=object),
                "error": np.array(["" if isinstance(a, dict) else str(a) for a in answers], dtype=object)}


# --- driver ------------------------------------------------------------------------------------

def start_ray(address: str | None, num_cpus: int | None):
    """Join a cluster (address) or start a local Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        import galaxy_morph
        import prediction
        import survey

        ray.init(address=address, runtime_env={"py_modules": [galaxy_morph, survey, prediction]},
                 log_to_driver=False)
    else:
        os.environ.pop("RAY_ADDRESS", None)  # an empty RAY_ADDRESS= from make means local
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return True


def classify_shards(pending: list[Shard], files: dict, store: PartStore, args,
                    class_names: list[str], members: list[str], log=print) -> int:
    """Run the Ray Data pipeline over the pending shards, writing each part as it completes."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not args.quiet
    ctx.execution_options.preserve_order = False
    ds = ray.data.from_items([{"shard": json.dumps(s.to_dict())} for s in pending],
                             override_num_blocks=len(pending))
    ds = ds.map_batches(load_shards, batch_size=1, batch_format="numpy")
    ds = ds.map_batches(ModelActor, batch_size=args.batch_size, batch_format="numpy",
                        fn_constructor_kwargs={"files_ref": [ray.put(files)], "model": args.model,
                                               "rule": args.rule, "threads": max(1, int(args.cpus_per_actor)),
                                               "embeddings": args.embeddings},
                        compute=ray.data.ActorPoolStrategy(size=args.actors), num_cpus=args.cpus_per_actor,
                        num_gpus=args.gpus_per_actor or None)
    # the catalogue's own columns; embedding columns, when asked for, come after them
    header = store.header[:len(store.header) - len(members)] if args.embeddings else store.header
    by_index = {s.index: s for s in pending}
    rows: dict[int, list] = defaultdict(list)
    written = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for shard, pos, item_id, answer, error in zip(batch["shard"], batch["pos"], batch["id"],
                                                      batch["answer"], batch["error"]):
            shard, answer = int(shard), json.loads(answer) if answer else None
            row = row_for(str(item_id), answer, str(error), header, class_names)
            rows[shard].append((int(pos), row + embeddings_of(answer, args.model, members) if args.embeddings else row))
            if len(rows[shard]) == by_index[shard].n:
                done = [r for _, r in sorted(rows.pop(shard), key=lambda x: x[0])]
                store.write(by_index[shard].key, done)
                written += 1
                log(f"shard {by_index[shard].key}: {len(done)} rows ({written}/{len(pending)} this run)")
    return written


def embedding_columns(members: list[str]) -> list[str]:
    return [f"embedding_{m}" for m in members]


def embeddings_of(answer: dict | None, model: str, members: list[str]) -> list:
    """The answer's embedding per model (a workflow answer carries its members'); None: refused."""
    if answer is None:
        return [None] * len(members)
    return [(answer[m] if model == ENSEMBLE else answer)["embedding"] for m in members]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m prediction.ray_predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="image folder, Galaxy10 HDF5 file, or Parquet file/folder")
    ap.add_argument("--out", required=True, help="catalogue to write: .csv or .parquet")
    ap.add_argument("--model", default=ENSEMBLE, choices=CHOICES)
    ap.add_argument("--rule", default=None, choices=("mean", "weighted", "seed"),
                    help="ensemble rule (default: the run's measured rule, RUN/ensemble.json, else mean)")
    ap.add_argument("--run", default=None, help="checkpoint folder with b0/ and b2/ "
                    "(default: checkpoints/demo, else runs/demo)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                    help="Ray cluster to join (default $RAY_ADDRESS; none: local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="local Ray's CPUs (default: all cores)")
    ap.add_argument("--actors", type=int, default=None, help="model actors (default: local CPUs // 2, min 1)")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--gpus-per-actor", type=float, default=0.0, help="e.g. 1 on a GPU cluster")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per shard (HDF5, folders)")
    ap.add_argument("--max-shards", type=int, default=None,
                    help="classify at most N shards in this run, then stop (exit 3; re-run to go on)")
    ap.add_argument("--embeddings", action="store_true",
                    help="add each model's embedding as a column (Parquet output only)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or (args.actors is not None and args.actors < 1) or args.cpus_per_actor <= 0:
        ap.error("--batch-size, --actors and --cpus-per-actor must be positive")
    if args.actors is None:
        args.actors = max(1, (args.num_cpus or os.cpu_count() or 2) // 2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Path(args.run) if args.run else default_run()
    out = Path(args.out)
    t0 = time.time()
    try:
        if output_format(out) != "parquet" and args.embeddings:
            raise OutputError(f"{out}: embeddings are written to Parquet only: use an --out ending in .parquet")
        shards = plan_shards(args.input, args.shard_size)
        files = pack_run(run, args.model)
        from galaxy_morph.predictor import Predictor  # (torch: after the cheap checks of the arguments)

        predictor = Predictor.from_run(run, args.model, args.rule, device="cpu")  # checks model and rule here
        members, class_names = list(predictor.members), predictor.class_names
        rule = predictor.rule
        del predictor  # the actors load their own
        header = header_for(class_names, workflow=args.model == ENSEMBLE) + (
            embedding_columns(members) if args.embeddings else [])
        plan = {"input": str(Path(args.input).resolve()), "shards": len(shards), "shard_size": args.shard_size,
                "model": args.model, "rule": rule,
                "run": str(run.resolve()), "header": header}
        store = PartStore(out, plan, header, class_names)
    except (InputError, CheckpointError, OutputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    pending = [s for s in shards if not store.done(s.key)]
    print(f"{sum(s.n for s in shards)} inputs in {len(shards)} shard(s), {len(shards) - len(pending)} "
          f"already done; model {args.model} from {run}")
    pending = pending[:args.max_shards]
    if pending:
        started = start_ray(args.address, args.num_cpus)
        try:
            classify_shards(pending, files, store, args, class_names, members)
        except KeyboardInterrupt:
            print("interrupted: finished shards are kept, re-run to resume", file=sys.stderr)
            return 3
        finally:
            if started:
                import ray

                ray.shutdown()
    try:
        n = store.merge([s.key for s in shards])
    except OutputError as e:
        print(f"stopped early: {e}", file=sys.stderr)
        return 3
    print(f"wrote {n} rows to {out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
