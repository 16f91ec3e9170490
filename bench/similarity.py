"""Exact k-nearest search by numpy against faiss's IndexFlatIP, side by side, at catalogue sizes.

    python -m bench.similarity [--sizes 1000,10000,100000] [--dim 2688] [--queries 1,64]

Each cell is the median of several timed searches (k = 5, unit vectors, float32) through
prediction.similarity.SimilarityIndex, once with the numpy path and once with faiss; the ratio
column is numpy's time over faiss's (above 1: faiss is faster). The crossover sets
prediction.similarity.FAISS_MIN_ROWS.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from prediction import similarity


def timed(fn, repeats: int = 5) -> float:
    fn()  # builds the search structure once, outside the timing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.similarity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,30000,100000")
    ap.add_argument("--dim", type=int, default=1280 + 1408)
    ap.add_argument("--queries", default="1,64")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| galaxies | queries | numpy (ms) | faiss (ms) | numpy / faiss |")
    print("|---|---|---|---|---|")
    for n in map(int, args.sizes.split(",")):
        x = rng.normal(size=(n, args.dim)).astype(np.float32)
        for m in map(int, args.queries.split(",")):
            q = similarity.unit(rng.normal(size=(m, args.dim)))
            cells = []
            for threshold in (n + 1, 0):  # numpy, then faiss
                similarity.FAISS_MIN_ROWS = threshold
                index = similarity.SimilarityIndex({"b0": x}, np.arange(n).astype(str), np.zeros(n, dtype=str))
                cells.append(timed(lambda: index._similarities("b0", q, 5)))
            print(f"| {n} | {m} | {cells[0] * 1e3:.2f} | {cells[1] * 1e3:.2f} | {cells[0] / cells[1]:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
