"""The durable store (controller/sqlite_store.py): a conference written before the call
returns reads back whole from a new store on the same file (a restarted controller), with
its participants, subscriptions, browser sessions and keys; keys never rest in clear; a
file that is not Charter's, damaged, of a newer schema, or a record that does not read back
is a start-up error naming the file, never silent loss."""
from __future__ import annotations

import asyncio
import base64
import copy
import json
import sqlite3
from pathlib import Path

import pytest

from charter.endpoints import DtlsFingerprint
from charter.subscriptions import Subscription
from charter.suites import SrtpSuite, generate_key
from charter.tracks import Track
from charter.webrtc_sdp import Route, Transport, parse_offer, render_answer
from controller.events import Event, ParticipantLeft, TrackAdded
from controller.model import Conference, Participant, WebRtcSession
from controller.sqlite_store import SCHEMA_VERSION, SqliteStore, StateNotWritten, StoreError
from controller.store import EVENTS_KEPT, MemoryStore

DATA = Path(__file__).with_name("data")
VP8 = Track(1111, "video", "VP8", 96, 90000, name="cam")
OPUS = Track(2222, "audio", "opus", 111, 48000, 2, name="mic")


def participant(conference_id: str, participant_id: str, tracks: tuple[Track, ...]) -> Participant:
    suite = SrtpSuite.AEAD_AES_128_GCM
    return Participant(
        conference_id=conference_id, participant_id=participant_id, display_name=participant_id.title(),
        tracks=tracks, suite=suite, send_key=generate_key(suite), receive_key=generate_key(suite),
        receive_address=("127.0.0.1", 40000), daemon_id="mediad-0", endpoint_id=f"{conference_id}/{participant_id}",
        media_address=("127.0.0.1", 20000), joined_at=1234.5,
    )


def a_conference() -> Conference:
    conference = Conference("standup", "Daily", "mediad-0", persistent=True, created_at=1000.0, sequence=7)
    alice = participant("standup", "alice", (VP8,))
    bob = participant("standup", "bob", (OPUS,))
    alice.subscriptions[("bob", OPUS.ssrc)] = Subscription("bob", OPUS, 0xB0B)
    # Carol is a browser: no SDES keys, a session with routes and an outstanding offer.
    offer = parse_offer((DATA / "chromium_offer.sdp").read_text())
    carol = participant("standup", "carol", offer.tracks())
    carol.send_key = carol.receive_key = b""
    transport = Transport("Ab12", "p" * 24, DtlsFingerprint("sha-256", ":".join(["AB"] * 32)), ("127.0.0.1", 20002))
    route = Route("r0", "alice", VP8, 0xCA1, 96, 0xCA2, 97)
    carol.subscriptions[("alice", VP8.ssrc)] = Subscription("alice", VP8, 0xCA1, 96, 0xCA2, 97)
    carol.webrtc = WebRtcSession(offer, transport, render_answer(offer, transport), routes=[route], version=1,
                                 outstanding=(route,), outstanding_sdp="v=0 offer 1")
    for p in (alice, bob, carol):
        conference.participants[p.participant_id] = p
    return conference


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_a_conference_reads_back_whole_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "controller.sqlite3"
    first = SqliteStore(path)
    written = a_conference()
    assert run(first.add(written)) is True
    assert run(first.add(a_conference())) is False  # its id is taken
    first.close()  # the controller is killed: nothing but the file is left

    again = SqliteStore(path)
    read = run(again.get("standup"))
    assert read == written
    assert run(again.ids()) == ["standup"] and [c.conference_id for c in run(again.page())] == ["standup"]
    assert run(again.daemon_usage())["mediad-0"].endpoints == 3
    run(again.delete("standup"))
    again.close()
    assert run(SqliteStore(path).get("standup")) is None


def test_keys_never_rest_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    store = SqliteStore(path)
    conference = a_conference()
    run(store.put(conference))
    store.close()
    keys = [p.send_key for p in conference.participants.values() if p.send_key]
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("controller.sqlite3-*"))
    for key in keys:
        assert key not in raw and base64.b64encode(key) not in raw
    key_file = tmp_path / "controller.sqlite3.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # Without its key file the keys do not read back: a clear error, the file untouched.
    key_file.rename(tmp_path / "elsewhere.key")
    with pytest.raises(StoreError, match="does not unseal"):
        SqliteStore(path)


