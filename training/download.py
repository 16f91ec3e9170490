"""Download Galaxy10_DECals.h5 (2.54 GB) with a progress bar, resume and SHA256 verification.

    python -m training.download --out data/Galaxy10_DECals.h5 [--url URL] [--sha256 HEX]

Bytes go to OUT.part; an interrupted download resumes from there with an HTTP Range request (a server
that ignores Range restarts it from zero). Only a file with the expected SHA256 is renamed to OUT: on a
mismatch the partial file is removed, nothing is left under OUT, and the exit code is 1. An OUT that
already verifies is not downloaded again.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from galaxy_morph.data import file_sha256

URL = "https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5"
SHA256 = "19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571"
CHUNK = 1 << 20
RETRIES = 5


class DownloadError(Exception):
    pass


def fetch(url: str, part: Path, timeout: float = 60) -> None:
    """Append the rest of `url` to `part`, starting from its current size."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "galaxy-morph-download"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the .part is already complete
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    with resp:
        start = 0
        if have and resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else 0
            if start != have:
                raise DownloadError(f"{url}: asked for bytes from {have}, server sent from {start}")
        elif have:
            print("server ignored the Range request: restarting from zero", file=sys.stderr)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name.removesuffix(".part"), file=sys.stderr) as bar:
            while block := resp.read(CHUNK):
                f.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"{url}: connection closed at {part.stat().st_size} of {total} bytes")


def download(url: str, out: Path, sha256: str, retries: int = RETRIES) -> Path:
    out = Path(out)
    sha256 = sha256.lower()
    if out.is_file():
        if file_sha256(out) == sha256:
            print(f"{out} is already here and verified (sha256 {sha256[:12]}...)", file=sys.stderr)
            return out
        print(f"{out} exists but its sha256 is wrong: downloading it again", file=sys.stderr)
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            fetch(url, part)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError, DownloadError, OSError) as e:
            if attempt == retries or isinstance(e, DownloadError) and "HTTP 4" in str(e):
                raise DownloadError(f"download failed: {e}") from None
            print(f"{e}: retrying ({attempt}/{retries - 1}), resuming from {part.stat().st_size if part.exists() else 0} bytes",
                  file=sys.stderr)
            time.sleep(min(2 ** attempt, 30))
    got = file_sha256(part)
    if got != sha256:
        part.unlink()
        raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                            f"the download was removed, nothing was written to {out}")
    os.replace(part, out)
    print(f"{out}: verified (sha256 {sha256[:12]}...)", file=sys.stderr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/Galaxy10_DECals.h5")
    p.add_argument("--url", default=URL)
    p.add_argument("--sha256", default=SHA256, help="expected SHA256 (hex)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        print("error: --sha256 must be 64 hex digits", file=sys.stderr)
        return 2
    try:
        download(args.url, Path(args.out), args.sha256)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
