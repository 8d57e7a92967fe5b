"""A receiver that has not proven it wants the media (Endpoint.require_proof) is sent a
small budget of packets, then nothing, each held-back packet counted, until a packet that
authenticates with its key arrives from its own address. Strangers' packets, packets from
another address and forgeries prove nothing."""
from __future__ import annotations

import socket

from forward_harness import Harness, Participant, Peer, new_key
from rtp import build_rtcp_receiver_report, build_rtp, header_fields

TRACK_SSRC = 0x5EED0001
OUT_SSRC = 0x0000B0D6
BUDGET = 5


def peer_at(harness: Harness, of: Participant, host: str, *, send_key: bytes | None = None) -> Peer:
    """A peer of `of`'s endpoint whose socket is bound to `host` (another loopback address)."""
    peer = harness.extra_peer(of, send_key=send_key)
    peer.sock.close()
    peer.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.sock.bind((host, 0))
    peer.sock.setblocking(False)
    return peer


class Scene:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.publisher = harness.participant(name="publisher")
        self.receiver = harness.participant(name="receiver")
        self.track = self.publisher.endpoint.add_track(TRACK_SSRC, cache_packets=64)
        self.subscription = self.track.subscribe(self.receiver.endpoint, OUT_SSRC)
        self.seq = 100

    def publish(self, count: int) -> None:
        before = self.publisher.endpoint.counters.packets_in
        for _ in range(count):
            self.seq += 1
            self.publisher.peer.send(build_rtp(self.seq, 90 * self.seq, TRACK_SSRC, b"media %d" % self.seq))
        self.harness.wait(lambda: self.publisher.endpoint.counters.packets_in == before + count,
                          f"{count} packets from the publisher")
        self.harness.drain()

    def received_seqs(self) -> list[int]:
        return [header_fields(p)[0] for p in self.receiver.peer.plain]


def test_an_unproven_receiver_gets_its_budget_then_nothing(harness: Harness) -> None:
    scene = Scene(harness)
    endpoint = scene.receiver.endpoint
    endpoint.require_proof(BUDGET)
    assert not endpoint.proven and endpoint.budget_left == BUDGET

    scene.publish(BUDGET + 3)
    assert len(scene.receiver.peer.received) == BUDGET
    assert scene.subscription.packets == BUDGET
    assert scene.subscription.dropped_unproven == 3
    assert endpoint.budget_left == 0
    # Nor RTCP, nor a retransmission: every way out of the endpoint is held back.
    assert not endpoint.send_rtcp(build_rtcp_receiver_report(OUT_SSRC))
    assert not scene.subscription.retransmit(scene.received_seqs()[0])
    assert scene.subscription.dropped_unproven == 4
    harness.drain()
    assert len(scene.receiver.peer.received) == BUDGET


def test_only_an_authenticated_packet_from_its_address_proves_it(harness: Harness) -> None:
    scene = Scene(harness)
    endpoint = scene.receiver.endpoint
    endpoint.require_proof(BUDGET)
    scene.publish(BUDGET + 2)
    endpoint.add_track(0xC0FFEE)
    own = iter(range(9000, 9100))

    def rtp_from(peer: Peer) -> bytes:
        return peer.protect(build_rtp(next(own), 0, 0xC0FFEE, b"from the receiver's side"))

    # The right key from another address, and a wrong key from the right one: no proof.
    elsewhere = peer_at(harness, scene.receiver, "127.0.0.2")
    forger = harness.extra_peer(scene.receiver, send_key=new_key(scene.receiver.rx_suite))
    harness.deliver(forger, [rtp_from(forger), forger.protect_rtcp(build_rtcp_receiver_report(0xC0FFEE))], endpoint)
    harness.deliver(elsewhere, [rtp_from(elsewhere)], endpoint)
    assert endpoint.counters.packets_in == 1 and endpoint.counters.dropped("auth_failed") == 2
    assert not endpoint.proven
    scene.publish(2)
    assert len(scene.receiver.peer.received) == BUDGET
    assert scene.subscription.dropped_unproven == 4

    # Its own address (any port of it) with its key: proven, and everything flows again,
    # numbered on from the last packet it got: what was held back leaves no gap to ask for.
    same_host = harness.extra_peer(scene.receiver)
    harness.deliver(same_host, [same_host.protect_rtcp(build_rtcp_receiver_report(0xC0FFEE))], endpoint)
    assert endpoint.proven and endpoint.budget_left is None
    scene.publish(10)
    seqs = scene.received_seqs()
    assert len(seqs) == BUDGET + 10
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(len(seqs))]
    assert scene.subscription.dropped_unproven == 4
    assert endpoint.send_rtcp(build_rtcp_receiver_report(OUT_SSRC))


def test_a_receiver_that_sends_first_never_runs_short(harness: Harness) -> None:
    scene = Scene(harness)
    endpoint = scene.receiver.endpoint
    endpoint.require_proof(BUDGET)
    scene.receiver.endpoint.add_track(0xAB)
    harness.deliver(scene.receiver.peer, [scene.receiver.peer.protect(build_rtp(1, 0, 0xAB, b"hello"))], endpoint)
    assert endpoint.proven
    scene.publish(3 * BUDGET)
    assert len(scene.receiver.peer.received) == 3 * BUDGET
    assert scene.subscription.dropped_unproven == 0


def test_a_latching_endpoint_proves_itself_by_latching(harness: Harness) -> None:
    publisher = harness.participant(name="publisher")
    track = publisher.endpoint.add_track(TRACK_SSRC)
    latcher = harness.participant(name="latcher", latching=True)
    latcher.endpoint.add_track(0xAB)
    subscription = track.subscribe(latcher.endpoint, OUT_SSRC)
    latcher.endpoint.require_proof(0)
    harness.deliver(latcher.peer, [latcher.peer.protect(build_rtp(1, 0, 0xAB, b"hello"))], latcher.endpoint)
    assert latcher.endpoint.proven and latcher.endpoint.remote == latcher.peer.address
    publisher.peer.send(build_rtp(7, 0, TRACK_SSRC, b"media"))
    harness.wait(lambda: subscription.packets == 1, "the packet forwarded to the latched remote")
    harness.drain()
    assert len(latcher.peer.plain) == 1
