"""The durable store of the embedded default: conference state in a local SQLite file, so a
controller that restarts (or is killed) finds every conference, participant, subscription
and key where it left them.

One controller owns one file (the embedded default; several controllers share Redis). The
conferences are kept in memory as well and written through: every add, put and delete is
committed before it returns, so before the RPC that made it answers. WAL journal with
synchronous=NORMAL: a killed process loses nothing committed; a machine that loses power
may lose the last commits, never the file.

SRTP keys never rest in clear: they are sealed with AES-GCM under a key kept beside the
database (`<file>.key`, readable by its owner only), so a copy of the database alone holds
no usable key.

The file carries a schema version. An older schema is migrated in one transaction at start;
a newer one, a file that is not a Charter database, or a conference that does not read back
is a start-up error naming the file and what to do (StoreError), never silent loss.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from charter.errors import Unavailable
from controller.events import Event
from controller.model import Conference
from controller.records import RecordError, conference_from, conference_record, event_from, event_record
from controller.store import EVENTS_KEPT, LocalStore

log = logging.getLogger("controller.store")

SCHEMA_VERSION = 2
APPLICATION_ID = 0x43485254  # "CHRT": tells a Charter state file from any SQLite file
NONCE = 12

# Each step takes a file from the version before it to its own, in one transaction.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE conferences (conference_id TEXT PRIMARY KEY, daemon_id TEXT NOT NULL, record TEXT NOT NULL)",
    ),
    # Events, for watch streams that resume from a sequence number.
    2: (
        "CREATE TABLE events (conference_id TEXT NOT NULL, sequence INTEGER NOT NULL, record TEXT NOT NULL, "
        "PRIMARY KEY (conference_id, sequence))",
    ),
}


class StoreError(RuntimeError):
    """The state file cannot be used; the message says which and what to do."""


class StateNotWritten(Unavailable):
    """A change could not be committed (disk full, file read-only): the call fails with
    UNAVAILABLE, and the conference is as it was last written."""


class SealingKey:
    """AES-GCM sealing of SRTP keys at rest, under a key file made on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = AESGCM.generate_key(bit_length=128)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as f:
                f.write(key)
        except OSError as error:
            raise StoreError(f"cannot read the store's key file {path}: {error.strerror or error}") from None
        if len(key) != 16:
            raise StoreError(f"{path} is not a store key (16 bytes): restore it from where the state file came from")
        self._aead = AESGCM(key)

    def seal(self, secret: bytes) -> str:
        nonce = secrets.token_bytes(NONCE)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, secret, None)).decode()

    def unseal(self, sealed: str) -> bytes:
        try:
            data = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(data[:NONCE], data[NONCE:], None)
        except (ValueError, InvalidTag):
            raise RecordError(f"a key does not unseal with {self.path} (another store's key file?)") from None


