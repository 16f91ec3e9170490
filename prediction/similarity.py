"""Galaxies like this one: the k nearest neighbours of an image in the models' embedding space.

    python -m prediction.similarity build --images samples/galaxy10_decals --out runs/similarity/samples.npz
    python -m prediction.similarity build --catalog survey.parquet --out survey.npz   # make predict EMBEDDINGS=1
    python -m prediction.similarity query --index survey.npz --image galaxy.jpg [--k 5] [--space both|b0|b2]
    python -m prediction.similarity query --index survey.npz --id <catalogue id>
    python -m prediction.similarity loo --index runs/similarity/samples.npz [--markdown docs/similarity.md]
    make similar QUERY=galaxy.jpg [INDEX=runs/similarity/samples.npz] [K=5]

    from prediction.similarity import SimilarityIndex
    index = SimilarityIndex.load("runs/similarity/samples.npz")
    index.nearest({"b0": answer["b0"]["embedding"], "b2": answer["b2"]["embedding"]}, k=5)

An embedding is a model's penultimate-layer features (B0: 1280, B2: 1408 numbers), as the server
answers them when asked (the `X-Embedding: true` header, or an `embedding=true` form field) and
`make predict EMBEDDINGS=1` writes them. Distances are
cosine distances (1 - cos, 0..2). The "both" space joins the two models' unit vectors (each scaled
by 1/sqrt(2), so the joint vector is a unit vector too). Labels are the true classes where the
index knows them (the sample folder's file names), else the models' predicted class.

Search is exact: numpy's matrix product below FAISS_MIN_ROWS rows, faiss's IndexFlatIP above,
where it is faster (docs/similarity.md has the measurement). Exit status: 0, or 1 with a message.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxy_morph.files import atomic_path, inputs_digest
from galaxy_morph.imaging import ImageError
from galaxy_morph.specs import PAIR
from survey.inputs import IMAGE_SUFFIXES
from survey.samples import SAMPLES_DIR, sample_label

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INDEX = REPO / "runs" / "similarity" / "samples.npz"
FAISS_MIN_ROWS = 30_000  # docs/similarity.md: below it numpy is as fast or faster (bench.similarity)
BOTH = "both"
SPACES = (*PAIR, BOTH)


class SimilarityError(ValueError):
    """An index that cannot be built, read or queried; the message says why."""


@dataclass
class Neighbour:
    id: str
    label: str
    distance: float
    path: str  # the image file, for thumbnails ("" when the index was built from a catalogue)
    labelled: bool  # True: a true label; False: the models' predicted class


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1)


class SimilarityIndex:
    """Unit embeddings per model ({"b0": (n, 1280), "b2": (n, 1408)}) with ids, labels and paths."""

    def __init__(self, vectors: dict, ids, labels, paths=None, labelled=None, meta: dict | None = None):
        self.vectors = {m: unit(v) for m, v in vectors.items()}
        self.ids = np.asarray(ids, dtype=str)
        self.labels = np.asarray(labels, dtype=str)
        n = len(self.ids)
        self.paths = np.asarray(paths if paths is not None else [""] * n, dtype=str)
        self.labelled = np.asarray(labelled if labelled is not None else [False] * n, dtype=bool)
        self.meta = meta or {}
        if not self.vectors or any(len(v) != n for v in self.vectors.values()) or len(self.labels) != n:
            raise SimilarityError("an index needs one embedding per id for every model, and one label per id")
        self._search = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def spaces(self) -> list[str]:
        return [*self.vectors, BOTH] if all(m in self.vectors for m in PAIR) else list(self.vectors)

    def space_vectors(self, space: str) -> np.ndarray:
        if space == BOTH and BOTH in self.spaces:
            return np.concatenate([self.vectors[m] for m in PAIR], axis=1) / np.sqrt(2, dtype=np.float32)
        if space not in self.vectors:
            raise SimilarityError(f"this index holds {', '.join(self.spaces)} embeddings, not {space!r}")
        return self.vectors[space]

    def query_vector(self, embeddings: dict, space: str) -> np.ndarray:
        """The query's unit vector in `space` from {model: embedding} (a server or catalogue answer)."""
        need = PAIR if space == BOTH else (space,)
        missing = [m for m in need if embeddings.get(m) is None]
        if missing:
            raise SimilarityError(f"the {space!r} space needs the {', '.join(missing)} embedding of the query")
        parts = []
        for m in need:
            q = np.asarray(embeddings[m], dtype=np.float32).ravel()
            if q.shape[0] != self.vectors[m].shape[1]:
                raise SimilarityError(f"a {m} embedding has {self.vectors[m].shape[1]} numbers, the query {q.shape[0]}")
            parts.append(unit(q))
        q = np.concatenate(parts)
        return q / np.sqrt(len(parts), dtype=np.float32)

    def _similarities(self, space: str, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, rows) of the k best rows, best first, for a (m, d) query block."""
        if space not in self._search:
            x = self.space_vectors(space)
            if len(self) >= FAISS_MIN_ROWS:
                import faiss

                flat = faiss.IndexFlatIP(x.shape[1])
                flat.add(np.ascontiguousarray(x))
                self._search[space] = flat
            else:
                self._search[space] = x
        search = self._search[space]
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not isinstance(search, np.ndarray):
            return search.search(q, k)
        s = q @ search.T
        rows = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(s.shape[1]), (len(q), 1))
        rows = np.take_along_axis(rows, np.take_along_axis(-s, rows, 1).argsort(1, kind="stable"), 1)
        return np.take_along_axis(s, rows, 1), rows

    def nearest(self, embeddings: dict, k: int = 5, space: str = BOTH, exclude: str | None = None) -> list[Neighbour]:
        """The k nearest galaxies to one query ({model: embedding}), nearest first; `exclude`: an id
        left out (the query itself, when it is in the index)."""
        if k < 1:
            raise SimilarityError("k must be at least 1")
        if space == BOTH and BOTH not in self.spaces:
            space = self.spaces[0]
        q = self.query_vector(embeddings, space)[None]
        extra = 1 if exclude is not None else 0
        sims, rows = self._similarities(space, q, min(len(self), k + extra))
        out = [Neighbour(str(self.ids[r]), str(self.labels[r]), max(0.0, 1.0 - float(s)), str(self.paths[r]),
                         bool(self.labelled[r]))
               for s, r in zip(sims[0], rows[0]) if r >= 0 and self.ids[r] != exclude]
        return out[:k]

    def embeddings_of(self, item_id: str) -> dict:
        hits = np.flatnonzero(self.ids == item_id)
        if not len(hits):
            raise SimilarityError(f"no id {item_id!r} in this index ({len(self)} galaxies)")
        return {m: v[hits[0]] for m, v in self.vectors.items()}

    def leave_one_out(self, space: str, k: int = 1, block: int = 1024) -> float:
        """How often the majority label of each galaxy's k nearest others is its own label (a tie
        goes to the nearest of the tied labels)."""
        x, hits = self.space_vectors(space), 0
        for start in range(0, len(self), block):
            _, rows = self._similarities(space, x[start:start + block], min(len(self), k + 1))
            for i, r in enumerate(rows, start):
                r = [j for j in r if j != i][:k]
                names, counts = np.unique(self.labels[r], return_counts=True)
                best = set(names[counts == counts.max()])
                hits += next(lab for lab in self.labels[r] if lab in best) == self.labels[i]
        return hits / len(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no .npz
            np.savez_compressed(f, ids=self.ids, labels=self.labels, paths=self.paths, labelled=self.labelled,
                                meta=np.array(json.dumps(self.meta)),
                                **{f"emb_{m}": v.astype(np.float16) for m, v in self.vectors.items()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SimilarityIndex":
        path = Path(path)
        if not path.is_file():
            raise SimilarityError(f"no similarity index at {path} (python -m prediction.similarity build ...)")
        try:
            with np.load(path, allow_pickle=False) as z:
                vectors = {k[4:]: z[k].astype(np.float32) for k in z.files if k.startswith("emb_")}
                return cls(vectors, z["ids"], z["labels"], z["paths"], z["labelled"], json.loads(str(z["meta"])))
        except (OSError, ValueError, KeyError) as e:
            raise SimilarityError(f"{path} is not a similarity index: {e}") from None


# --- building ------------------------------------------------------------------------------------

def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SimilarityError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SimilarityError(f"no JPEG, PNG or FITS images in {folder}")
    return files


def predictor_of(run: str | Path | None):
    """The run's ensemble (default checkpoints/demo) as a galaxy_morph.Predictor, on the CPU."""
    from galaxy_morph.predictor import ENSEMBLE, Predictor
    from prediction.ray_predict import default_run

    return Predictor.from_run(Path(run) if run else default_run(), ENSEMBLE, device="cpu")


