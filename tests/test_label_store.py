"""The label store on a real SQLite file and on a real PostgreSQL server that the suite starts
(tests/postgres_server.py; skipped without Debian's postgresql): round trips, refusals, two writers
and two undos at once, a killed writer.

    pytest tests/test_label_store.py
    pytest tests/test_label_store.py -k postgresql
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, table, text

import labelling.store as store_module
from galaxy_morph.specs import GALAXY10_CLASSES
from labelling.store import LabelStore, StoreError


REPO = Path(__file__).resolve().parent.parent
P = [0.55, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "labels.db"


@pytest.fixture(params=BACKENDS)
def where(request, tmp_path) -> str:
    """Where a test's new store goes: an SQLite file's path, or an empty PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.db")
    return request.getfixturevalue("postgres_db")


def as_url(where: str) -> str:
    return where if "://" in where else f"sqlite:///{where}"


def sql(where: str, *statements: str) -> None:
    """Run statements in one transaction on the database at where, behind the store's back."""
    engine = create_engine(as_url(where))
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def child(code: str, *args) -> subprocess.Popen:
    """A Python process running code with sys.argv[1:] = args, its stdin and stdout piped."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_round_trip(where, tmp_path):
    store = LabelStore(where)
    a = store.add_candidate("decals", "J1", image=b"\xff\xd8jpeg", ra=188.7, dec=-1.25)
    b = store.add_candidate("decals", "J2", path=tmp_path / "J2.jpg")
    c = store.add_candidate("sdss", "row-17")
    assert store.unlabelled() == [a, b, c] and store.unlabelled("sdss") == [c]

    store.add_answer(a, "galaxy-b0", "1.0", P, ood_score=0.25)
    store.add_answer(a, "galaxy-b2", "1.0", dict(zip(GALAXY10_CLASSES, reversed(P))))
    store.add_label(a, "alice", 5)
    store.add_label(a, "bob", "Merging", unsure=True)
    store.add_label(b, "alice", not_a_galaxy=True)
    store.close()

    store = LabelStore(as_url(where))  # the same database by URL, in a new engine
    assert store.candidate(a) | {"added_at": None} == {
        "id": a, "source": "decals", "item_key": "J1", "image": b"\xff\xd8jpeg", "path": None,
        "ra": 188.7, "dec": -1.25, "added_at": None}
    assert store.candidate(b)["path"] == str(tmp_path / "J2.jpg")
    answers = store.answers(a)
    assert [(x["model"], x["probabilities"], x["ood_score"]) for x in answers] == [
        ("galaxy-b0", P, 0.25), ("galaxy-b2", P[::-1], None)]
    keys = ("candidate_id", "labeller", "class_index", "class_name", "unsure", "not_a_galaxy")
    assert [tuple(x[k] for k in keys) for x in store.labels()] == [
        (a, "alice", 5, "Barred Spiral", False, False),
        (a, "bob", 1, "Merging", True, False),
        (b, "alice", None, None, False, True)]
    assert [x["labeller"] for x in store.labels(candidate_id=a)] == ["alice", "bob"]
    assert [x["candidate_id"] for x in store.labels(labeller="alice")] == [a, b]
    latest = store.latest_labels()
    assert set(latest) == {a, b} and latest[a]["labeller"] == "bob" and latest[b]["not_a_galaxy"]
    assert store.latest_labels(labeller="alice")[a]["class_index"] == 5
    assert store.unlabelled() == [c]
    assert store.counts() == {"candidates": 3, "labelled": 2, "labels": 3, "answers": 2}


def test_add_candidate_is_idempotent(where):
    store = LabelStore(where)
    first = store.add_candidate("decals", "J1", ra=10.0, dec=5.0)
    assert store.add_candidate("decals", "J1") == first
    assert store.add_candidate("decals", "J1", ra=20.0) == first
    assert store.candidate(first)["ra"] == 10.0  # the first one stays
    assert store.add_candidate("sdss", "J1") != first  # unique per source only
    assert store.counts()["candidates"] == 2


def test_undo_last_deletes_only_that_labellers_latest(where):
    store = LabelStore(where)
    cid = store.add_candidate("decals", "J1")
    first = store.add_label(cid, "alice", 2)
    second = store.add_label(cid, "alice", 3)
    bobs = store.add_label(cid, "bob", 4)
    undone = store.undo_last("alice")
    assert undone["id"] == second and undone["class_index"] == 3
    assert [x["id"] for x in store.labels()] == [first, bobs]
    assert store.undo_last("carol") is None
    assert store.add_label(cid, "alice", 6) > bobs  # an undone label's id is not reused


@pytest.fixture(scope="module", params=BACKENDS)
def one_candidate(request, tmp_path_factory):
    """A store holding one candidate and nothing else, shared by the refusal tests."""
    if request.param == "sqlite":
        where = tmp_path_factory.mktemp("refusals") / "labels.db"
    else:
        where = request.getfixturevalue("postgres_server").create_database("refusals")
    store = LabelStore(where)
    yield store, store.add_candidate("decals", "J1")
    store.close()


@pytest.mark.parametrize("write, message", [
    (lambda s, c: s.add_candidate("", "J9"), "source must be a non-empty string"),
    (lambda s, c: s.add_candidate("decals", None), "item_key must be a non-empty string"),
    (lambda s, c: s.add_candidate("decals", "J9", ra=361), "ra must be finite"),
    (lambda s, c: s.add_candidate("decals", "J9", dec=float("nan")), "dec must be finite"),
    (lambda s, c: s.add_candidate("decals", "J9", image="not bytes"), "image must be bytes"),
    (lambda s, c: s.add_answer(c, "galaxy-b0", "1.0", P[:9]), "10 values"),
    (lambda s, c: s.add_answer(c, "galaxy-b0", "1.0", [2.0] * 10), "sum to 1"),
    (lambda s, c: s.add_answer(c, "galaxy-b0", "1.0", [-0.1, 0.65] + P[2:]), "finite and non-negative"),
    (lambda s, c: s.add_answer(c, "galaxy-b0", "1.0", [float("nan")] + P[1:]), "finite and non-negative"),
    (lambda s, c: s.add_answer(c, "galaxy-b0", "1.0", {"Merging": 1.0}), "name exactly"),
    (lambda s, c: s.add_answer(c, "", "1.0", P), "model must be"),
    (lambda s, c: s.add_answer(c + 1, "galaxy-b0", "1.0", P), "no candidate with id"),
    (lambda s, c: s.add_label(c, "alice", 10), r"class index must be 0\.\.9"),
    (lambda s, c: s.add_label(c, "alice", -1), r"class index must be 0\.\.9"),
    (lambda s, c: s.add_label(c, "alice", "Spiral"), "unknown class name 'Spiral'"),
    (lambda s, c: s.add_label(c, "alice", 2.0), "class index or class name"),
    (lambda s, c: s.add_label(c, "alice", True), "class index or class name"),
    (lambda s, c: s.add_label(c, "alice"), "exactly one of a class label or not_a_galaxy"),
    (lambda s, c: s.add_label(c, "alice", 3, not_a_galaxy=True), "exactly one"),
    (lambda s, c: s.add_label(c, "", 3), "labeller must be a non-empty string"),
    (lambda s, c: s.add_label(c, None, 3), "labeller must be a non-empty string"),
    (lambda s, c: s.add_label(c + 1, "alice", 3), "no candidate with id"),
    (lambda s, c: s.candidate(c + 1), "no candidate with id"),
])
def test_bad_writes_are_refused_and_write_nothing(one_candidate, write, message):
    store, cid = one_candidate
    with pytest.raises(StoreError, match=message):
        write(store, cid)
    assert store.counts() == {"candidates": 1, "labelled": 0, "labels": 0, "answers": 0}


def test_unsure_may_go_with_a_class_or_not_a_galaxy(where):
    store = LabelStore(where)
    cid = store.add_candidate("decals", "J1")
    store.add_label(cid, "alice", 0, unsure=True)
    store.add_label(cid, "alice", not_a_galaxy=True, unsure=True)
    assert [(x["class_index"], x["not_a_galaxy"], x["unsure"]) for x in store.labels()] == [
        (0, False, True), (None, True, True)]


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(db):
    store = LabelStore(db)
    with store.engine.connect() as conn:
        pragma = lambda name: conn.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
        got = pragma("journal_mode"), pragma("foreign_keys"), pragma("busy_timeout")
        assert got == ("wal", 1, 10_000)
    with sqlite3.connect(db) as raw:  # WAL is a property of the file: any later reader sees it
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert dict(raw.execute("SELECT key, value FROM meta")) == {
            "app": "galaxy-morph-labels", "schema_version": "1"}


def foreign_db(path: Path, meta_app: str | None) -> bytes:
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE stars (id INTEGER PRIMARY KEY, name TEXT)")
        raw.execute("INSERT INTO stars (name) VALUES ('Vega'), ('Deneb')")
        if meta_app is not None:
            raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            raw.execute("INSERT INTO meta VALUES ('app', ?), ('schema_version', '1')", (meta_app,))
    raw.close()
    return path.read_bytes()


FOREIGN = [
    (None, r"not a galaxy-morph label store: it has tables \['stars'\] but no label-store meta table"),
    ("star-catalogue", "not a galaxy-morph label store: its meta table names app 'star-catalogue'"),
]


@pytest.mark.parametrize("meta_app, message", FOREIGN)
def test_another_sqlite_database_is_refused_and_left_unchanged(db, meta_app, message):
    before = foreign_db(db, meta_app)
    with pytest.raises(StoreError, match=message):
        LabelStore(db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["labels.db"]  # no -wal, no -journal left


def postgresql_contents(url: str) -> dict:
    """{name: rows} of every table, plus every relation (tables, sequences, indexes) by kind."""
    engine = create_engine(url)
    with engine.connect() as conn:
        names = inspect(conn).get_table_names()
        got = {name: conn.execute(select(text("*")).select_from(table(name))).all() for name in names}
        got["relations"] = conn.execute(text("SELECT relname, relkind FROM pg_class WHERE relnamespace = "
                                             "'public'::regnamespace ORDER BY relname")).all()
    engine.dispose()
    return got


@pytest.mark.parametrize("meta_app, message", FOREIGN)
def test_another_postgresql_database_is_refused_and_left_unchanged(postgres_db, meta_app, message):
    statements = ["CREATE TABLE stars (id SERIAL PRIMARY KEY, name TEXT)",
                  "INSERT INTO stars (name) VALUES ('Vega'), ('Deneb')"]
    if meta_app is not None:
        statements += ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                       f"INSERT INTO meta VALUES ('app', '{meta_app}'), ('schema_version', '1')"]
    sql(postgres_db, *statements)
    before = postgresql_contents(postgres_db)
    with pytest.raises(StoreError, match=message):
        LabelStore(postgres_db)
    assert postgresql_contents(postgres_db) == before


def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(db):
    junk = os.urandom(4096)
    db.write_bytes(junk)
    for where in (db, str(db), f"sqlite:///{db}"):
        with pytest.raises(StoreError, match="is not a galaxy-morph label store: not an SQLite database"):
            LabelStore(where)
    assert db.read_bytes() == junk


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(url):
    # The schema would vanish with the connection that made it.
    with pytest.raises(StoreError, match="in-memory .* SQLite is not supported"):
        LabelStore(url)
    assert issubclass(StoreError, ValueError)


def test_a_newer_schema_is_refused(where):
    LabelStore(where).close()
    sql(where, "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 2, newer than this code's 1"):
        LabelStore(where)


def test_an_older_schema_is_migrated(where, monkeypatch):
    LabelStore(where).close()
    sql(where, "UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="no migration from version 0"):
        LabelStore(where)

    def add_note(conn):
        conn.execute(text("ALTER TABLE labels ADD COLUMN note TEXT"))

    monkeypatch.setitem(store_module.MIGRATIONS, 0, add_note)
    LabelStore(where).close()
    engine = create_engine(as_url(where))
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT value FROM meta WHERE key = 'schema_version'")) == "1"
        assert "note" in [c["name"] for c in inspect(conn).get_columns("labels")]
    engine.dispose()
    LabelStore(where).close()  # version 1 now: opens without migrating again


WRITER = """
import sys
from labelling.store import LabelStore
print("ready", flush=True)
sys.stdin.readline()
store = LabelStore(sys.argv[1])
cid = store.add_candidate("decals", "J1")
for i in range(100):
    store.add_label(cid, sys.argv[2], i % 10)
