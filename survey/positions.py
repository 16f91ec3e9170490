"""Tables of sky positions: csv, ecsv, FITS and VOTable, with ra/dec in degrees or sexagesimal.

    from survey.positions import read_positions
    positions = read_positions("positions.ecsv", ra_col="RAJ2000")   # [Position(id, ra, dec, problem)]

A row whose position cannot be used is kept with the reason in `problem` (the catalogue writes it
as that row's error); a table that cannot be used at all raises PositionsError.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

TABLE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
                 ".fts": "fits", ".vot": "votable", ".votable": "votable", ".xml": "votable"}
RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "ra_j2000", "alpha_j2000")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "de_icrs", "dec_icrs", "dec_j2000", "delta_j2000")
ID_NAMES = ("id",)


class PositionsError(ValueError):
    """A positions table that cannot be used as a whole (unreadable, no ra/dec column, ids repeat)."""


@dataclass
class Position:
    id: str
    ra: float | None  # degrees, ICRS
    dec: float | None
    problem: str = ""  # why this row has no usable position (the row is kept, with this as error)


def parse_angle(value, kind: str, unit=None) -> float | None:
    """One ra or dec value -> degrees. Numbers are degrees (or `unit`); strings may be sexagesimal
    ('12:19:23.1' is hours for ra, '+05:47:51' degrees for dec; '12h19m23s', '5d47m51s' too).
    Returns None for an empty value; raises ValueError for one that is not an angle."""
    import numpy as np
    from astropy import units as u
    from astropy.coordinates import Angle

    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        s = value.strip()
        if not s or s.lower() in ("nan", "--", "null", "none"):
            return None
        try:
            deg = float(s)
        except ValueError:
            sexagesimal = any(c in s for c in ":hdms ")
            if not sexagesimal:
                raise ValueError(f"{kind} {s!r} is not an angle") from None
            default_unit = u.hourangle if kind == "ra" and "d" not in s else u.deg
            try:
                deg = Angle(s, unit=default_unit).to_value(u.deg)
            except Exception:
                raise ValueError(f"{kind} {s!r} is not an angle") from None
    else:
        deg = float(value)
        if unit is not None and unit != u.deg:
            deg = (deg * unit).to_value(u.deg)
    if not math.isfinite(deg):
        return None
    if kind == "ra":
        deg %= 360.0
    return deg


def _find_column(names: list[str], wanted: str | None, candidates, what: str, path) -> str | None:
    lower = {n.lower(): n for n in names}
    if wanted:
        if wanted in names:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise PositionsError(f"{path}: no column {wanted!r} for {what} (columns: {', '.join(names)})")
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def table_format(path: str | os.PathLike) -> str | None:
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return TABLE_FORMATS.get(Path(name).suffix)


def read_positions(path: str | os.PathLike, ra_col: str | None = None, dec_col: str | None = None,
                   id_col: str | None = None) -> list[Position]:
    """Rows of a csv / fits / vot / ecsv table -> Positions (id, ra and dec in degrees).

    Columns are found by name, case-insensitively (ra, RA, RAJ2000, ...; dec, DEC, DEJ2000, ...),
    or as given. Ids come from the `id` column (or `id_col`) when there is one, else the row index
    from 0. Columns with units (rad, hourangle, arcsec) are converted to degrees. A row whose
    position is empty or not an angle keeps its id and gets a `problem`; a table that cannot be
    read, has no ra/dec column or repeats an id raises PositionsError.
    """
    import warnings

    from astropy.table import Table

    path = Path(path)
    fmt = table_format(path)
    if fmt is None:
        raise PositionsError(f"{path}: not a positions table (use .csv, .ecsv, .fits or .vot)")
    if not path.is_file():
        raise PositionsError(f"positions table not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = Table.read(path, format=fmt)
    except Exception as e:
        raise PositionsError(f"{path}: cannot read it as a {fmt} table ({' '.join(str(e).split())[:200]})") from None
    names = list(table.colnames)
    ra_name = _find_column(names, ra_col, RA_NAMES, "ra", path)
    dec_name = _find_column(names, dec_col, DEC_NAMES, "dec", path)
    if ra_name is None or dec_name is None:
        raise PositionsError(f"{path}: no ra/dec columns found (columns: {', '.join(names) or 'none'}); "
                             f"name them with --ra-col and --dec-col")
    id_name = _find_column(names, id_col, ID_NAMES, "id", path)
    ras, decs = table[ra_name], table[dec_name]
    ids = table[id_name] if id_name else None
    out: list[Position] = []
    seen: dict[str, int] = {}
    for i in range(len(table)):
        pid = str(i) if ids is None else _id_text(ids, i)
        if not pid:
            pid = str(i)
        if pid in seen:
            raise PositionsError(f"{path}: id {pid!r} appears twice (rows {seen[pid]} and {i}): ids must "
                                 f"be unique; choose another --id-col")
        seen[pid] = i
        try:
            ra = parse_angle(_value(ras, i), "ra", ras.unit)
            dec = parse_angle(_value(decs, i), "dec", decs.unit)
            problem = ""
            if ra is None or dec is None:
                problem = "no position: ra or dec is empty"
            elif not -90.0 <= dec <= 90.0:
                problem = f"dec {dec:g} is outside -90..90 degrees"
        except Exception as e:
            ra = dec = None
            problem = f"bad position: {e}"
        out.append(Position(pid, ra, dec, problem))
    return out


def _value(col, i):
    import numpy as np

    if getattr(col, "mask", None) is not None and np.ma.getmaskarray(col)[i]:
        return None
    return col[i]


def _id_text(col, i) -> str:
    v = _value(col, i)
    if v is None:
        return ""
    if isinstance(v, (bytes,)):
        v = v.decode("utf-8", "replace")
    return str(v).strip()

