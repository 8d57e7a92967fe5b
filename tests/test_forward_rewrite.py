"""Sequence number and timestamp rewrite: from a table through Rewriter (the compiled one and
the reference), then end to end through real sockets."""
from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import pytest

import reference_forwarder
from forward_harness import Harness, Participant, counts
from mediad import _forward
from rtp import build_rtp, header_fields, ts_diff

TS_TOP = 1 << 32


class P(NamedTuple):
    """One rewrite() call and what it must return."""

    source: int
    seq: int
    ts: int
    now: float
    out: tuple[int, int] | None
    clock_rate: int = 90000


PAUSE = "pause"
RESUME = "resume"

# Every `now` difference used in a rebase is exact in binary floating point.
CASES: dict[str, list[Any]] = {
    "first packet maps with offset 0": [
        P(0, 100, 5000, 1.0, (100, 5000)),
        P(0, 101, 8000, 1.0, (101, 8000)),
    ],
    "sequence wraps at 65535": [
        P(0, 65533, 1000, 1.0, (65533, 1000)),
        P(0, 65534, 4000, 1.0, (65534, 4000)),
        P(0, 65535, 7000, 1.0, (65535, 7000)),
        P(0, 0, 10000, 1.0, (0, 10000)),
        P(0, 1, 13000, 1.0, (1, 13000)),
    ],
    "timestamp wraps at 2^32": [
        P(0, 10, TS_TOP - 3000, 1.0, (10, TS_TOP - 3000)),
        P(0, 11, 0, 1.0, (11, 0)),
        P(0, 12, 3000, 1.0, (12, 3000)),
    ],
    "a gap stays a gap": [
        P(0, 100, 0, 1.0, (100, 0)),
        P(0, 101, 3000, 1.0, (101, 3000)),
        P(0, 110, 30000, 1.0, (110, 30000)),
        P(0, 111, 33000, 1.0, (111, 33000)),
    ],
    "reordered packets keep their numbers": [
        P(0, 100, 0, 1.0, (100, 0)),
        P(0, 103, 9000, 1.0, (103, 9000)),
        P(0, 101, 3000, 1.0, (101, 3000)),
        P(0, 102, 6000, 1.0, (102, 6000)),
        P(0, 104, 12000, 1.0, (104, 12000)),
    ],
    "a duplicate maps like the original": [
        P(0, 100, 0, 1.0, (100, 0)),
        P(0, 101, 3000, 1.0, (101, 3000)),
        P(0, 101, 3000, 1.0, (101, 3000)),
    ],
    "a late packet far behind but within the mapping is forwarded": [
        P(0, 1000, 0, 1.0, (1000, 0)),
        P(0, 3500, 7500, 1.0, (3500, 7500)),
        P(0, 1200, 600, 1.0, (1200, 600)),
    ],
    "packets older than the first one are stale": [
        P(0, 100, 0, 1.0, (100, 0)),
        P(0, 99, 0, 1.0, None),
    ],
    "a jump of exactly MAX_DROPOUT is loss, not a restart": [
        P(0, 100, 1000, 1.0, (100, 1000)),
        P(0, 3100, 2000, 1.5, (3100, 2000)),
    ],
    "a jump beyond MAX_DROPOUT is a restart, continuing the stream": [
        P(0, 100, 1000, 1.0, (100, 1000)),
        P(0, 101, 4000, 1.0, (101, 4000)),
        # Rebase: sequence right after the last one sent, timestamp advanced by 0.5 s.
        P(0, 3102, 777, 1.5, (102, 4000 + 45000)),
        P(0, 3103, 3777, 1.5, (103, 52000)),
        # Packets from before the restart predate the mapping: stale.
        P(0, 101, 4000, 1.5, None),
        P(0, 3101, 0, 1.5, None),
        P(0, 3105, 9777, 1.6, (105, 58000)),
        P(0, 3104, 6777, 1.6, (104, 55000)),
    ],
    "a restart wraps the timestamp": [
        P(0, 50, TS_TOP - 10, 2.0, (50, TS_TOP - 10)),
        P(0, 5000, 123, 2.25, (51, 22490)),
        P(0, 5001, 3123, 2.25, (52, 25490)),
    ],
    "a rebase wraps the sequence": [
        P(0, 65535, 0, 1.0, (65535, 0)),
        P(1, 7, 500, 1.0, (0, 1)),
        P(1, 8, 3500, 1.0, (1, 3001)),
    ],
    "a source change continues the stream": [
        P(0, 100, 1000, 1.0, (100, 1000)),
        P(0, 101, 4000, 1.0, (101, 4000)),
        # Lower sequence number than before: the new source still rebases, it is not stale.
        P(1, 50, 90000, 1.25, (102, 4000 + 22500)),
        P(1, 51, 93000, 1.25, (103, 29500)),
        P(1, 49, 87000, 1.25, None),
        P(1, 60, 120000, 1.5, (112, 56500)),
    ],
    "a source change at the same instant advances the timestamp by one": [
        P(0, 100, 1000, 1.0, (100, 1000)),
        P(1, 100, 1000, 1.0, (101, 1001)),
    ],
    "the rebase advance follows the clock rate": [
        P(0, 10, 960, 1.0, (10, 960), 48000),
        P(1, 20, 0, 1.5, (11, 960 + 24000), 48000),
    ],
    "a late packet does not move the rebase base": [
        P(0, 100, 0, 1.0, (100, 0)),
        P(0, 105, 15000, 1.0, (105, 15000)),
        P(0, 102, 6000, 1.5, (102, 6000)),
        # Rebase from packet 105 at t=1.0, not from the late 102 at t=1.5.
        P(1, 1, 1, 2.0, (106, 15000 + 90000)),
    ],
    "pause and resume continue without a gap": [
        P(0, 100, 1000, 1.0, (100, 1000)),
        P(0, 101, 4000, 1.0, (101, 4000)),
        PAUSE,
        P(0, 102, 7000, 1.1, None),
        P(0, 103, 10000, 1.2, None),
        RESUME,
        P(0, 110, 31000, 2.0, (102, 4000 + 90000)),
        P(0, 111, 34000, 2.0, (103, 97000)),
        # From before the resume: stale.
        P(0, 109, 28000, 2.0, None),
    ],
    "paused before the first packet": [
        PAUSE,
        P(0, 5, 5, 1.0, None),
        RESUME,
        P(0, 6, 3000, 1.0, (6, 3000)),
        P(0, 7, 6000, 1.0, (7, 6000)),
    ],
}