print("done", flush=True)
"""


def test_two_processes_writing_at_once_lose_nothing(db):
    # Both create the store too: the file does not exist until one of them opens it.
    writers = [child(WRITER, db, name) for name in ("alice", "bob")]
    for w in writers:  # both have imported the store and wait, so that they start together
        assert w.stdout.readline() == "ready\n", w.stderr.read()
    for w in writers:
        w.stdin.write("go\n")
        w.stdin.flush()
    results = [w.communicate(timeout=120) for w in writers]
    for w, (out, err) in zip(writers, results):
        assert (w.returncode, out, err) == (0, "done\n", "")
    store = LabelStore(db)
    assert store.counts() == {"candidates": 1, "labelled": 1, "labels": 200, "answers": 0}
    assert len(store.labels(labeller="alice")) == len(store.labels(labeller="bob")) == 100
    assert [x["class_index"] for x in store.labels(labeller="bob")] == [i % 10 for i in range(100)]


def test_two_stores_writing_at_once_on_postgresql_lose_nothing(postgres_db):
    # Threads, not processes: each store has its own engine and connection, so the server sees two
    # clients all the same, without two more interpreters to start. Both create the store too.
    together = threading.Barrier(2)

    def write(name: str) -> None:
        together.wait()
        store = LabelStore(postgres_db)
        cid = store.add_candidate("decals", "J1")
        for i in range(100):
            store.add_label(cid, name, i % 10)
        store.close()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, ["alice", "bob"]))
    store = LabelStore(postgres_db)
    assert store.counts() == {"candidates": 1, "labelled": 1, "labels": 200, "answers": 0}
    assert [x["class_index"] for x in store.labels(labeller="bob")] == [i % 10 for i in range(100)]


KILLED = """
import sys
from labelling.store import LabelStore
store = LabelStore(sys.argv[1])
cid = int(sys.argv[2])
for i in range(1_000_000):
    print(store.add_label(cid, "killed", i % 10), flush=True)
