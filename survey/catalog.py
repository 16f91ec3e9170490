"""Catalogue CSV (as the bulk classifier writes it) -> FITS, VOTable or ECSV tables for TOPCAT/astropy.

    python -m survey.catalog catalog.csv catalog.fits [--positions positions.csv]
    python -m survey.catalog catalog.csv catalog.vot  --positions data/survey.h5

The bulk classifier writes CSV row by row (so that a killed run resumes) and, when --out names a
.fits / .vot / .ecsv file, converts at the end with this module; run it by hand to convert again or
to add positions. Columns, each with a description (and a unit and UCD where there is one):

    id          the input's id (positions table id column or row index, image path, HDF5 row)
    ra, dec     degrees, ICRS: from --positions (a positions table, or an HDF5 file with ra/dec)
    label       predicted class index (masked for rows with an error)
    class_name  its name
    confidence  probability of the predicted class (the ensemble rule's confidence)
    p_<class>   probability of each class, e.g. p_barred_spiral (the class names are in the
                descriptions and in the table metadata CLASS0..CLASSn)
    model, version, source, rule (ensemble workflow only), error

Missing numbers are masked (FITS: NaN, or TNULL for label; VOTable: empty cells). FITS columns also
carry TCOMMn / TUCDn header cards, which TOPCAT shows. Exit status 0, or 1 with a message.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from galaxy_morph.files import atomic_path
from survey.positions import TABLE_FORMATS as FORMATS
from survey.rows import BASE_COLUMNS as BASE, CatalogError

TABLE_SUFFIXES = tuple(s for s in FORMATS if s != ".csv")


def output_format(path: str | os.PathLike) -> str | None:
    """astropy format name for an output path by its extension (None when it is not a table)."""
    return FORMATS.get(Path(str(path).lower()).suffix)


def is_table_output(path: str | os.PathLike) -> bool:
    return output_format(path) not in (None, "ascii.csv")


def working_csv(out: str | os.PathLike) -> Path:
    """The CSV the bulk classifier appends to when --out is a table: catalog.fits -> catalog.fits.csv."""
    return Path(str(out) + ".csv")


def slug(name: str) -> str:
    """A column-name-safe form of a class name: 'Edge-on with Bulge' -> 'edge_on_with_bulge'."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class"


def read_catalog_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalogue CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:5] != BASE:
            raise CatalogError(f"{path} is not a catalogue written by torchserve_ops.bulk "
                               f"(its columns should start with {', '.join(BASE)})")
        rows = [row for row in reader if len(row) == len(header)]
    return header, rows


def class_names_of(header: list[str]) -> list[str]:
    end = header.index("model") if "model" in header else len(header)
    return header[5:end]


