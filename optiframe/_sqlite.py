"""The SQLite file of a run history: its schema, migrations, writes and reads (stdlib
`sqlite3`, WAL mode).

Tables (schema version `SCHEMA_VERSION`, kept in `PRAGMA user_version`):

- `meta(key, value)`: `format = optiframe-history`, which tells an optiframe history apart
  from any other SQLite file;
- `runs`: one row per solve: the problem's and the algorithm's descriptions, the common
  keywords (JSON), the versions, the leaves of `u0` (JSON: path, shape, dtype), the pickled
  (problem, algorithm) when they pickle, the start time, and once known the end: retcode,
  message, objective, iterations, fevals;
- `segments`: a run's first part and every resumed part, from the iteration it resumed at;
- `iterations`: one row per iteration (run, segment, iteration, wall time since the run's
  start in seconds, objective, fevals, and every k-th row the parameters as a float64
  blob of `ravel(u)`);
- `checkpoints`: the solver's state (pickled) at an iteration, with the time and fevals
  there.

Writes are batched: rows wait in memory until `COMMIT_ROWS` are queued or `COMMIT_SECONDS`
have passed, then go in one transaction. In WAL mode a process that dies keeps every
committed transaction; several processes may write one file (SQLite locks it, and a writer
waits up to `BUSY_SECONDS` for another).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .errors import OptiframeError

SCHEMA_VERSION = 1
FORMAT = "optiframe-history"
COMMIT_ROWS, COMMIT_SECONDS, BUSY_SECONDS = 50_000, 0.5, 60.0

_SCHEMA = {  # version -> the statements that bring the previous version to it
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        problem TEXT NOT NULL, algorithm TEXT NOT NULL, keywords TEXT NOT NULL,
        versions TEXT NOT NULL, leaves TEXT NOT NULL, pickled BLOB,
        started REAL NOT NULL, ended REAL,
        retcode TEXT, message TEXT, objective REAL, iterations INTEGER, fevals INTEGER
    );
    CREATE TABLE segments (
        run INTEGER NOT NULL REFERENCES runs(id), segment INTEGER NOT NULL,
        start INTEGER NOT NULL, started REAL NOT NULL, PRIMARY KEY (run, segment)
    );
    CREATE TABLE iterations (
        run INTEGER NOT NULL REFERENCES runs(id), segment INTEGER NOT NULL,
        iteration INTEGER NOT NULL, time REAL NOT NULL, objective REAL,
        fevals INTEGER NOT NULL, params BLOB
    );
    CREATE INDEX iterations_by_run ON iterations (run, segment, iteration);
    CREATE TABLE checkpoints (
        run INTEGER NOT NULL REFERENCES runs(id), segment INTEGER NOT NULL,
        iteration INTEGER NOT NULL, time REAL NOT NULL, fevals INTEGER NOT NULL,
        state BLOB NOT NULL
    );
    """,
}


_OPEN: dict[tuple[Any, ...], tuple[sqlite3.Connection, tuple[int, int]]] = {}
OPEN_FILES = 16  # connections kept open, the least recently used closed first


