"""The review queue: galaxies the models are least sure of, first.

    python -m labelling.queue add --store labels.db --input cutouts/ [--source survey] [--run checkpoints/demo]
    python -m labelling.queue add --store labels.db --input survey.h5 --mc-passes 20
    python -m labelling.queue add --store labels.db --input positions.csv [--cutout-url ...]   # cutouts
    python -m labelling.queue add --store labels.db --input catalog.csv --images cutouts/ --top 500
    python -m labelling.queue list --store labels.db [--score entropy|margin|disagreement|bald|random] [--k 20]

`add` reads the images as `make classify` does (a folder, an HDF5 file, or a table of sky positions
whose cutouts are downloaded and cached); from a `make classify` / `make predict` catalogue it
takes the --top rows whose answers have the highest entropy and reads those from --images. It
classifies each image in-process with the served checkpoints (galaxy_morph.Predictor, the
server's own answer path) and stores the galaxy (its image bytes), B0's and B2's answers and, with
--mc-passes N, N MC-dropout passes of B0 (stored as answers of model "galaxy-b0/mc"). `list` and
`ranked()` order the unlabelled galaxies by an acquisition score (labelling.acquisition) computed
from the stored answers: entropy and margin of the ensemble mean, B0/B2 disagreement, BALD over
the MC passes, or random (the baseline). Exit status 0, or 1 with a message.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from galaxy_morph.answers import MODEL_NAMES
from labelling import acquisition
from galaxy_morph.specs import GALAXY10_CLASSES
from labelling.store import LabelStore, StoreError
from survey.cutouts import add_cutout_arguments, fetcher_from_args, position_loaders
from survey.inputs import H5_SUFFIXES, InputError, Item, h5_size, open_input
from survey.positions import PositionsError, read_positions, table_format

MC_MODEL = f"{MODEL_NAMES['b0']}/mc"  # the answers that are MC-dropout passes of B0
SCORE_NAMES = ("entropy", "margin", "disagreement", "bald", "random")


def read_catalogue(path: Path):
    """A `make classify` / `make predict` output (CSV or Parquet with every class's probability
    column and an id), as a DataFrame; None for any other table."""
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=[""])
    else:
        return None
    return df if {"id", *GALAXY10_CLASSES} <= set(df.columns) else None


def least_certain(catalogue, k: int) -> list[str]:
    """The ids of the k answered rows of a catalogue whose probabilities have the highest entropy."""
    answered = catalogue.dropna(subset=list(GALAXY10_CLASSES))
    if "error" in answered:
        answered = answered[answered["error"].fillna("").astype(str) == ""]
    p = answered[list(GALAXY10_CLASSES)].to_numpy(np.float64)
    order = acquisition.rank(acquisition.entropy(p))[:k]
    return [str(answered["id"].iloc[i]) for i in order]


def read_inputs(path: str | Path, images: str | Path | None = None, top: int = 1000, fetcher=None,
                columns: dict | None = None) -> tuple[list[tuple[str, bytes]], list[str], dict]:
    """(key, image bytes) items, refusals ("key: why") and {key: (ra, dec)} from a folder of images,
    a Galaxy10-schema HDF5 file (rows as PNG), a table of sky positions (cutouts fetched by
    `fetcher`, survey.cutouts), or a catalogue of `make classify` / `make predict` whose `top` least
    certain rows are read from `images`, the input it was made from."""
    path = Path(path)
    wanted, positions = None, {}
    if path.is_file() and (catalogue := read_catalogue(path)) is not None:
        if images is None:
            raise StoreError(f"{path} is a catalogue of answers: give the images it was made from "
                             "(--images folder, HDF5 file or positions table)")
        wanted = least_certain(catalogue, top)
        if not wanted:
            raise StoreError(f"{path} has no answered rows (every row has an error or no probabilities)")
        path = Path(images)
    elif images is not None:
        raise StoreError(f"--images is for a catalogue input; {path} is not one (no id and class columns)")
    if table_format(path) and path.is_file():  # read once: the positions, and a cutout loader for each
        try:
            table = read_positions(path, **(columns or {}))
        except PositionsError as e:
            raise StoreError(str(e)) from None
        positions = {p.id: (p.ra, p.dec) for p in table}
        stream = (Item(i, load) for i, load in position_loaders(table, fetcher))
    else:
        skip = frozenset()
        if wanted is not None and path.suffix.lower() in H5_SUFFIXES and path.is_file():
            skip = frozenset(map(str, range(h5_size(path)))) - set(wanted)  # read only the chosen rows' chunks
        try:
            stream, _ = open_input(path, skip=skip)
        except InputError as e:
            raise StoreError(str(e)) from None
    rank = None if wanted is None else {k: i for i, k in enumerate(wanted)}
    items, refused, seen = [], [], set()
    for item in stream:
        if rank is not None and item.id not in rank:
            continue
        seen.add(item.id)
        try:
            items.append((item.id, item.load()))
        except OSError as e:  # a cutout outside the footprint, a download that failed
            refused.append(f"{item.id}: {e}")
    if rank is not None:
        refused += [f"{k}: in the catalogue but not in {path}" for k in wanted if k not in seen]
        items.sort(key=lambda it: rank[it[0]])
    if not items and not refused:
        raise StoreError(f"no images in {path}")
    return items, refused, positions


def add_images(store: LabelStore, items: list[tuple[str, bytes]], source: str, predictor,
               mc_passes: int = 0, positions: dict | None = None) -> dict:
    """Classify (a galaxy_morph.Predictor of the ensemble) and queue (key, bytes) items (at ra, dec =
    positions[key] where given); returns {"added", "refused"}."""
    answers = predictor.answer_batch([b for _, b in items], mc_passes=mc_passes)
    added, refused = 0, []
    for (key, data), answer in zip(items, answers):
        if not isinstance(answer, dict):
            refused.append(f"{key}: {answer}")
            continue
        ra, dec = (positions or {}).get(key, (None, None))
        cid = store.add_candidate(source, key, image=data, ra=ra, dec=dec)
        for m in ("b0", "b2"):  # under their served names, as the Classify page stores them
            a = answer[m]
            store.add_answer(cid, MODEL_NAMES[m], a["version"], a["probabilities"], a.get("ood_score"))
        if mc_passes:  # the head's passes over the features B0 just classified with
            for p in answer["b0"]["mc_dropout"]["probabilities"]:
                store.add_answer(cid, MC_MODEL, answer["b0"]["version"], p)
        added += 1
    return {"added": added, "refused": refused}


def answers_by_candidate(store: LabelStore) -> dict[int, dict[str, list]]:
    """{candidate: {model: [probability vectors, oldest first]}} from the store."""
    out: dict[int, dict[str, list]] = {}
    for a in store.answers():
        out.setdefault(a["candidate_id"], {}).setdefault(a["model"], []).append(a["probabilities"])
    return out


def scores(store: LabelStore, score: str, ids: list[int], seed: int = 0) -> np.ndarray:
    """The acquisition score of each candidate id (higher: label it sooner)."""
    if score not in SCORE_NAMES:
        raise StoreError(f"unknown score {score!r}: choose one of {', '.join(SCORE_NAMES)}")
    if score == "random":
        return acquisition.random_scores(len(ids), seed)
    found = answers_by_candidate(store)
    b0, b2 = MODEL_NAMES["b0"], MODEL_NAMES["b2"]
    missing = [i for i in ids if b0 not in found.get(i, {}) or b2 not in found.get(i, {})]
    if missing:
        raise StoreError(f"{len(missing)} queued galaxies have no B0 and B2 answers (first: {missing[0]})")
    p0 = np.array([found[i][b0][-1] for i in ids])
    p2 = np.array([found[i][b2][-1] for i in ids])
    if score == "disagreement":
        return acquisition.disagreement(p0, p2)
    if score == "bald":
        passes = [found[i].get(MC_MODEL, []) for i in ids]
        if not ids:
            return np.zeros(0)
        n = min(len(p) for p in passes)
        if n < 2:
            raise StoreError("BALD needs MC-dropout passes: queue the images with --mc-passes N")
        return acquisition.bald(np.array([p[-n:] for p in passes]).transpose(1, 0, 2))
    mean = (p0 + p2) / 2
    return acquisition.entropy(mean) if score == "entropy" else acquisition.margin(mean)


def ranked(store: LabelStore, score: str = "entropy", source: str | None = None,
           exclude: set | None = None, seed: int = 0) -> list[tuple[int, float]]:
    """(candidate id, score) of the unlabelled candidates, best to label first."""
    ids = [i for i in store.unlabelled(source) if i not in (exclude or set())]
    if not ids:
        return []
    s = scores(store, score, ids, seed)
    return [(ids[k], float(s[k])) for k in acquisition.rank(s)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labelling.queue", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="classify images and queue them for review")
    a.add_argument("--store", required=True, help="SQLite file or SQLAlchemy URL")
    a.add_argument("--input", required=True, help="folder of images, Galaxy10 HDF5 file, table of sky positions, "
                                                  "or a make classify / make predict catalogue (with --images)")
    a.add_argument("--images", default=None, help="with a catalogue input: the folder, HDF5 file or positions "
                                                  "table it was made from")
    a.add_argument("--top", type=int, default=1000,
                   help="with a catalogue input: queue its N least certain rows (default 1000)")
    a.add_argument("--source", default=None, help="name of this batch (default: the input's name)")
    a.add_argument("--run", default=None, help="checkpoints (default checkpoints/demo)")
    a.add_argument("--mc-passes", type=int, default=0, help="MC-dropout passes of B0, for BALD (e.g. 20)")
    add_cutout_arguments(a)
    ls = sub.add_parser("list", help="the queue, best to label first")
    ls.add_argument("--store", required=True)
    ls.add_argument("--score", default="entropy", choices=SCORE_NAMES)
    ls.add_argument("--source", default=None)
    ls.add_argument("--k", type=int, default=20)
    args = ap.parse_args(argv)
    try:
        store = LabelStore(args.store)
        if args.command == "add":
            from galaxy_morph.predictor import ENSEMBLE, Predictor
            from prediction.ray_predict import default_run

            if not 0 <= args.mc_passes <= 64:
                raise StoreError("--mc-passes must be 0..64")
            if args.top < 1:
                raise StoreError("--top must be 1 or more")
            columns = {"ra_col": args.ra_col, "dec_col": args.dec_col, "id_col": args.id_col}
            fetcher = fetcher_from_args(args) if table_format(args.images or args.input) else None
            items, refused, positions = read_inputs(args.input, args.images, args.top, fetcher, columns)
            clf = Predictor.from_run(Path(args.run) if args.run else default_run(), ENSEMBLE, device="cpu")
            # the images' name: a catalogue of them queues the same galaxies, not copies
            source = args.source or Path(args.images or args.input).name
            result = add_images(store, items, source, clf, args.mc_passes, positions)
            for r in refused + result["refused"]:
                print(f"refused {r}", file=sys.stderr)
            print(f"queued {result['added']} galaxies; {store.counts()['candidates']} in {args.store}")
            return 0 if result["added"] else 1
        for cid, s in ranked(store, args.score, args.source)[:args.k]:
            print(f"{cid}\t{store.candidate(cid)['item_key']}\t{s:.4f}")
        return 0
    except (StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
