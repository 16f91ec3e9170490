"""A throwaway PostgreSQL server for the tests, started from Debian's `postgresql` binaries.

    from tests.postgres_server import postgres_db, postgres_server  # noqa: F401 (fixtures)

    def test_something(postgres_db):
        store = LabelStore(postgres_db)   # an empty database

`postgres_server` (session scope) is a Server: initdb into a temporary folder, started with pg_ctl
on a free port of 127.0.0.1 (its Unix socket in that folder), trust authentication for its one
user, stopped at the end of the session. As root it runs as the `postgres` system user, since
initdb refuses root. `postgres_db` is the SQLAlchemy URL of an empty database for one test;
`postgres_server.create_database(name)` makes another (for a module-scoped store).
Without the binaries (`make postgres`) the tests that use them are skipped.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

USER = "labels"
SHARED = "tests"  # the database that postgres_db empties for each test
# fsync off: the server is thrown away after the session, and no test crashes it (they kill clients).
SERVER_OPTIONS = "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps it off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Server:
    port: int
    as_user: list[str]
    pg_ctl: Path
    data: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def sql(self, database: str, *statements: str) -> None:
        """Run statements outside a transaction (as CREATE DATABASE must be)."""
        engine = create_engine(self.url(database), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
        engine.dispose()

    def create_database(self, name: str) -> str:
        self.sql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "stop", "-D", self.data, "-m", "immediate"],
                       capture_output=True, timeout=30)


def as_postgres(root: Path) -> list[str]:
    """The command prefix that runs the server binaries: as root, as the postgres system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("as root, PostgreSQL runs as the postgres system user, and there is none: make postgres")
    shutil.chown(root, "postgres")
    return ["runuser", "-u", "postgres", "--"]


def start(root: Path, port: int) -> Server:
    bins = bin_dir()
    if bins is None:
        pytest.skip("PostgreSQL is not installed: make postgres (or sudo apt-get install -y postgresql)")
    as_user = as_postgres(root)

    def run(*cmd) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=60)

    data, log = root / "data", root / "server.log"
    initdb = run(bins / "initdb", "-D", data, "-U", USER, "--auth=trust", "--no-sync", "--no-instructions",
                 "-E", "UTF8", "--locale=C")
    assert initdb.returncode == 0, initdb.stderr
    server = Server(port, as_user, bins / "pg_ctl", data)
    started = run(server.pg_ctl, "start", "-w", "-D", data, "-l", log,
                  "-o", f"-p {port} -k {root} {SERVER_OPTIONS}")
    if started.returncode:
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {started.stderr}{log.read_text() if log.exists() else ''}")
    return server


@pytest.fixture(scope="session")
def postgres_server():
    from torchserve_ops.server import free_port

    # Not under pytest's tmp_path: its folders are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    server = None
    try:
        server = start(root, free_port())
        server.create_database(SHARED)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server) -> str:
    """The URL of an empty database on the session's server: the same one for every test, emptied
    first (a new schema is cheaper than a new database)."""
    postgres_server.sql(SHARED, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()",
                        "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    return postgres_server.url(SHARED)