IMPLEMENTATIONS = {"compiled": _forward.Rewriter, "reference": reference_forwarder.Rewriter}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_rewrite_table(implementation: str, case: str) -> None:
    rewriter = IMPLEMENTATIONS[implementation](0x11223344)
    for i, step in enumerate(CASES[case]):
        if step == PAUSE:
            rewriter.pause()
        elif step == RESUME:
            rewriter.resume()
        else:
            got = rewriter.rewrite(step.source, step.seq, step.ts, step.now, step.clock_rate)
            assert got == step.out, f"step {i}: {step}"


def test_compiled_and_reference_rewriters_agree_on_a_long_random_walk() -> None:
    import random

    rng = random.Random(7)
    compiled, reference = _forward.Rewriter(), reference_forwarder.Rewriter()
    seq, ts, source, now = 60000, TS_TOP - 100000, 0, 1.0
    for _ in range(20000):
        r = rng.random()
        if r < 0.002:
            source += 1
            seq, ts = rng.randrange(65536), rng.randrange(TS_TOP)
        elif r < 0.004:
            seq = (seq + rng.randrange(3001, 30000)) & 0xFFFF
        elif r < 0.006:
            for rewriter in (compiled, reference):
                rewriter.pause()
        elif r < 0.008:
            for rewriter in (compiled, reference):
                rewriter.resume()
        delta = rng.choice([1, 1, 1, 1, 2, 5, -1, -3, 0, -40])
        seq = (seq + delta) & 0xFFFF
        ts = (ts + 3000 * delta) & 0xFFFFFFFF
        now += rng.choice([0.0, 0.0078125, 0.03125])
        assert compiled.rewrite(source, seq, ts, now) == reference.rewrite(source, seq, ts, now)


