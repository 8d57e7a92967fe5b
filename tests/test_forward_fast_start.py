"""Fast start from the key-frame cache (Subscription.start_replay, replay): a video track's
cache keeps its latest key frame whole from its first packet on; a new route that waits for a
key frame its publisher does not send starts from that one instead, sent by the caller in
paced steps with the route's own numbers, while live packets wait in the cache until the
replay has caught up; then the route forwards live again, without a gap in its numbers."""
from __future__ import annotations

from forward_harness import Harness, Participant
from mediad._forward import Subscription, Track
from rtp import build_rtp, header_fields

VP8_KEY = b"\x10\x00"     # payload descriptor S=1 PID=0, then a payload header with P=0
VP8_DELTA = b"\x10\x01"   # the start of a delta frame (P=1)
VP8_MORE = b"\x00\x01"    # a later packet of a frame (S=0)
SSRC = 7
CACHE = 64


def publish(harness: Harness, cache: int = CACHE) -> tuple[Participant, Track]:
    publisher = harness.participant(name="publisher")
    return publisher, publisher.endpoint.add_track(SSRC, codec="VP8", cache_packets=cache)


def send(publisher: Participant, packets: list[tuple[int, int, bytes]]) -> None:
    """(sequence number, frame number, payload start) each, ninety 1/90000 s ticks a frame."""
    for seq, frame, start in packets:
        publisher.peer.send(build_rtp(seq, 3000 * frame, SSRC, start + b" packet %d" % seq))


def gop(first_seq: int, frames: int) -> list[tuple[int, int, bytes]]:
    """A key frame of two packets, then delta frames of one packet each."""
    packets = [(first_seq, 0, VP8_KEY), (first_seq + 1, 0, VP8_MORE)]
    packets += [(first_seq + 1 + f, f, VP8_DELTA) for f in range(1, frames)]
    return packets


def late_viewer(harness: Harness, track: Track) -> tuple[Participant, Subscription]:
    viewer = harness.participant(name="viewer")
    return viewer, track.subscribe(viewer.endpoint, 70, wait_for_key_frame=True)


def got(harness: Harness, viewer: Participant, count: int) -> list[bytes]:
    harness.wait(lambda: viewer.peer.drain() >= 0 and len(viewer.peer.plain) >= count, f"{count} packets")
    return viewer.peer.plain


def test_a_late_route_starts_from_the_cached_key_frame_and_goes_on_live(harness: Harness) -> None:
    publisher, track = publish(harness)
    send(publisher, gop(100, 20))  # 100-101: the key frame, 102-120: deltas
    harness.wait(lambda: track.highest_seq == 120, "the group of pictures")
    assert track.key_frames == 1
    viewer, sub = late_viewer(harness, track)
    send(publisher, [(121, 20, VP8_DELTA)])
    harness.wait(lambda: sub.dropped_waiting_key_frame == 1, "a delta frame held back")

    assert sub.start_replay() and sub.replaying
    assert sub.replay(5) == 17  # 100-104 sent; 105-121 left
    first = got(harness, viewer, 5)
    assert [p[12:].split(b" ")[-1] for p in first] == [b"100", b"101", b"102", b"103", b"104"]
    send(publisher, [(122, 21, VP8_DELTA)])  # live, during the replay: it waits in the cache
    harness.wait(lambda: track.highest_seq == 122, "a live packet")
    assert len(viewer.peer.plain) == 5
    assert sub.replay(100) == 0 and not sub.replaying
    send(publisher, [(123, 22, VP8_DELTA)])  # live again
    plain = got(harness, viewer, 24)

    assert [int(p[12:].split(b" ")[-1]) for p in plain] == list(range(100, 124))
    seqs = [header_fields(p)[0] for p in plain]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(24)], "one run of numbers, replay and live"
    assert {header_fields(p)[2] for p in plain} == {70}
    assert (sub.replayed, sub.packets) == (23, 24)


def test_nothing_to_replay_without_a_whole_key_frame_in_the_cache(harness: Harness) -> None:
    publisher, track = publish(harness, cache=8)
    viewer, sub = late_viewer(harness, track)
    send(publisher, [(10 + i, i, VP8_DELTA) for i in range(3)])  # no key frame yet
    harness.wait(lambda: sub.dropped_waiting_key_frame == 3, "deltas held back")
    assert not sub.start_replay() and sub.waiting_for_key_frame

    send(publisher, gop(20, 10))  # a key frame, then more than the 8 slots: its start is gone
    harness.wait(lambda: track.highest_seq == 30, "the group")
    assert track.key_frames == 1 and sub.packets == 11  # the route started from the live key frame
    other, late = late_viewer(harness, track)
    assert not late.start_replay() and late.waiting_for_key_frame
    assert other.peer.drain() == 0


def test_a_replay_the_cache_moved_past_waits_for_the_next_key_frame(harness: Harness) -> None:
    publisher, track = publish(harness, cache=16)
    send(publisher, gop(200, 6))  # 200-206
    harness.wait(lambda: track.highest_seq == 206, "the group")
    viewer, sub = late_viewer(harness, track)
    assert sub.start_replay()
    assert sub.replay(2) == 5
    send(publisher, [(207 + i, 6 + i, VP8_DELTA) for i in range(16)])  # 16 more: slot 202 is 218's now
    harness.wait(lambda: track.highest_seq == 222, "live packets")
    assert sub.replay(100) == -1 and sub.waiting_for_key_frame and not sub.replaying
    send(publisher, gop(300, 2))  # the next key frame: the route goes on from it, without a gap
    plain = got(harness, viewer, 5)
    assert [int(p[12:].split(b" ")[-1]) for p in plain] == [200, 201, 300, 301, 302]
    seqs = [header_fields(p)[0] for p in plain]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(5)]


def test_an_h264_key_frame_is_replayed_from_its_parameter_sets(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    track = publisher.endpoint.add_track(SSRC, codec="H264", cache_packets=CACHE)
    sps, pps, idr, delta = b"\x67\x42", b"\x68\xce", b"\x65\x88", b"\x41\x9a"
    send(publisher, [(50, 0, sps), (51, 0, pps), (52, 0, idr), (53, 1, delta), (54, 2, delta)])
    harness.wait(lambda: track.highest_seq == 54, "the group")
    assert track.key_frames == 1  # SPS and IDR of one key frame (one timestamp)
    viewer, sub = late_viewer(harness, track)
    assert sub.start_replay() and sub.replay(10) == 0
    assert [int(p[12:].split(b" ")[-1]) for p in got(harness, viewer, 5)] == [50, 51, 52, 53, 54]
