"""Control calls while packets flow: subscribe, pause, resume, unsubscribe, remove_track,
rekey and close, with a sender streaming all along."""

from __future__ import annotations

import asyncio
import socket

import pytest

from forward_harness import LOCALHOST, Harness, Participant, counts, new_key
from rtp import build_rtp, header_fields, receiver_session, sender_session, seq_diff

TRACK_SSRC = 0x57AE4


class Streamer:
    """Sends numbered packets from a publisher's peer, a few per loop tick, bounded in count."""

    def __init__(self, harness: Harness, publisher: Participant, ssrc: int = TRACK_SSRC, limit: int = 20000):
        self.harness = harness
        self.publisher = publisher
        self.ssrc = ssrc
        self.limit = limit
        self.sent = 0
        self.running = True
        self.task = harness.loop.create_task(self._run())

    async def _run(self) -> None:
        while self.running and self.sent < self.limit:
            for _ in range(4):
                self.publisher.peer.send(build_rtp(self.sent & 0xFFFF, 3000 * self.sent, self.ssrc, b"#%d" % self.sent))
                self.sent += 1
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        self.running = False
        self.harness.loop.run_until_complete(self.task)


def grow(harness: Harness, who: Participant, count: int) -> None:
    """Wait until `who`'s peer has received `count` more packets."""
    target = len(who.peer.received) + count
    harness.wait(lambda: len(who.peer.received) >= target, f"{count} more packets at {who.endpoint!r}")


def contiguous(seqs: list[int]) -> bool:
    return all(seq_diff(b, a) == 1 for a, b in zip(seqs, seqs[1:], strict=False))