# --- end to end ------------------------------------------------------------------------------

def setup_pair(harness: Harness, ssrc: int = 0x0A0A0A0A) -> tuple[Participant, Participant, Any, Any]:
    publisher = harness.participant(name="publisher")
    subscriber = harness.participant(name="subscriber")
    track = publisher.endpoint.add_track(ssrc)
    subscription = track.subscribe(subscriber.endpoint, 0x5B5B5B5B)
    return publisher, subscriber, track, subscription


def send_all(harness: Harness, publisher: Participant, packets: list[bytes]) -> None:
    before = publisher.endpoint.counters.packets_in
    for packet in packets:
        publisher.peer.send(packet)
    harness.wait(
        lambda: publisher.endpoint.counters.packets_in == before + len(packets),
        f"{len(packets)} packets accepted",
    )
    harness.drain()


def out_headers(subscriber: Participant) -> list[tuple[int, int, int]]:
    return [header_fields(p) for p in subscriber.peer.plain]


def pause_for(harness: Harness, seconds: float) -> None:
    harness.loop.run_until_complete(asyncio.sleep(seconds))


def test_wrap_around_end_to_end(harness: Harness) -> None:
    publisher, subscriber, _, subscription = setup_pair(harness)
    seqs = [(65530 + i) & 0xFFFF for i in range(12)]
    stamps = [(TS_TOP - 4 * 3000 + 3000 * i) & 0xFFFFFFFF for i in range(12)]
    packets = [build_rtp(s, t, 0x0A0A0A0A, b"wrap %d" % s) for s, t in zip(seqs, stamps, strict=False)]
    send_all(harness, publisher, packets)
    assert out_headers(subscriber) == [(s, t, 0x5B5B5B5B) for s, t in zip(seqs, stamps, strict=False)]
    assert [p[12:] for p in subscriber.peer.plain] == [p[12:] for p in packets]
    stats = counts(subscription)
    assert (stats["last_seq"], stats["last_timestamp"]) == (seqs[-1], stamps[-1])


def test_gap_and_reordering_end_to_end(harness: Harness) -> None:
    publisher, subscriber, _, subscription = setup_pair(harness)
    order = [10, 11, 12, 20, 21, 30, 32, 31, 33]
    send_all(harness, publisher, [build_rtp(s, 160 * s, 0x0A0A0A0A, b"%d" % s) for s in order])
    assert out_headers(subscriber) == [(s, 160 * s, 0x5B5B5B5B) for s in order]
    assert subscription.last_seq == 33


def test_restart_beyond_max_dropout_end_to_end(harness: Harness) -> None:
    publisher, subscriber, _, _ = setup_pair(harness)
    before = time.monotonic()
    send_all(harness, publisher, [build_rtp(s, 3000 * s, 0x0A0A0A0A, b"a") for s in (100, 101, 102)])
    pause_for(harness, 0.05)
    send_all(harness, publisher, [build_rtp(s, 7 + 3000 * s, 0x0A0A0A0A, b"b") for s in (5000, 5001, 5003)])
    after = time.monotonic()
    headers = out_headers(subscriber)
    assert [h[0] for h in headers] == [100, 101, 102, 103, 104, 106]
    check_rebase_advance(headers[2][1], headers[3][1], before, after, 90000)
    assert ts_diff(headers[4][1], headers[3][1]) == 3000
    assert ts_diff(headers[5][1], headers[4][1]) == 6000


