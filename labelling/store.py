"""The label store: galaxies to label, the models' answers for them, and the labels people give.

    from labelling.store import LabelStore
    store = LabelStore("labels.db")              # a path (SQLite) or any SQLAlchemy URL
    cid = store.add_candidate("decals", "J123456.78+012345.6", path="cutouts/J1234.jpg", ra=188.7, dec=1.4)
    store.add_answer(cid, "galaxy-b0", "1.0", probabilities, ood_score=0.1)   # 10 floats or {class: p}
    store.add_label(cid, "alice", "Barred Spiral", unsure=True)   # or a class index 0..9
    store.add_label(cid, "bob", not_a_galaxy=True)
    store.undo_last("bob")                                  # deletes bob's latest label and returns it
    store.latest_labels(), store.unlabelled("decals"), store.counts()

Every write is one committed transaction: a killed process loses nothing it was told was written.
Labels are append-only (a relabel is a new row; latest_labels reads the newest per galaxy), and
each names its labeller. On SQLite every connection runs in WAL mode with foreign keys on and waits
up to 10 s for a lock, and writes take the write lock at BEGIN (BEGIN IMMEDIATE), so two processes
writing at once queue rather than fail with "database is locked". On PostgreSQL (a URL such as
postgresql+psycopg://user:password@host/labels, driver psycopg 3) transactions run at its default
READ COMMITTED: two writers adding the same candidate at once both get its one id, two undos at once
undo two labels, and opening a store holds an advisory lock, so that two processes creating the
schema of an empty database queue.

A database is used only when it is a label store: its `meta` table names the app
"galaxy-morph-labels" and a schema version. An older version is migrated (MIGRATIONS); a newer
one, another application's database or a file that is not SQLite is refused with StoreError and
left untouched. An empty database gets the schema.
"""
from __future__ import annotations

import json
import math
import operator
import os
import sqlite3
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import (Boolean, Column, Float, ForeignKey, Integer, LargeBinary, MetaData, Table, Text,
                        UniqueConstraint, create_engine, delete, event, func, insert, inspect, select,
                        update)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError

from galaxy_morph.specs import GALAXY10_CLASSES

APP = "galaxy-morph-labels"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every non-empty SQLite database
SUM_TOL = 1e-3  # how far an answer's probabilities may sum from 1
OPEN_LOCK = 0x6761_6c61_7879  # the PostgreSQL advisory lock (a bigint, "galaxy") held while opening