def to_table(header: list[str], rows: list[list[str]], positions: dict | None = None,
             source: str = ""):
    """The catalogue rows as an astropy Table with units, descriptions and UCDs."""
    import numpy as np
    from astropy import units as u
    from astropy.table import Column, MaskedColumn, Table

    classes = class_names_of(header)
    col = {name: i for i, name in enumerate(header)}
    if positions:  # rows in the order of the input table, not the order the answers came in
        order = {pid: k for k, pid in enumerate(positions)}
        rows = sorted(rows, key=lambda r: order.get(r[0], len(order)))

    def text(name):
        i = col.get(name)
        return [r[i] if i is not None else "" for r in rows]

    def number(name_or_index, dtype):
        i = col[name_or_index] if isinstance(name_or_index, str) else name_or_index
        values = [r[i] for r in rows]
        mask = np.array([v.strip() == "" for v in values], bool)
        data = np.array([float(v) if v.strip() else 0.0 for v in values], np.float64)
        if np.issubdtype(np.dtype(dtype), np.integer):
            data = data.astype(dtype)
        else:
            data = np.where(mask, np.nan, data).astype(dtype)
        return MaskedColumn(data, mask=mask, dtype=dtype)

    def strcol(values):
        return Column(np.array(values, dtype=str) if values else np.array([], dtype="U1"))

    t = Table()

    def add(name, column, description, unit=None, ucd=None):
        column.name = name
        column.description = description
        if unit is not None:
            column.unit = unit
        if ucd:
            column.meta["ucd"] = ucd
        t.add_column(column)

    ids = text("id")
    add("id", strcol(ids), "Input id (positions id or row index, image path, HDF5 row)",
        ucd="meta.id;meta.main")
    if positions is not None:
        pairs = [positions.get(i) or (None, None) for i in ids]
        ra = np.array([np.nan if r is None else r for r, _ in pairs], np.float64)
        dec = np.array([np.nan if d is None else d for _, d in pairs], np.float64)
        add("ra", MaskedColumn(ra, mask=~np.isfinite(ra)), "Right ascension (ICRS) of the cutout centre",
            u.deg, "pos.eq.ra;meta.main")
        add("dec", MaskedColumn(dec, mask=~np.isfinite(dec)), "Declination (ICRS) of the cutout centre",
            u.deg, "pos.eq.dec;meta.main")
    add("label", number("label", np.int16), f"Predicted class index 0-{len(classes) - 1} (see class_name)",
        ucd="meta.code.class")
    add("class_name", strcol(text("class_name")), "Name of the predicted class", ucd="meta.code.class")
    add("confidence", number("confidence", np.float32),
        "Probability of the predicted class (ensemble: the rule's confidence)", ucd="stat.probability")
    used = set(t.colnames)
    for k, name in enumerate(classes):
        cname = "p_" + slug(name)
        while cname in used:
            cname += "_"
        used.add(cname)
        add(cname, number(5 + k, np.float32), f"Probability of class {k}: {name}", ucd="stat.probability")
    add("model", strcol(text("model")), "TorchServe model or workflow that answered")
    add("version", strcol(text("version")), "Model version")
    if "in_distribution" in col:
        flags = text("in_distribution")
        add("in_distribution", MaskedColumn(np.array([v == "true" for v in flags]), mask=[v == "" for v in flags]),
            "False: not a galaxy cutout like those the model was trained on (the answer means little)",
            ucd="meta.code.qual")
        add("ood_score", number("ood_score", np.float32),
            "Out-of-distribution score (Mahalanobis distance of the features; above the model card's "
            "threshold: flagged)", ucd="stat.value")
    if "source" in col:
        add("source", strcol(text("source")), "Ensemble: which model's answer was used (both, b0, ...)")
        add("rule", strcol(text("rule")), "Ensemble rule (seed, mean, weighted)")
    add("error", strcol(text("error")), "Why this row has no prediction (empty when classified)",
        ucd="meta.code.error")
    for k, name in enumerate(classes):
        t.meta[f"CLASS{k}"] = name
    t.meta["ORIGIN"] = "galaxy_morph"
    t.meta["DATE"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if source:
        t.meta["SRCFILE"] = Path(source).name
    t.meta["description"] = ("Galaxy morphology classes (Galaxy10 DECaLS) predicted by galaxy_morph; "
                             "one row per input")
    return t


def write_table(table, out: str | os.PathLike) -> Path:
    """Write atomically in the format the extension names; FITS gets TCOMMn/TUCDn cards too."""
    import warnings

    out = Path(out)
    fmt = output_format(out)
    if fmt is None:
        raise CatalogError(f"{out}: unknown table format (use .fits, .vot, .ecsv or .csv)")
    if out.parent and not out.parent.exists():
        raise CatalogError(f"folder for {out} does not exist: {out.parent}")
    table = table.copy(copy_data=False)
    with atomic_path(out) as tmp:
        if fmt == "fits":
            description = table.meta.pop("description", "")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table.write(tmp, format="fits", overwrite=True)
            _fits_column_cards(str(tmp), table, description)
        else:
            table.write(tmp, format=fmt, overwrite=True)
    return out


def _fits_column_cards(path: str, table, description: str) -> None:
    from astropy.io import fits

    with fits.open(path, mode="update") as hdul:
        h = hdul[1].header
        h["EXTNAME"] = "CATALOG"
        if description:
            h.add_comment(description)
        for n, name in enumerate(table.colnames, start=1):
            c = table[name]
            if c.description:
                h.set(f"TCOMM{n}", c.description[:60], after=f"TFORM{n}")
            if c.meta.get("ucd"):
                h.set(f"TUCD{n}", c.meta["ucd"], after=f"TFORM{n}")


def positions_for(input_path: str | os.PathLike | None, ra_col=None, dec_col=None, id_col=None) -> dict | None:
    """id -> (ra, dec) degrees from a positions table or an HDF5 file with `ra`/`dec`; else None."""
    if not input_path:
        return None
    path = Path(input_path)
    from survey.positions import read_positions, table_format

    if table_format(path):
        return {p.id: (p.ra, p.dec) for p in read_positions(path, ra_col, dec_col, id_col)}
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf") and path.is_file():
        import h5py
        import numpy as np

        with h5py.File(path, "r") as f:
            if "ra" not in f or "dec" not in f:
                return None
            ra, dec = np.asarray(f["ra"], np.float64), np.asarray(f["dec"], np.float64)
        return {str(i): (float(r), float(d)) for i, (r, d) in enumerate(zip(ra, dec))}
    return None


def convert(csv_path: str | os.PathLike, out: str | os.PathLike, positions: dict | None = None) -> Path:
    header, rows = read_catalog_csv(csv_path)
    return write_table(to_table(header, rows, positions, source=str(csv_path)), out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m survey.catalog",
                                description="Convert a bulk-classifier CSV to a FITS, VOTable or ECSV "
                                            "table with units and column descriptions.")
    p.add_argument("csv", help="catalogue CSV written by torchserve_ops.bulk / make classify")
    p.add_argument("out", help="table to write: .fits, .vot (VOTable), .ecsv (or .csv)")
    p.add_argument("--positions", default=None,
                   help="the run's input, to add ra/dec: a positions table (csv/fits/vot/ecsv) or an "
                        "HDF5 file with ra and dec")
    p.add_argument("--ra-col", default=None)
    p.add_argument("--dec-col", default=None)
    p.add_argument("--id-col", default=None)
    args = p.parse_args(argv)
    try:
        if output_format(args.out) is None:
            raise CatalogError(f"{args.out}: unknown table format (use .fits, .vot, .ecsv or .csv)")
        positions = positions_for(args.positions, args.ra_col, args.dec_col, args.id_col)
        if args.positions and positions is None:
            raise CatalogError(f"{args.positions}: no positions in it (a table with ra/dec, or an HDF5 "
                               f"file with ra and dec datasets)")
        out = convert(args.csv, args.out, positions)
    except (CatalogError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    header, rows = read_catalog_csv(args.csv)
    print(f"{out}: {len(rows)} rows, {len(header) + (2 if positions else 0)} columns", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