class SqliteStore(LocalStore):
    durable = True

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        self._db = _open(self.path)
        self._key = SealingKey(self.path.with_name(self.path.name + ".key"))
        self._load()

    def _load(self) -> None:
        rows = self._db.execute("SELECT conference_id, record FROM conferences ORDER BY conference_id").fetchall()
        for conference_id, text in rows:
            try:
                conference = conference_from(json.loads(text), self._key.unseal)
            except (RecordError, json.JSONDecodeError) as error:
                raise StoreError(f"{self.path}: {error}; the file was kept as it is: restore it from a backup, "
                                 f"or move it away to start empty") from None
            self._conferences[conference_id] = conference
            kept = self._db.execute(
                "SELECT record FROM events WHERE conference_id = ? ORDER BY sequence DESC LIMIT ?",
                (conference_id, EVENTS_KEPT)).fetchall()
            try:
                events = [event_from(conference_id, json.loads(text), self._key.unseal) for (text,) in reversed(kept)]
            except (RecordError, json.JSONDecodeError) as error:
                raise StoreError(f"{self.path}: conference {conference_id!r}: {error}; the file was kept as it is: "
                                 "restore it from a backup, or move it away to start empty") from None
            self._events[conference_id] = deque(events, maxlen=EVENTS_KEPT)
        if rows:
            log.info("conferences loaded", extra={"path": str(self.path), "conferences": len(rows)})

    def _write(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        """All or nothing, committed when this returns."""
        try:
            with transaction(self._db):
                for sql, parameters in statements:
                    self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            raise StateNotWritten(f"the controller cannot write its state to {self.path} ({error}): "
                                  "nothing was changed; try again when it can") from None

    def _reload(self, conference_id: str) -> None:
        row = self._db.execute("SELECT record FROM conferences WHERE conference_id = ?", (conference_id,)).fetchone()
        if row is None:
            self._conferences.pop(conference_id, None)
        else:
            self._conferences[conference_id] = conference_from(json.loads(row[0]), self._key.unseal)

    def _record(self, conference: Conference) -> str:
        return json.dumps(conference_record(conference, self._key.seal), separators=(",", ":"))

    # --- ConferenceStore: reads from memory, writes through -------------------------------

    async def put(self, conference: Conference, events: Sequence[Event] = ()) -> None:
        conference_id = conference.conference_id
        statements: list[tuple[str, tuple[object, ...]]] = [(
            "INSERT INTO conferences (conference_id, daemon_id, record) VALUES (?, ?, ?) "
            "ON CONFLICT (conference_id) DO UPDATE SET daemon_id = excluded.daemon_id, record = excluded.record",
            (conference_id, conference.daemon_id, self._record(conference)),
        )]
        for event in events:
            record = json.dumps(event_record(event, self._key.seal), separators=(",", ":"))
            statements.append(("INSERT OR REPLACE INTO events (conference_id, sequence, record) VALUES (?, ?, ?)",
                               (conference_id, event.sequence, record)))
        if events:
            statements.append(("DELETE FROM events WHERE conference_id = ? AND sequence <= ?",
                               (conference_id, events[-1].sequence - EVENTS_KEPT)))
        try:
            self._write(statements)
        except StateNotWritten:
            # The caller changed the conference in place: what is in memory goes back to what
            # the file holds (what the daemon was given beyond it is a leftover the next
            # reconciliation deletes).
            self._reload(conference_id)
            raise
        await super().put(conference, events)

    async def delete(self, conference_id: str, events: Sequence[Event] = ()) -> None:
        self._write([("DELETE FROM conferences WHERE conference_id = ?", (conference_id,)),
                     ("DELETE FROM events WHERE conference_id = ?", (conference_id,))])
        await super().delete(conference_id, events)

    def close(self) -> None:
        self._db.close()


def _open(path: Path) -> sqlite3.Connection:
    """The database at `path`, made or migrated to SCHEMA_VERSION; StoreError otherwise."""
    if path.exists() and not path.is_file():
        raise StoreError(f"{path} is not a file: --store needs a path to a SQLite file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every transaction is explicit (BEGIN ... COMMIT in `transaction`).
        db = sqlite3.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as error:
        raise StoreError(f"cannot open the state file {path}: {error}") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id != APPLICATION_ID and (application_id or tables):
            raise StoreError(f"{path} is a SQLite file, but not Charter's state: give --store another path")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {version}, newer than this controller's {SCHEMA_VERSION}: "
                             "run the controller version that wrote it (or a newer one)")
        problems = db.execute("PRAGMA quick_check").fetchall()
        if problems != [("ok",)]:
            raise StoreError(f"{path} is damaged ({problems[0][0]}): restore it from a backup, or move it away "
                             "to start empty")
        _migrate(db, version, path, log.info)
    except sqlite3.DatabaseError as error:
        db.close()
        raise StoreError(f"{path} is not a usable SQLite database ({error}): restore it from a backup, or move "
                         "it away to start empty") from None
    except StoreError:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _migrate(db: sqlite3.Connection, version: int, path: Path, note: Callable[..., None]) -> None:
    if version == SCHEMA_VERSION:
        return
    with transaction(db):
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                db.execute(statement)
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    note("state file migrated" if version else "state file created",
         extra={"path": str(path), "from_version": version, "to_version": SCHEMA_VERSION})
