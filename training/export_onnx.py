"""Export checkpoints to ONNX, checked against torch (galaxy_morph.runtimes.ensure_onnx).

    python -m training.export_onnx RUN/b0 RUN/b2 --samples samples/galaxy10_decals [--force]

Writes RUN/M/model.onnx and model.onnx.json (the weights it came from, the check's figures), or
refuses with exit 1 when the export answers otherwise than torch on the check images. The archive
builder runs it for every member it serves on ONNX Runtime; a current export is kept.
"""
from __future__ import annotations

import argparse
import sys

from galaxy_morph.run_files import ONNX_FILE
from galaxy_morph.runtimes import ensure_onnx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders (RUN/M with model.pt and meta.json)")
    ap.add_argument("--samples", default=None, help="a folder of images to check the export on (default: random pixels)")
    ap.add_argument("--force", action="store_true", help="export again even when model.onnx is current")
    args = ap.parse_args(argv)
    for ckpt in args.checkpoints:
        try:
            r = ensure_onnx(ckpt, args.samples, args.force)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{ckpt}/{ONNX_FILE}: checked on {r['n']} images, max probability difference "
              f"{r['max_prob_diff']:.2g}, {r['labels_differ']} labels differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
