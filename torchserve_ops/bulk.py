"""Bulk classification of a catalogue against running TorchServe server(s), resumable.

    python -m torchserve_ops.bulk --input FOLDER_OR_H5 --out catalog.csv \
        [--model galaxy-ensemble] [--servers URL1,URL2] [--key-file K1 --key-file K2] \
        [--concurrency 8] [--rule seed]
    make classify INPUT=samples/galaxy10_decals OUT=catalog.csv [MODEL=galaxy-b0] [SERVERS=...]

Inputs are streamed: a folder is walked lazily (JPEG/PNG files, id = path relative to the folder),
an HDF5 file of the Galaxy10 schema is read row by row (id = row index, each row sent as PNG).
At most `2 x concurrency` inputs are held at any time, so memory stays flat however long the
catalogue is. Each answer is written as one CSV row and flushed at once:

    id, label, class_name, confidence, error, <one column per class: its probability, headed by
    the class name>, model, version
    (+ source, rule for the ensemble workflow)

A table of sky positions (.csv, .fits, .vot, .ecsv with ra/dec columns, an `id` column kept when
present, else id = row index) gets each cutout from the Legacy Surveys cutout service through
survey.cutouts (disk cache, bounded requests in flight, retries with backoff; --cutout-url,
--layer, --pixscale, --size, --ra-col, --dec-col, --id-col); a position outside the footprint or a
failed download is a row with the reason in `error`. Folders may hold g, r, z FITS cutouts too.
--out catalog.fits / .vot / .ecsv: rows go to catalog.fits.csv as above, and when the run completes
it is converted to an astropy table with units and descriptions (survey.catalog, which is
also a command of its own).

Resume: running the same command again skips every id already in the CSV (only the id column is
read), repairs a last line cut short by a kill, and appends the rest: no row is duplicated or
lost. An input the server refuses (HTTP 4xx: not an image, truncated, too large) gets a row with
the server's message in `error`; 5xx answers, 429 and connection errors are retried with
exponential backoff (on another server when there are several). When retries run out the run
stops submitting, writes what it has, and exits with status 3: re-run to resume.

Several servers share the load (least in-flight requests first). Tokens (TorchServe's token
authorisation is on by default):
  --key-file PATH   TorchServe's key_file.json, re-read when the server refuses the key (keys
                    change at every server start and expire). Give it once for all servers or
                    once per server, in the order of --servers. Default: $TS_KEY_FILE, else
                    ./key_file.json, else the repository root's (where `make serve` writes it).
  --management-url  where to ask for a fresh key when the key file still holds an expired one
                    (default: the local server's, from TS_MANAGEMENT_PORT; none for --servers).
  --token KEY       a fixed inference key, once or once per server, for a remote server whose key
                    file is not on this machine; or env GALAXY_TS_TOKENS="key1,key2".
--rule picks the ensemble rule of the workflow (sent as the X-Ensemble-Rule header).
Exit status: 0 done, 1 bad arguments / unreachable servers, 3 stopped early (re-run to resume).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterable

from survey.catalog import convert, is_table_output, output_format, positions_for, working_csv
from survey.cutouts import add_cutout_arguments, fetcher_from_args
from survey.inputs import InputError, Item, encode_png, open_input
from survey.rows import CatalogError, CatalogWriter, header_for, one_line, read_done_ids, row_for
from torchserve_ops.pool import (BulkError, Endpoint, FatalServerError, Pool, Replica, RetryPolicy, Stats,
                                 TransientError, classify_one, make_pool, one_error)
from torchserve_ops.client import (AuthError, ServerError, ServerUnavailable, TorchServeError, locate_key_file, server_settings)

# ---------------------------------------------------------------------------------------------
# The run


PROBE_SIZE = 64


def probe_image() -> bytes:
    """A small valid PNG (a smooth blob) used to check servers, token and model before the run."""
    import numpy as np

    y, x = np.mgrid[:PROBE_SIZE, :PROBE_SIZE]
    r = np.hypot(x - PROBE_SIZE / 2, y - PROBE_SIZE / 2)
    img = np.clip(255 * np.exp(-(r / 12.0) ** 2), 0, 255).astype(np.uint8)
    return encode_png(np.stack([img] * 3, -1))


def probe(server: Replica, endpoint: Endpoint, data: bytes, policy: RetryPolicy) -> dict:
    """Send the probe image, riding out a short outage; BulkError if the server never answers."""
    def attempt():
        try:
            return endpoint.send(server, data)
        except ServerUnavailable as e:
            raise TransientError(one_line(str(e))) from None

    try:
        return policy.retrying(retries=2)(attempt)
    except TransientError as e:
        raise BulkError(f"no TorchServe answering at {server.url} ({e}): start it with `make serve` "
                        f"or check --servers") from None


def resolve_endpoint(pool: Pool, model: str, rule: str | None, policy: RetryPolicy) -> tuple[Endpoint, dict]:
    """Find whether `model` is a model or a workflow, check every server and its token, and read
    the class names from a probe answer. Raise BulkError with the reason otherwise."""
    candidates = [Endpoint(model), Endpoint(model, workflow=True, rule=rule)]
    data = probe_image()
    chosen, answer = None, None
    for server in pool.servers:
        problem = ""
        for ep in ([chosen] if chosen else candidates):
            try:
                got = probe(server, ep, data, policy)
            except AuthError as e:
                raise BulkError(f"{server.url} refused the token ({one_error(e)}): pass --key-file "
                                f"(TorchServe's key_file.json) or --token for this server") from None
            except ServerError as e:
                problem = one_error(e)
                if e.status == 404:
                    problem = f"no model or workflow named {model!r} ({problem})"
                    continue
                break
            except TorchServeError as e:
                problem = one_line(str(e))
                break
            if isinstance(got, dict) and "label" in got:
                chosen, answer, problem = ep, got, ""
                break
            problem = one_line(f"unexpected answer: {str(got)[:200]}")
        if problem:
            raise BulkError(f"{server.url} cannot classify with {model!r}: {problem}")
    if isinstance(answer.get("probabilities"), dict):
        class_names = list(answer["probabilities"])
    else:
        from galaxy_morph.specs import GALAXY10_CLASSES

        class_names = list(GALAXY10_CLASSES)
    return chosen, {"class_names": class_names, "probe": answer}


def classify(items: Iterable[Item], out: Path, pool: Pool, endpoint: Endpoint, class_names: list[str],
             concurrency: int = 8, policy: RetryPolicy | None = None, progress=None,
             stats: Stats | None = None, done: set | None = None, window: int | None = None) -> Stats:
    """Send every item, write one row per answer as it completes; return the Stats.

    `window` (default 2 x concurrency) bounds the inputs held at once: the source iterator is
    pulled only when a slot frees up.
    """
    policy = policy or RetryPolicy()
    stats = stats or Stats()
    window = window or 2 * concurrency
    header = header_for(class_names, endpoint.workflow)
    out = Path(out)
    if done is None:
        done, existing = read_done_ids(out, header)
    else:
        existing = header if out.exists() and out.stat().st_size else None
    writer = CatalogWriter(out, header, write_header=existing is None)
    stop = threading.Event()

    def write_row(item_id, answer, error):
        writer.write(row_for(item_id, answer, error, header, class_names))
        stats.count("written")
        stats.count("ok" if answer is not None else "errors")
        if progress is not None:
            progress.update(1)
            progress.set_postfix(errors=stats.errors, retries=stats.retries, refresh=False)

    def work(item: Item):
        if stop.is_set():
            raise TransientError("run stopping")
        try:
            data = item.load()
        except OSError as e:
            return None, one_line(f"cannot read input: {e}")
        return classify_one(pool, endpoint, data, policy, stats)

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="classify") as ex:
            try:
                run_window(ex, work, iter(items), done, window, stats, stop,
                           lambda item_id, answer, error: write_row(item_id, answer, error))
            except BaseException:  # Ctrl-C: queued inputs bail out, running ones finish unwritten
                stop.set()
                raise
    finally:
        writer.close()
    return stats


def run_window(ex, work, source, done: set, window: int, stats: Stats, stop: threading.Event, emit) -> None:
    """Keep at most `window` inputs submitted; emit each result in completion order."""
    pending = {}
    exhausted = False
    while True:
        while not exhausted and not stop.is_set() and len(pending) < window:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            if item.id in done:
                stats.count("skipped")
                continue
            done.add(item.id)  # never submitted twice, even if the source repeats an id
            pending[ex.submit(work, item)] = item.id
            stats.max_pending = max(stats.max_pending, len(pending))
        if not pending:
            return
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            item_id = pending.pop(fut)
            try:
                answer, error = fut.result()
            except (TransientError, FatalServerError) as e:
                done.discard(item_id)  # not written: a re-run will send it again
                stats.count("unfinished")
                if not stop.is_set():
                    stats.stopped = str(e)
                    stop.set()
                continue
            emit(item_id, answer, error)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m torchserve_ops.bulk",
                                description="Classify a folder of images or an HDF5 file into a CSV "
                                            "catalogue with running TorchServe server(s); re-run to resume.")
    p.add_argument("--input", required=True, help="folder of JPEG/PNG/FITS images, a Galaxy10-schema HDF5 "
                   "file, or a table of sky positions (.csv, .fits, .vot, .ecsv)")
    p.add_argument("--out", required=True, help="CSV catalogue to write (appended to when resuming), or "
                   ".fits / .vot / .ecsv: written from OUT.csv when the run completes")
    p.add_argument("--model", default="galaxy-ensemble",
                   help="model or workflow name (galaxy-b0, galaxy-b2, galaxy-ensemble)")
    p.add_argument("--servers", default=None,
                   help="comma-separated inference URLs (default http://$TS_HOST:$TS_INFERENCE_PORT)")
    p.add_argument("--key-file", action="append", default=[],
                   help="TorchServe key_file.json; once, or once per server (default ./key_file.json)")
    p.add_argument("--management-url", action="append", default=[],
                   help="management URL for token renewal; once, or once per server (default: "
                        "$TS_MANAGEMENT_PORT for the local server, none for --servers)")
    p.add_argument("--token", action="append", default=[],
                   help="fixed inference key; once, or once per server (or env GALAXY_TS_TOKENS=k1,k2)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--rule", default=None, help="ensemble rule for the workflow: seed, mean, weighted")
    p.add_argument("--retries", type=int, default=6, help="retries per input on 5xx/connection errors")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (doubles)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cutout_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.concurrency < 1:
            raise BulkError("--concurrency must be at least 1")
        local = server_settings()
        local_inference, local_management = local["inference_url"], local["management_url"]
        servers = [s.strip() for s in (args.servers or local_inference).split(",") if s.strip()]
        management_urls = args.management_url or ([] if args.servers else [local_management])
        tokens = args.token or [t for t in os.environ.get("GALAXY_TS_TOKENS", "").split(",") if t]
        key_files = args.key_file
        if not key_files and not tokens and locate_key_file().is_file():
            key_files = [str(locate_key_file())]
        out = table_out = Path(args.out)
        if is_table_output(table_out):  # FITS / VOTable / ECSV: CSV row by row, converted at the end
            out = working_csv(table_out)
        if out.is_dir():
            raise BulkError(f"--out {out} is a folder: give a CSV file path")
        if out.parent and not out.parent.exists():
            raise BulkError(f"folder for --out does not exist: {out.parent}")
        # Validate the input before contacting any server.
        try:
            fetcher = fetcher_from_args(args)
        except ValueError as e:
            raise BulkError(str(e)) from None
        columns = {"ra_col": args.ra_col, "dec_col": args.dec_col, "id_col": args.id_col}
        open_input(args.input, fetcher=fetcher, columns=columns)
        pool = make_pool(servers, key_files, tokens, args.timeout, management_urls)
        policy = RetryPolicy(retries=args.retries, backoff=args.backoff, timeout=args.timeout)
        endpoint, info = resolve_endpoint(pool, args.model, args.rule, policy)
        class_names = info["class_names"]
        header = header_for(class_names, endpoint.workflow)
        done, _ = read_done_ids(out, header)
        items, total = open_input(args.input, skip=done, fetcher=fetcher, columns=columns)
    except (BulkError, InputError, CatalogError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from tqdm import tqdm

    already = len(done)
    bar = tqdm(total=max(0, total - already), unit="img", desc=f"classify {args.model}",
               disable=args.no_progress, file=sys.stderr)
    stats = Stats(skipped=0)
    try:
        classify(items, out, pool, endpoint, class_names, concurrency=args.concurrency, policy=policy,
                 progress=bar, stats=stats, done=done)
    except (BulkError, CatalogError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: {stats.written} rows written to {out}; re-run the same command to resume",
              file=sys.stderr)
        return 3
    bar.close()
    summary = (f"{out}: {stats.written} rows written ({stats.ok} classified, {stats.errors} refused inputs), "
               f"{already} already there, {stats.retries} retries, servers: "
               + ", ".join(f"{s.url}={s.requests}" for s in pool.servers))
    print(summary, file=sys.stderr)
    if stats.stopped:
        print(f"stopped early: {stats.stopped}\n{stats.unfinished} inputs not classified: "
              f"re-run the same command to resume", file=sys.stderr)
        return 3
    if table_out != out:
        try:
            convert(out, table_out, positions_for(args.input, **columns))
        except (ValueError, OSError) as e:
            print(f"error: writing {table_out}: {e}", file=sys.stderr)
            return 1
        print(f"{table_out}: {output_format(table_out)} table written from {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