def inputs_of(folder: str | Path, ckpt_dirs) -> str:
    """The digest of what an index over `folder` is made from: the images and each member's weights."""
    from galaxy_morph.models import WEIGHTS_FILE

    return inputs_digest(Path(folder).resolve(), *(Path(d) / WEIGHTS_FILE for d in ckpt_dirs))


def is_current(out: str | Path, folder: str | Path, run: str | Path | None) -> bool:
    """An index at `out` already built from these images with the checkpoints of `run`."""
    from galaxy_morph.predictor import run_members
    from prediction.ray_predict import default_run

    run = Path(run) if run else default_run()
    try:
        meta = SimilarityIndex.load(out).meta
    except SimilarityError:
        return False
    return meta.get("inputs") == inputs_of(folder, [run / m for m in run_members(run)])


def build_from_images(folder: str | Path, predictor, batch: int = 32) -> SimilarityIndex:
    """Embed every image in a folder with B0 and B2 (a galaxy_morph.Predictor of the ensemble);
    sample-named files (class_<k>_<i>.jpg) keep their true label, other files get the ensemble's
    predicted class."""
    names = predictor.class_names
    files = image_files(folder)
    ids, labels, paths, labelled, vectors = [], [], [], [], {m: [] for m in PAIR}
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        for path, answer in zip(chunk, predictor.answer_batch([p.read_bytes() for p in chunk], embeddings=True)):
            if isinstance(answer, ImageError):
                print(f"skipped {path.name}: {answer}", file=sys.stderr)
                continue
            known = sample_label(path.name)
            ids.append(path.stem)
            labels.append(names[known[0]] if known else answer["class_name"])
            labelled.append(known is not None)
            paths.append(str(path.resolve()))
            for m in PAIR:
                vectors[m].append(answer[m]["embedding"])
    if not ids:
        raise SimilarityError(f"no image in {folder} could be read")
    meta = {"source": str(Path(folder).resolve()), "versions": {m: predictor.members[m].version for m in PAIR},
            "inputs": inputs_of(folder, [m.ckpt_dir for m in predictor.members.values()]),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return SimilarityIndex({m: np.array(v) for m, v in vectors.items()}, ids, labels, paths, labelled, meta)


def build_from_catalog(path: str | Path) -> SimilarityIndex:
    """An index over a `make predict ... EMBEDDINGS=1` Parquet catalogue (labels: predicted class)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise SimilarityError(f"{path}: not a Parquet catalogue ({e})") from None
    columns = [c for c in table.column_names if c.startswith("embedding_")]
    if not columns:
        raise SimilarityError(f"{path} has no embedding_* columns: write it with make predict ... EMBEDDINGS=1")
    rows = table.to_pydict()
    keep = [i for i, e in enumerate(rows[columns[0]]) if e is not None]  # refused inputs have none
    vectors = {c[len("embedding_"):]: np.array([rows[c][i] for i in keep], dtype=np.float32) for c in columns}
    meta = {"source": str(Path(path).resolve()), "versions": versions_of(rows["version"][keep[0]] if keep else ""),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return SimilarityIndex(vectors, [rows["id"][i] for i in keep], [rows["class_name"][i] for i in keep],
                           meta=meta)


def versions_of(version: str) -> dict:
    """A catalogue's version column ("b0 1.0 + b2 1.0" for the ensemble) -> {"b0": "1.0", ...}."""
    parts = [p.split() for p in version.split(" + ")]
    return {p[0]: p[1] for p in parts if len(p) == 2}


# --- CLI -----------------------------------------------------------------------------------------

def leave_one_out_table(index: SimilarityIndex) -> list[dict]:
    return [{"space": s, "nn1": index.leave_one_out(s, 1), "nn5": index.leave_one_out(s, 5)} for s in index.spaces]


def markdown(index: SimilarityIndex, rows: list[dict], chance: float) -> str:
    lines = ["| embedding | nearest neighbour has the same label | majority of 5 nearest |", "|---|---|---|"]
    lines += [f"| {r['space']} | {r['nn1']:.2f} | {r['nn5']:.2f} |" for r in rows]
    return "\n".join(lines) + f"\n\n{len(index)} galaxies; chance {chance:.2f} (the share of same-label pairs).\n"


def chance_level(labels: np.ndarray) -> float:
    """The probability that a random other galaxy has the same label."""
    _, counts = np.unique(labels, return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1))) if n > 1 else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prediction.similarity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an index from an image folder or an embeddings catalogue")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--images", help=f"folder of images (default {SAMPLES_DIR.relative_to(REPO)})")
    src.add_argument("--catalog", help="Parquet catalogue from make predict ... EMBEDDINGS=1")
    b.add_argument("--run", help="checkpoints for --images (default checkpoints/demo)")
    b.add_argument("--out", default=str(DEFAULT_INDEX))
    b.add_argument("--if-stale", action="store_true",
                   help="do nothing when --out was built from the same images and checkpoints")
    q = sub.add_parser("query", help="the k nearest galaxies to an image or an indexed id")
    q.add_argument("--index", default=str(DEFAULT_INDEX))
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", help="image file (embedded here with --run's checkpoints)")
    which.add_argument("--id", help="a galaxy of the index (left out of its own answer)")
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--space", choices=SPACES, default=BOTH)
    q.add_argument("--run", help="checkpoints for --image (default checkpoints/demo)")
    q.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    o = sub.add_parser("loo", help="leave-one-out: how often the nearest other galaxy shares the label")
    o.add_argument("--index", default=str(DEFAULT_INDEX))
    o.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args(argv)
    try:
        if args.command == "build":
            t0 = time.time()
            if args.catalog:
                index = build_from_catalog(args.catalog)
            else:
                folder = args.images or SAMPLES_DIR
                if args.if_stale and is_current(args.out, folder, args.run):
                    print(f"{args.out} is up to date")
                    return 0
                index = build_from_images(folder, predictor_of(args.run))
            index.save(args.out)
            print(f"indexed {len(index)} galaxies ({', '.join(index.spaces)}) in {args.out} "
                  f"in {time.time() - t0:.1f} s")
            return 0
        index = SimilarityIndex.load(args.index)
        if args.command == "loo":
            rows, chance = leave_one_out_table(index), chance_level(index.labels)
            text = markdown(index, rows, chance)
            print(text, end="")
            if args.markdown:
                Path(args.markdown).write_text(text)
            return 0
        if args.k < 1:
            raise SimilarityError("--k must be at least 1")
        if args.image:
            path = Path(args.image)
            if not path.is_file():
                raise SimilarityError(f"no image file {path}")
            answer = predictor_of(args.run).answer_batch([path.read_bytes()], embeddings=True)[0]
            if isinstance(answer, ImageError):
                raise SimilarityError(f"{path}: {answer}")
            query, exclude = {m: answer[m]["embedding"] for m in PAIR}, None
        else:
            query, exclude = index.embeddings_of(args.id), args.id
        found = index.nearest(query, args.k, args.space, exclude)
    except ValueError as e:  # SimilarityError, galaxy_morph.predictor.CheckpointError
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in found:
        print(json.dumps(r.__dict__) if args.json else f"{r.id}\t{r.label}\t{r.distance:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