def check_rebase_advance(last_ts: int, rebased_ts: int, before: float, after: float, rate: int) -> None:
    """The timestamp after a wall-time rebase advanced by the elapsed time: at least 1 tick,
    at most the time between `before` (ahead of the last packet before the rebase) and
    `after` (once the rebased packet was out)."""
    advance = ts_diff(rebased_ts, last_ts)
    assert 1 <= advance <= int((after - before) * rate) + 1, (advance, after - before)


def test_publisher_ssrc_change_end_to_end(harness: Harness) -> None:
    publisher, subscriber, track, subscription = setup_pair(harness)
    before = time.monotonic()
    send_all(harness, publisher, [build_rtp(s, 1000 + 3000 * s, 0x0A0A0A0A, b"old") for s in range(200, 205)])
    track.set_ssrc(0x0B0B0B0B)
    assert track.ssrc == 0x0B0B0B0B
    # The old SSRC is no longer a track of the endpoint.
    late = publisher.peer.send(build_rtp(205, 0, 0x0A0A0A0A, b"old"))
    harness.settle(publisher.endpoint, 6)
    assert publisher.endpoint.counters.dropped("unknown_ssrc") == 1
    assert len(late) > 0
    pause_for(harness, 0.02)
    new = [build_rtp(s, 55555 + 3000 * (s - 9), 0x0B0B0B0B, b"new %d" % s) for s in (9, 10, 11, 13, 12)]
    send_all(harness, publisher, new)
    after = time.monotonic()
    headers = out_headers(subscriber)
    assert [h[0] for h in headers] == [200, 201, 202, 203, 204, 205, 206, 207, 209, 208]
    assert {h[2] for h in headers} == {0x5B5B5B5B}
    check_rebase_advance(headers[4][1], headers[5][1], before, after, 90000)
    assert [ts_diff(h[1], headers[5][1]) for h in headers[5:]] == [0, 3000, 6000, 12000, 9000]
    assert [p[12:] for p in subscriber.peer.plain[5:]] == [p[12:] for p in new]
    assert subscription.dropped_stale == 0


def test_pause_resume_end_to_end(harness: Harness) -> None:
    publisher, subscriber, track, subscription = setup_pair(harness)
    witness = harness.participant(name="witness")
    track.subscribe(witness.endpoint, 0x77)
    before = time.monotonic()
    send_all(harness, publisher, [build_rtp(s, 3000 * s, 0x0A0A0A0A, b"before") for s in range(1, 6)])
    subscription.pause()
    assert subscription.paused
    # 9 is held back, to arrive late after the resume.
    send_all(harness, publisher, [build_rtp(s, 3000 * s, 0x0A0A0A0A, b"paused") for s in (6, 7, 8, 10)])
    assert len(subscriber.peer.received) == 5
    assert subscription.dropped_paused == 4
    pause_for(harness, 0.02)
    subscription.resume()
    assert not subscription.paused
    send_all(harness, publisher, [build_rtp(s, 3000 * s, 0x0A0A0A0A, b"after") for s in (11, 12, 14, 13)])
    after = time.monotonic()
    headers = out_headers(subscriber)
    # No gap after the resume: the next number after the last one sent; gaps after it kept.
    assert [h[0] for h in headers] == [1, 2, 3, 4, 5, 6, 7, 9, 8]
    check_rebase_advance(headers[4][1], headers[5][1], before, after, 90000)
    assert [p[12:] for p in subscriber.peer.plain] == [b"before"] * 5 + [b"after"] * 4
    # The other subscriber never paused and saw everything, numbered as sent.
    assert [h[0] for h in out_headers(witness)] == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 14, 13]
    # A packet from before the resume (never sent yet, so not a replay) predates the new mapping.
    send_all(harness, publisher, [build_rtp(9, 3000 * 9, 0x0A0A0A0A, b"late")])
    assert len(subscriber.peer.received) == 9
    assert subscription.dropped_stale == 1
    assert out_headers(witness)[-1][0] == 9
