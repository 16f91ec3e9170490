"""The catalogue a classification run writes, one CSV row per input, flushed as it is answered:

    id, label, class_name, confidence, error, <one column per class: its probability>, model,
    version, in_distribution (true/false), ood_score (+ source, rule for the ensemble)

`read_done_ids` lets a re-run skip what is there (and cuts a last line left half written by a
kill); `CatalogWriter` appends under an exclusive lock, so two runs cannot interleave. The HTTP
bulk path and the Ray path write the same rows (`header_for`, `row_for`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

BASE_COLUMNS = ["id", "label", "class_name", "confidence", "error"]
# model, version and the out-of-distribution verdict; source and rule for the ensemble
TRAILING = ["model", "version", "in_distribution", "ood_score", "source", "rule"]


class CatalogError(ValueError):
    """A catalogue file that cannot be used or converted; the message says why."""


def read_done_ids(path: Path, expected_header: list[str] | None = None) -> tuple[set, list[str] | None]:
    """Ids already in the CSV; a last line cut short by a kill is removed from the file.

    Returns (ids, header). Only the first column of each row is kept in memory.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set(), None
    with open(path, "rb") as f:  # never cut the last line of a run that is still writing
        _lock(f, path)
        repair_tail(path)
    ids: set = set()
    header = None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if header is None:
                header = row
                if not header or header[0] != "id":
                    raise CatalogError(f"{path} exists and is not a catalogue (first column is not 'id'): "
                                    f"choose another --out")
                if expected_header is not None and header != expected_header:
                    raise CatalogError(f"{path} was written with other columns ({len(header)}: "
                                    f"{', '.join(header[5:8])}...): use another --out for this model")
                continue
            if row and len(row) == len(header):
                ids.add(row[0])
    return ids, header


def repair_tail(path: Path) -> int:
    """Cut the file back to its last newline (a row half written when the run was killed).

    Returns the number of bytes removed.
    """
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos, block = size, 4096
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            data = f.read(pos - start)
            k = data.rfind(b"\n")
            if k >= 0:
                keep = start + k + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


def _lock(f, path: Path) -> None:
    """An exclusive lock on the catalogue for as long as `f` is open: one run per file."""
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise CatalogError(f"another run is writing {path}: wait for it or choose another --out") from None


class CatalogWriter:
    """Appends rows and flushes each one; holds an exclusive lock so two runs cannot interleave."""

    def __init__(self, path: Path, header: list[str], write_header: bool):
        self.path = Path(path)
        self.header = header
        self.f = open(self.path, "a", newline="", encoding="utf-8")
        try:
            _lock(self.f, self.path)
        except CatalogError:
            self.f.close()
            raise
        if write_header:
            self.write(header)

    def write(self, values: list) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self.f.write(buf.getvalue())  # one write per row: a kill leaves at most one partial line
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def header_for(class_names: list[str], workflow: bool) -> list[str]:
    return BASE_COLUMNS + list(class_names) + TRAILING[:6 if workflow else 4]


def row_for(item_id: str, answer: dict | None, error: str, header: list[str], class_names) -> list:
    if answer is None:
        return [item_id, "", "", "", one_line(error)] + [""] * (len(header) - 5)
    probs = answer.get("probabilities") or {}
    if isinstance(probs, list):
        probs = dict(zip(class_names, probs))
    row = [item_id, answer.get("label", ""), answer.get("class_name", ""),
           _fmt(answer.get("confidence")), ""]
    row += [_fmt(probs.get(c)) for c in class_names]
    ood = answer.get("in_distribution")
    row += [answer.get("model", ""), answer.get("version", ""), "" if ood is None else str(bool(ood)).lower(),
            _fmt(answer.get("ood_score"))]
    if len(header) > len(row):
        row += [answer.get("source", ""), answer.get("rule", "")]
    return row


def _fmt(x) -> str:
    return "" if x is None else f"{float(x):.6g}"


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]