def test_a_file_that_is_not_charters_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(StoreError, match="not Charter's state"):
        SqliteStore(other)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database at all, " * 200)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        SqliteStore(garbage)
    assert garbage.read_bytes().startswith(b"this is not a database"), "the file is kept as it was"


def test_a_newer_schema_is_refused_and_an_older_one_migrated(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this controller"):
        SqliteStore(path)


def test_a_record_that_does_not_read_back_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    store = SqliteStore(path)
    run(store.put(a_conference()))
    store.close()
    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT record FROM conferences").fetchone()
        record = json.loads(text)
        del record["participants"][0]["tracks"]
        db.execute("UPDATE conferences SET record = ?", (json.dumps(record),))
    with pytest.raises(StoreError, match="'standup' does not read back.*restore it from a backup"):
        SqliteStore(path)


def test_a_write_that_fails_is_unavailable_and_keeps_the_last_state(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    store = SqliteStore(path)
    run(store.put(a_conference()))
    written = copy.deepcopy(run(store.get("standup")))
    with sqlite3.connect(path) as other:
        other.execute("BEGIN EXCLUSIVE")  # the file cannot be written (as with a full disk)
        store._db.execute("PRAGMA busy_timeout=50")
        with pytest.raises(StateNotWritten, match="cannot write its state"):
            run(store.delete("standup"))
        changed = run(store.get("standup"))
        del changed.participants["bob"]  # a change made in place by the caller ...
        with pytest.raises(StateNotWritten):
            run(store.put(changed))
        other.execute("ROLLBACK")
    assert run(store.get("standup")) == written, "... is undone in memory too"
    store.close()
    assert run(SqliteStore(path).get("standup")) == written


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_both_stores_keep_the_same_contract(kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "c.sqlite3")
    for conference_id in ("b", "a", "c"):
        assert run(store.add(Conference(conference_id, "", "d1", persistent=False, created_at=0.0)))
    assert run(store.ids()) == ["a", "b", "c"]
    assert [c.conference_id for c in run(store.page(after="a", limit=1))] == ["b"]
    run(store.delete("b"))
    run(store.delete("nowhere"))
    assert run(store.ids()) == ["a", "c"] and run(store.get("b")) is None
    assert run(store.daemon_usage())["d1"].conferences == 2
    store.close()


def test_events_outlive_a_restart_and_only_the_last_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    store = SqliteStore(path)
    conference = Conference("ev", "", "d1", persistent=False, created_at=0.0)
    for n in range(1, EVENTS_KEPT + 11):
        conference.sequence = n
        run(store.put(conference, [Event(n, float(n), ParticipantLeft(f"p{n}"))]))
    run(store.put(conference, [Event(EVENTS_KEPT + 11, 1.0, TrackAdded("x", VP8, {"y": 5}))]))
    conference.sequence = EVENTS_KEPT + 11
    run(store.put(conference))
    store.close()
    again = SqliteStore(path)
    assert run(again.events_after("ev", 5)) is None, "the first ten are no longer kept"
    tail = run(again.events_after("ev", EVENTS_KEPT + 9))
    assert [e.sequence for e in tail] == [EVENTS_KEPT + 10, EVENTS_KEPT + 11]
    assert tail[1].body == TrackAdded("x", VP8, {"y": 5})
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == EVENTS_KEPT
    run(again.delete("ev"))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_file_of_schema_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    SqliteStore(path).close()
    written = Conference("old", "", "d1", persistent=True, created_at=0.0)
    store = SqliteStore(path)
    run(store.put(written))
    store.close()
    with sqlite3.connect(path) as db:  # what a controller of schema 1 left
        db.execute("DROP TABLE events")
        db.execute("PRAGMA user_version=1")
    migrated = SqliteStore(path)
    assert run(migrated.get("old")) == written
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0