METADATA = MetaData()
META = Table("meta", METADATA, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
CANDIDATES = Table(
    "candidates", METADATA,
    Column("id", Integer, primary_key=True),
    Column("source", Text, nullable=False),
    Column("item_key", Text, nullable=False),  # a file path, a catalogue row id: unique per source
    Column("image", LargeBinary),
    Column("path", Text),
    Column("ra", Float),
    Column("dec", Float),
    Column("added_at", Text, nullable=False),  # ISO 8601, UTC, like every *_at
    UniqueConstraint("source", "item_key"),
)
ANSWERS = Table(
    "answers", METADATA,
    Column("id", Integer, primary_key=True),
    Column("candidate_id", Integer, ForeignKey("candidates.id"), nullable=False, index=True),
    Column("model", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("probabilities", Text, nullable=False),  # JSON list in GALAXY10_CLASSES order
    Column("ood_score", Float),
    Column("created_at", Text, nullable=False),
)
LABELS = Table(
    "labels", METADATA,
    Column("id", Integer, primary_key=True),
    Column("candidate_id", Integer, ForeignKey("candidates.id"), nullable=False, index=True),
    Column("class_index", Integer),  # with class_name: NULL when not_a_galaxy
    Column("class_name", Text),
    Column("labeller", Text, nullable=False),
    Column("unsure", Boolean, nullable=False),
    Column("not_a_galaxy", Boolean, nullable=False),
    Column("created_at", Text, nullable=False),
    # "Latest" is the highest id; AUTOINCREMENT keeps SQLite from reusing an undone label's id
    # (PostgreSQL's sequence never reuses one).
    sqlite_autoincrement=True,
)

# MIGRATIONS[v](conn) brings a schema of version v to v + 1, inside the transaction that opens the
# store. Version 1 is the first, so there are none yet.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


class StoreError(ValueError):
    """A database that is not a label store, or a write that would put bad data in one."""


def _url(url_or_path) -> URL:
    if isinstance(url_or_path, str) and "://" in url_or_path:
        try:
            return make_url(url_or_path)
        except ArgumentError as e:
            raise StoreError(f"not a database URL: {url_or_path!r}") from e
    return URL.create("sqlite", database=os.fspath(url_or_path))


def _sqlite_file(url: URL) -> Path | None:
    """The file of an SQLite URL; None for other databases, in-memory SQLite and file: URIs."""
    db = url.database
    if url.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _set_wal(cursor) -> None:
    # Switching a database into WAL needs it to itself, and SQLite fails at once rather than wait as
    # busy_timeout waits for a lock: without the retry, two processes opening a new store at once
    # may fail with "database is locked". Once the file is in WAL (it stays so), this is a no-op.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _engine(url: URL, wal: bool) -> Engine:
    engine = create_engine(url)
    if url.get_backend_name() != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # sqlite3 leaves BEGIN to _begin (SQLAlchemy's own recipe)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if wal:
            _set_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # A deferred BEGIN that reads and then writes cannot wait for the lock once another writer
        # has committed since its read: it fails with "database is locked" at once. Writers take
        # the lock first instead, and wait for it up to busy_timeout.
        write = conn.get_execution_options().get("store_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _text(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _number(value, name: str, low: float = -math.inf, high: float = math.inf) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StoreError(f"{name} must be a number or None, got {value!r}") from None
    if not (math.isfinite(x) and low <= x <= high):
        raise StoreError(f"{name} must be finite and within [{low}, {high}], got {value!r}")
    return x


def _class(label) -> tuple[int, str]:
    """(index, name) of a Galaxy10 class given by either."""
    if isinstance(label, str):
        if label not in GALAXY10_CLASSES:
            raise StoreError(f"unknown class name {label!r}: not one of {list(GALAXY10_CLASSES)}")
        return GALAXY10_CLASSES.index(label), label
    try:
        if isinstance(label, bool):
            raise TypeError
        index = operator.index(label)  # an int or numpy integer, not a float
    except TypeError:
        raise StoreError(f"label must be a class index or class name, got {label!r}") from None
    if not 0 <= index < len(GALAXY10_CLASSES):
        raise StoreError(f"class index must be 0..{len(GALAXY10_CLASSES) - 1}, got {index}")
    return index, GALAXY10_CLASSES[index]


def probability_list(p) -> list[float]:
    """A list in GALAXY10_CLASSES order from a sequence or a {class name: p} mapping (the served
    answer's "probabilities")."""
    if isinstance(p, Mapping):
        if set(p) != set(GALAXY10_CLASSES):
            raise StoreError(f"probabilities keyed by class must name exactly {list(GALAXY10_CLASSES)}")
        p = [p[c] for c in GALAXY10_CLASSES]
    try:
        values = [float(x) for x in p]
    except (TypeError, ValueError):
        raise StoreError("probabilities must be a sequence of numbers") from None
    if len(values) != len(GALAXY10_CLASSES):
        raise StoreError(f"probabilities must have {len(GALAXY10_CLASSES)} values, got {len(values)}")
    if not all(math.isfinite(x) and x >= 0 for x in values):
        raise StoreError(f"probabilities must be finite and non-negative, got {values}")
    if abs(sum(values) - 1) > SUM_TOL:
        raise StoreError(f"probabilities must sum to 1, got {sum(values):g}")
    return values


def _answer(row) -> dict:
    return {**row._mapping, "probabilities": json.loads(row.probabilities)}


class LabelStore:
    """The label store at a path (SQLite) or SQLAlchemy URL, created there when the database is new."""

    def __init__(self, url_or_path):
        self.url = _url(url_or_path)
        file = _sqlite_file(self.url)
        self.where = str(file) if file else self.url.render_as_string(hide_password=True)
        if file is None and self.url.get_backend_name() == "sqlite":
            raise StoreError(f"{self.where}: in-memory (or URI-named) SQLite is not supported; "
                             "give a file path")
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        if file is not None and file.is_file() and file.stat().st_size:
            with open(file, "rb") as f:
                if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise StoreError(f"{self.where} is not a galaxy-morph label store: "
                                     "not an SQLite database")
        # The check runs without WAL: switching someone else's database to WAL rewrites its header.
        try:
            probe = _engine(self.url, wal=False)
        except (ArgumentError, ImportError) as e:
            raise StoreError(f"cannot use {self.where}: {e}") from e
        try:
            self._open(probe)
        except DBAPIError as e:
            raise StoreError(f"cannot open {self.where} as a label store: {e.orig}") from e
        finally:
            probe.dispose()
        self.engine = _engine(self.url, wal=True)
        self._writer = self.engine.execution_options(store_write=True)

    def _open(self, engine: Engine) -> None:
        with engine.execution_options(store_write=True).begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes opening a new store at once would both create the schema, and one
                # would fail on the catalogue's unique keys: this lock (freed at commit) queues them.
                conn.execute(select(func.pg_advisory_xact_lock(OPEN_LOCK)))
            db = inspect(conn)
            tables = set(db.get_table_names())
            if not tables:
                METADATA.create_all(conn)
                conn.execute(insert(META), [{"key": "app", "value": APP},
                                            {"key": "schema_version", "value": str(SCHEMA_VERSION)}])
                return
            if "meta" not in tables or not {"key", "value"} <= {c["name"] for c in db.get_columns("meta")}:
                raise StoreError(f"{self.where} is not a galaxy-morph label store: it has tables "
                                 f"{sorted(tables)} but no label-store meta table")
            meta = dict(conn.execute(select(META.c.key, META.c.value)).all())
            if meta.get("app") != APP:
                raise StoreError(f"{self.where} is not a galaxy-morph label store: its meta table names "
                                 f"app {meta.get('app')!r}, not {APP!r}")
            version = meta.get("schema_version", "")
            if not version.isdigit():
                raise StoreError(f"{self.where} has an unreadable schema version {version!r}")
            version = int(version)
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.where} has schema version {version}, newer than this code's "
                                 f"{SCHEMA_VERSION}: update galaxy-morph to open it")
            for v in range(version, SCHEMA_VERSION):
                if v not in MIGRATIONS:
                    raise StoreError(f"{self.where} has schema version {version}, and there is no "
                                     f"migration from version {v}")
                MIGRATIONS[v](conn)
            if version < SCHEMA_VERSION:
                conn.execute(update(META).where(META.c.key == "schema_version")
                             .values(value=str(SCHEMA_VERSION)))

    def __repr__(self) -> str:
        return f"LabelStore({self.where!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_candidate(self, conn: Connection, candidate_id) -> None:
        if conn.scalar(select(CANDIDATES.c.id).where(CANDIDATES.c.id == candidate_id)) is None:
            raise StoreError(f"no candidate with id {candidate_id!r}")

    # Writes: one committed transaction each.

    def add_candidate(self, source: str, item_key: str, image: bytes | None = None,
                      path: str | os.PathLike | None = None, ra: float | None = None,
                      dec: float | None = None) -> int:
        """The id of the candidate (source, item_key), added now unless it was there already (then
        the image, path and position given now are ignored)."""
        _text(source, "source")
        _text(item_key, "item_key")
        if image is not None and not isinstance(image, (bytes, bytearray, memoryview)):
            raise StoreError(f"image must be bytes or None, got {type(image).__name__}")
        row = {"source": source, "item_key": item_key, "image": None if image is None else bytes(image),
               "path": None if path is None else _text(os.fspath(path), "path"),
               "ra": _number(ra, "ra", 0, 360), "dec": _number(dec, "dec", -90, 90)}
        existing = select(CANDIDATES.c.id).where(CANDIDATES.c.source == source,
                                                 CANDIDATES.c.item_key == item_key)
        try:
            with self._writer.begin() as conn:
                found = conn.scalar(existing)
                if found is not None:
                    return found
                added = conn.execute(insert(CANDIDATES).values(**row, added_at=_now()))
                return added.inserted_primary_key[0]
        except IntegrityError:
            # Another writer added it between our select and insert (not on SQLite, where the
            # write lock is held from BEGIN).
            with self.engine.connect() as conn:
                return conn.scalar(existing)

    def add_answer(self, candidate_id: int, model: str, version: str, probabilities,
                   ood_score: float | None = None) -> int:
        """Store a model's answer for a candidate; returns the answer's id."""
        row = {"candidate_id": candidate_id, "model": _text(model, "model"),
               "version": _text(version, "version"),
               "probabilities": json.dumps(probability_list(probabilities)),
               "ood_score": _number(ood_score, "ood_score"), "created_at": _now()}
        with self._writer.begin() as conn:
            self._require_candidate(conn, candidate_id)
            return conn.execute(insert(ANSWERS).values(**row)).inserted_primary_key[0]

    def add_label(self, candidate_id: int, labeller: str, label: int | str | None = None,
                  unsure: bool = False, not_a_galaxy: bool = False) -> int:
        """Record labeller's label: a class (index or name) or not_a_galaxy=True, exactly one of
        the two; unsure=True marks either as a guess. Returns the label's id."""
        _text(labeller, "labeller")
        if (label is not None) == bool(not_a_galaxy):
            raise StoreError("give exactly one of a class label or not_a_galaxy=True, got "
                             f"label={label!r}, not_a_galaxy={not_a_galaxy!r}")
        index, name = (None, None) if label is None else _class(label)
        row = {"candidate_id": candidate_id, "class_index": index, "class_name": name, "labeller": labeller,
               "unsure": bool(unsure), "not_a_galaxy": bool(not_a_galaxy), "created_at": _now()}
        with self._writer.begin() as conn:
            self._require_candidate(conn, candidate_id)
            return conn.execute(insert(LABELS).values(**row)).inserted_primary_key[0]

    def undo_last(self, labeller: str) -> dict | None:
        """Delete labeller's latest label and return it; None when they have none."""
        latest = select(LABELS).where(LABELS.c.labeller == labeller).order_by(LABELS.c.id.desc()).limit(1)
        while True:
            with self._writer.begin() as conn:
                row = conn.execute(latest).first()
                if row is None:
                    return None
                # Where reads do not take the write lock (PostgreSQL), an undo at the same time may
                # have deleted this row since the read: then look again, for the next one.
                if conn.execute(delete(LABELS).where(LABELS.c.id == row.id)).rowcount:
                    return dict(row._mapping)

    # Reads.

    def candidate(self, candidate_id: int) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(CANDIDATES).where(CANDIDATES.c.id == candidate_id)).first()
        if row is None:
            raise StoreError(f"no candidate with id {candidate_id!r}")
        return dict(row._mapping)

    def answers(self, candidate_id: int | None = None) -> list[dict]:
        """Answers, oldest first, with probabilities as a list in GALAXY10_CLASSES order."""
        q = select(ANSWERS).order_by(ANSWERS.c.id)
        if candidate_id is not None:
            q = q.where(ANSWERS.c.candidate_id == candidate_id)
        with self.engine.connect() as conn:
            return [_answer(r) for r in conn.execute(q)]

    def labels(self, candidate_id: int | None = None, labeller: str | None = None) -> list[dict]:
        """Labels, oldest first: id, candidate_id, class_index, class_name, labeller, unsure,
        not_a_galaxy, created_at."""
        q = select(LABELS).order_by(LABELS.c.id)
        if candidate_id is not None:
            q = q.where(LABELS.c.candidate_id == candidate_id)
        if labeller is not None:
            q = q.where(LABELS.c.labeller == labeller)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def latest_labels(self, labeller: str | None = None) -> dict[int, dict]:
        """{candidate_id: its newest label} over every labeller, or over one."""
        newest = select(func.max(LABELS.c.id)).group_by(LABELS.c.candidate_id)
        if labeller is not None:
            newest = newest.where(LABELS.c.labeller == labeller)
        q = select(LABELS).where(LABELS.c.id.in_(newest)).order_by(LABELS.c.candidate_id)
        with self.engine.connect() as conn:
            return {r.candidate_id: dict(r._mapping) for r in conn.execute(q)}

    def unlabelled(self, source: str | None = None) -> list[int]:
        """Ids of the candidates (of one source, or all) that nobody has labelled, in id order."""
        labelled = select(LABELS.c.id).where(LABELS.c.candidate_id == CANDIDATES.c.id).exists()
        q = select(CANDIDATES.c.id).where(~labelled).order_by(CANDIDATES.c.id)
        if source is not None:
            q = q.where(CANDIDATES.c.source == source)
        with self.engine.connect() as conn:
            return list(conn.scalars(q))

    def counts(self) -> dict[str, int]:
        """{"candidates", "labelled" (candidates with a label), "labels", "answers"}, from one snapshot."""
        with self.engine.connect() as conn:
            return {
                "candidates": conn.scalar(select(func.count()).select_from(CANDIDATES)),
                "labelled": conn.scalar(select(func.count(LABELS.c.candidate_id.distinct()))),
                "labels": conn.scalar(select(func.count()).select_from(LABELS)),
                "answers": conn.scalar(select(func.count()).select_from(ANSWERS)),
            }
