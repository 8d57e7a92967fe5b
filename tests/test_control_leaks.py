"""Join and leave again and again, through a durable controller and a real daemon: nothing
is left behind. After the cycles the daemon holds no endpoint (and so no socket, port or
SRTP session: its open files are what they were), the controller holds no conference in its
SQLite file (no row, no event), and neither process's open files grew.

bench/leaks.py runs the same for 10,000 cycles with figures; this is the short count."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from charter.v1 import controller_pb2 as pb
from charter.v1 import mediad_pb2
from processes import Process, cluster, conference_stub, mediad_stub
from waits import wait_until

CYCLES = 60


def open_files(process: Process) -> int:
    return len(os.listdir(f"/proc/{process.process.pid}/fd"))


def cycle(api: object, n: int) -> None:
    conference_id = f"leak-{n}"
    api.CreateConference(pb.CreateConferenceRequest(conference_id=conference_id), timeout=10)  # type: ignore[attr-defined]
    for name, kind in (("a", 1), ("b", 2)):
        request = pb.JoinRequest(conference_id=conference_id, participant_id=name)
        request.tracks.add(ssrc=1000 + kind, kind=kind, codec="VP8" if kind == 2 else "opus",
                           payload_type=96 if kind == 2 else 111, clock_rate=90000 if kind == 2 else 48000)
        api.Join(request, timeout=10)  # type: ignore[attr-defined]
    for name in ("a", "b"):  # the conference ends with its last participant
        api.Leave(pb.LeaveRequest(conference_id=conference_id, participant_id=name), timeout=10)  # type: ignore[attr-defined]


def test_join_and_leave_cycles_leave_nothing_behind(tmp_path: Path) -> None:
    store = tmp_path / "controller.sqlite3"
    with cluster(tmp_path, daemons=1, store=str(store)) as charter:
        api = conference_stub(charter.controller)
        daemon = charter.daemons[0]
        for n in range(10):  # warm up: connections (this test's to the daemon too), caches, the first ports
            cycle(api, n)
        mediad_stub(daemon).GetStats(mediad_pb2.GetStatsRequest(), timeout=10)
        before = open_files(charter.controller), open_files(daemon)
        for n in range(10, 10 + CYCLES):
            cycle(api, n)
        stats = mediad_stub(daemon).GetStats(mediad_pb2.GetStatsRequest(), timeout=10)
        assert (stats.endpoint_count, stats.track_count, stats.subscription_count) == (0, 0, 0)
        assert stats.totals.packets_in == 0  # nothing was sent: the counts are the endpoints' only
        assert not api.ListConferences(pb.ListConferencesRequest(), timeout=10).conferences
        # A connection or socket may be closing this very moment: wait for the counts to settle.
        wait_until(lambda: (open_files(charter.controller), open_files(daemon)) <= before, timeout=10,
                   what=f"the open files of (controller, daemon) to be back at {before}")
        with sqlite3.connect(store) as db:
            rows = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("conferences", "events")]
        assert rows == [0, 0]