def bindable(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOCALHOST, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def test_subscribe_pause_resume_unsubscribe_while_streaming(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    a, b, c, d = (harness.participant(name=n) for n in "abcd")
    track = publisher.endpoint.add_track(TRACK_SSRC)
    sub_a = track.subscribe(a.endpoint, 0xA)
    sub_c = track.subscribe(c.endpoint, 0xC)
    sub_d = track.subscribe(d.endpoint, 0xD)
    streamer = Streamer(harness, publisher)

    grow(harness, a, 20)
    sub_b = track.subscribe(b.endpoint, 0xB)
    grow(harness, b, 20)

    sub_c.pause()
    harness.drain()
    at_pause = len(c.peer.received)
    grow(harness, a, 30)
    harness.drain()
    assert len(c.peer.received) == at_pause
    sub_c.resume()
    grow(harness, c, 20)

    track.unsubscribe(sub_d)
    assert not sub_d.active
    assert sub_d not in track.subscriptions and sub_d not in d.endpoint.subscriptions
    harness.drain()
    at_unsubscribe = len(d.peer.received)
    frozen = sub_d.packets
    grow(harness, a, 30)

    streamer.stop()
    harness.wait(lambda: publisher.endpoint.counters.packets_in == streamer.sent, "every streamed packet accepted")
    harness.drain()
    sent = streamer.sent
    assert len(d.peer.received) == at_unsubscribe == frozen
    assert counts(publisher.endpoint)["drops"] == dict.fromkeys(counts(publisher.endpoint)["drops"], 0)
    assert track.packets == sent

    # a saw everything, numbered as sent.
    assert [header_fields(p)[0] for p in a.peer.plain] == [i & 0xFFFF for i in range(sent)]
    assert sub_a.packets == sent
    # b joined mid-stream: a contiguous tail ending with the last packet.
    b_seqs = [header_fields(p)[0] for p in b.peer.plain]
    assert contiguous(b_seqs) and b_seqs[-1] == (sent - 1) & 0xFFFF
    assert sub_b.packets == len(b_seqs) < sent
    # c paused and resumed: no gap in its numbering; every packet either sent or dropped paused.
    c_plain = c.peer.plain
    assert contiguous([header_fields(p)[0] for p in c_plain])
    assert sub_c.packets == len(c_plain)
    assert sub_c.packets + sub_c.dropped_paused == sent
    assert sub_c.dropped_paused > 0
    # d: what it got before unsubscribing, contiguous from the first packet.
    assert [header_fields(p)[0] for p in d.peer.plain] == list(range(at_unsubscribe))
    for who, sub in ((a, sub_a), (b, sub_b), (c, sub_c), (d, sub_d)):
        assert who.endpoint.counters.packets_out == len(who.peer.received) == sub.packets


def test_remove_track_while_streaming(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    a = harness.participant(name="a")
    track = publisher.endpoint.add_track(TRACK_SSRC)
    sub = track.subscribe(a.endpoint, 0xA)
    streamer = Streamer(harness, publisher)
    grow(harness, a, 20)

    publisher.endpoint.remove_track(track)
    assert not sub.active
    assert track not in publisher.endpoint.tracks
    assert track.subscriptions == [] and a.endpoint.subscriptions == []
    harness.drain()
    at_removal = len(a.peer.received)
    harness.wait(lambda: publisher.endpoint.counters.dropped("unknown_ssrc") >= 30, "packets of the removed SSRC")
    harness.drain()
    assert len(a.peer.received) == at_removal

    # The SSRC can be added again and routed anew.
    again = publisher.endpoint.add_track(TRACK_SSRC)
    again.subscribe(a.endpoint, 0xA)
    grow(harness, a, 20)
    streamer.stop()
    harness.wait(
        lambda: (
            publisher.endpoint.counters.packets_in + publisher.endpoint.counters.dropped("unknown_ssrc")
            == streamer.sent
        ),
        "every streamed packet accounted for",
    )
    harness.drain()
    stats = counts(publisher.endpoint)
    assert stats["packets_in"] == track.packets + again.packets
    assert len(a.peer.plain) == a.endpoint.counters.packets_out == stats["packets_in"]


def test_close_endpoints_while_streaming(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    other_publisher = harness.participant(name="other publisher")
    a, b = harness.participant(name="a"), harness.participant(name="b")
    track = publisher.endpoint.add_track(TRACK_SSRC)
    other_track = other_publisher.endpoint.add_track(TRACK_SSRC)
    sub_a = track.subscribe(a.endpoint, 0xA)
    sub_b = track.subscribe(b.endpoint, 0xB)
    other_sub_a = other_track.subscribe(a.endpoint, 0xA2)
    streamer = Streamer(harness, publisher)
    other_streamer = Streamer(harness, other_publisher)
    grow(harness, b, 20)

    # Closing a subscriber's endpoint: its subscriptions go, the port is free, the rest flows.
    b_port = b.endpoint.local_address[1]
    b.endpoint.close()
    assert b.endpoint.closed and not sub_b.active
    assert track.subscriptions == [sub_a]
    assert b.endpoint not in harness.forwarder.endpoints
    b.endpoint.close()  # idempotent
    assert bindable(b_port)
    harness.drain()
    at_close = len(b.peer.received)
    grow(harness, a, 40)
    harness.drain()
    assert len(b.peer.received) == at_close

    # Closing the publisher's endpoint while its peer keeps sending to the closed port.
    publisher_port = publisher.endpoint.local_address[1]
    publisher.endpoint.close()
    assert publisher.endpoint.closed and not sub_a.active and publisher.endpoint.tracks == []
    assert other_sub_a.active
    assert bindable(publisher_port)
    harness.drain()
    from_publisher = sum(1 for p in a.peer.plain if header_fields(p)[2] == 0xA)
    grow(harness, a, 40)  # still flowing from the other publisher
    streamer.stop()
    other_streamer.stop()
    harness.drain()
    assert sum(1 for p in a.peer.plain if header_fields(p)[2] == 0xA) == from_publisher
    assert other_sub_a.packets == sum(1 for p in a.peer.plain if header_fields(p)[2] == 0xA2)

    harness.forwarder.close()
    assert harness.forwarder.endpoints == []
    for who in (a, other_publisher):
        assert who.endpoint.closed
    assert bindable(a.peer.target[1]) and bindable(other_publisher.peer.target[1])


def test_control_errors(harness: Harness) -> None:
    publisher = harness.participant()
    a = harness.participant()
    track = publisher.endpoint.add_track(1)
    with pytest.raises(ValueError):
        publisher.endpoint.add_track(1)
    with pytest.raises(ValueError):
        track.subscribe(publisher.endpoint, 5)
    track.subscribe(a.endpoint, 5)
    with pytest.raises(ValueError):
        track.subscribe(a.endpoint, 6)
    second = publisher.endpoint.add_track(2)
    with pytest.raises(ValueError):
        second.subscribe(a.endpoint, 5)
    assert second.subscribe(a.endpoint, 6).ssrc == 6


def test_rekey(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    a = harness.participant(name="a")
    track = publisher.endpoint.add_track(TRACK_SSRC)
    track.subscribe(a.endpoint, 0xA)
    harness.deliver(
        publisher.peer, [publisher.peer.protect(build_rtp(1, 0, TRACK_SSRC, b"old keys"))], publisher.endpoint
    )
    harness.wait(lambda: len(a.peer.received) == 1, "a packet under the old keys")

    suite = "AEAD_AES_128_GCM"
    publisher_rx, a_tx = new_key(suite), new_key(suite)
    publisher.endpoint.set_keys(rx_suite=suite, rx_key=publisher_rx, tx_suite=suite, tx_key=new_key(suite))
    a.endpoint.set_keys(rx_suite=suite, rx_key=new_key(suite), tx_suite=suite, tx_key=a_tx)
    stale = publisher.peer.protect(build_rtp(2, 0, TRACK_SSRC, b"old key"))
    fresh = sender_session(suite, publisher_rx).protect(build_rtp(3, 3000, TRACK_SSRC, b"new keys"))
    harness.deliver(publisher.peer, [stale, fresh], publisher.endpoint)
    assert publisher.endpoint.counters.dropped("auth_failed") == 1
    harness.wait(lambda: len(a.peer.received) == 2, "the packet under the new keys")
    out = receiver_session(suite, a_tx).unprotect(a.peer.received[1].datagram)
    assert out[12:] == b"new keys" and header_fields(out) == (3, 3000, 0xA)
    assert a.peer.received[1].plain is None  # the old key no longer decrypts