"""


def test_a_killed_writer_loses_no_reported_commit(where):
    cid = LabelStore(where).add_candidate("decals", "J1")
    writer = child(KILLED, where, cid)
    reported = []
    while len(reported) < 20:
        line = writer.stdout.readline()
        assert line, writer.stderr.read()
        reported.append(int(line))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    rest = writer.stdout.read()  # lines it printed before the kill that were not read yet
    reported += [int(line) for line in rest.split("\n")[:-1]]
    for pipe in (writer.stdin, writer.stdout, writer.stderr):
        pipe.close()

    store = LabelStore(where)
    stored = {x["id"] for x in store.labels(labeller="killed")}
    assert set(reported) <= stored
    assert len(stored) - len(reported) <= 1  # at most the one it committed but had not printed yet
    if "://" not in where:
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    store.add_label(cid, "alice", 1)  # and it takes writes again
    assert store.counts()["labels"] == len(stored) + 1


def test_undos_at_once_each_undo_a_different_label(where):
    store = LabelStore(where)
    cid = store.add_candidate("decals", "J1")
    ids = [store.add_label(cid, "alice", i % 10) for i in range(40)]

    def undo_20(tab: LabelStore) -> list[int]:
        return [tab.undo_last("alice")["id"] for _ in range(20)]

    tabs = [LabelStore(where) for _ in range(2)]  # two dashboard tabs: two engines, two connections
    with ThreadPoolExecutor(2) as pool:
        undone = sum(pool.map(undo_20, tabs), [])
    assert sorted(undone) == ids and store.labels() == []