def writer_connection(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """`connect(path, create=True)`, kept open for this thread's later runs on the same
    file (opening and closing, which checkpoints the WAL, cost ~7 ms a run; at most
    `OPEN_FILES` stay open). A file replaced or deleted since gets a new connection."""
    key = (os.path.abspath(os.fspath(path)), os.getpid(), threading.get_ident())
    db, inode = _OPEN.pop(key, (None, None))
    try:
        stat = os.stat(key[0])
        current = (stat.st_dev, stat.st_ino)
    except FileNotFoundError:
        current = None
    if db is None or inode != current:
        db = connect(path, create=True)
        stat = os.stat(key[0])
        inode = (stat.st_dev, stat.st_ino)
    _OPEN[key] = db, inode  # the most recently used last
    mine = [k for k in _OPEN if k[1:] == key[1:]]  # only this thread may close its own
    for old in mine[:-OPEN_FILES]:
        _OPEN.pop(old)[0].close()
    return db


def connect(path: str | os.PathLike[str], create: bool) -> sqlite3.Connection:
    """An open history file, its schema created (if `create`) or migrated to this version.

    Raises:
        OptiframeError: the file is missing (and not `create`), not SQLite, not an
            optiframe history, or from a newer optiframe.
    """
    path = os.fspath(path)
    if not create and not os.path.exists(path):
        raise OptiframeError(f"No run history at {path!r}: the file does not exist.")
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        db = None
        try:
            db = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crashed process loses nothing
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            break
        except sqlite3.OperationalError as err:
            # Turning a new file to WAL while another process creates it can fail at once,
            # without SQLite's busy wait: wait here.
            if db is not None:
                db.close()
            if "locked" not in str(err):
                raise OptiframeError(
                    f"{path!r} is not an optiframe run history (SQLite says: {err})."
                ) from None
            if time.monotonic() > deadline:
                raise OptiframeError(
                    f"{path!r} stayed locked by another process for {BUSY_SECONDS} s."
                ) from None
            time.sleep(0.01)
        except sqlite3.DatabaseError as err:
            if db is not None:
                db.close()
            raise OptiframeError(
                f"{path!r} is not an optiframe run history (SQLite says: {err})."
            ) from None
    if version > SCHEMA_VERSION:
        db.close()
        raise OptiframeError(
            f"{path!r} is a run history of schema version {version}, written by a newer "
            f"optiframe; this one reads up to version {SCHEMA_VERSION}: upgrade optiframe."
        )
    if version == 0 and tables:
        db.close()
        raise OptiframeError(f"{path!r} is an SQLite file but not an optiframe run history.")
    if version < SCHEMA_VERSION:
        _migrate(db, version)
    elif db.execute("SELECT value FROM meta WHERE key='format'").fetchone() != (FORMAT,):
        db.close()
        raise OptiframeError(f"{path!r} is an SQLite file but not an optiframe run history.")
    return db


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring the schema from `version` to `SCHEMA_VERSION` in one transaction (a process
    that loses the race finds the work done)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        current = db.execute("PRAGMA user_version").fetchone()[0]
        for step in range(current + 1, SCHEMA_VERSION + 1):
            for statement in filter(str.strip, _SCHEMA[step].split(";")):
                db.execute(statement)
        if current == 0:
            db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


RUN, SEGMENT = object(), object()  # in a statement's arguments: the writer's run, segment


class Writer:
    """The writes of one run: rows are queued and committed in batches. The run (or its
    resumed segment) is created by the first commit, in the same transaction: a short run
    costs one transaction.

    Args:
        db: the open file.
        opening: `opening(db) -> (run id, segment)`, called inside the first transaction
            (`insert_run` or `insert_segment`).
        encode: a row's parameters as the blob stored.
    """

    def __init__(
        self, db: sqlite3.Connection, opening: Callable[[sqlite3.Connection], tuple[int, int]],
        encode: Callable[[Any], bytes],
    ) -> None:
        self.db, self.opening, self.encode = db, opening, encode
        self.run: int | None = None
        self.segment: int | None = None
        self.rows: list[tuple[Any, ...]] = []
        self.last_commit = time.monotonic()

    def iterations(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Queue (iteration, time, objective, fevals, parameters or None) rows; the
        parameters are kept (not copied) until the commit `encode`s them."""
        self.rows.extend(rows)
        if len(self.rows) >= COMMIT_ROWS or time.monotonic() - self.last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Write the queued rows and `statements` (`RUN` and `SEGMENT` in their arguments
        stand for the run's) in one transaction."""
        if not self.rows and not statements:
            return
        if self.db.in_transaction:  # one an interrupt (Ctrl-C) left open: it is undone
            self.db.rollback()
        opens = self.run is None
        try:
            self.db.execute("BEGIN IMMEDIATE")
            if opens:
                self.run, self.segment = self.opening(self.db)
            ids = {id(RUN): self.run, id(SEGMENT): self.segment}
            if self.rows:
                encode = self.encode
                self.db.executemany(
                    "INSERT INTO iterations VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ((self.run, self.segment, at, t, float(objective), int(fevals),
                      None if u is None else encode(u))
                     for at, t, objective, fevals, u in self.rows),
                )
            for sql, args in statements:
                self.db.execute(sql, tuple(ids.get(id(a), a) for a in args))
            self.db.execute("COMMIT")
        except BaseException:  # an error, or Ctrl-C at any point: nothing is half written
            if self.db.in_transaction:
                self.db.rollback()
            if opens:  # the run's row went with the transaction
                self.run = self.segment = None
            raise
        self.rows, self.last_commit = [], time.monotonic()

    def checkpoint(
        self, iteration: int, elapsed: float, fevals: int, state: bytes,
        pickled: bytes | None = None,
    ) -> None:
        """Commit the queued rows and the solver's state at `iteration` (and the run's
        pickled problem and algorithm, if given)."""
        statements = [(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
            (RUN, SEGMENT, iteration, elapsed, fevals, state),
        )]
        if pickled is not None:
            statements.append(("UPDATE runs SET pickled=? WHERE id=?", (pickled, RUN)))
        self.commit(*statements)

    def finish(self, retcode: str, message: str, objective: float, iterations: int,
               fevals: int) -> None:
        """Commit the queued rows and the run's outcome."""
        self.commit((
            "UPDATE runs SET ended=?, retcode=?, message=?, objective=?, iterations=?, "
            "fevals=? WHERE id=?",
            (time.time(), retcode, message, objective, iterations, fevals, RUN),
        ))


def insert_run(db: sqlite3.Connection, record: dict[str, Any]) -> tuple[int, int]:
    """Insert a run (the `runs` columns in `record`; keywords that JSON cannot hold are
    stored as their repr) and its first segment, inside the caller's transaction; (its
    id, 0)."""
    cursor = db.execute(
        "INSERT INTO runs (problem, algorithm, keywords, versions, leaves, started)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (record["problem"], record["algorithm"], json.dumps(record["keywords"], default=repr),
         json.dumps(record["versions"]), json.dumps(record["leaves"]), record["started"]),
    )
    db.execute("INSERT INTO segments VALUES (?, 0, 0, ?)", (cursor.lastrowid, record["started"]))
    return cursor.lastrowid, 0


def insert_segment(db: sqlite3.Connection, run: int, start: int) -> tuple[int, int]:
    """Open the next segment of `run`, resuming after iteration `start`, inside the
    caller's transaction; (run, its number). The run's outcome is cleared until the new
    segment ends."""
    (last,) = db.execute("SELECT MAX(segment) FROM segments WHERE run=?", (run,)).fetchone()
    db.execute("INSERT INTO segments VALUES (?, ?, ?, ?)", (run, last + 1, start, time.time()))
    db.execute(
        "UPDATE runs SET ended=NULL, retcode=NULL, message=NULL, objective=NULL, "
        "iterations=NULL, fevals=NULL WHERE id=?", (run,),
    )
    return run, last + 1
