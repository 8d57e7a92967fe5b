"""A test participant: a plain UDP socket on 127.0.0.1 that sends real SRTP with the key the
controller gave it and decrypts what it receives with the other key."""

from __future__ import annotations

import base64
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import pylibsrtp

from charter.v1 import controller_pb2 as pb
from charter.v1 import media_pb2
from rtp import VP8_KEY_FRAME_START, build_rtp, parse_rtp, receiver_session, sender_session


@dataclass
class Received:
    ssrc: int
    publisher_id: str
    track_ssrc: int


@dataclass
class Peer:
    participant_id: str
    track_ssrcs: list[int]
    kinds: list[int] = field(default_factory=list)
    sock: socket.socket = field(init=False)
    session: pb.Participant | None = None
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self._seq = {s: random.randrange(0, 0x10000) for s in self.track_ssrcs}
        self.kinds = self.kinds or [media_pb2.VIDEO] * len(self.track_ssrcs)
        self._tx: pylibsrtp.Session | None = None
        self._rx: pylibsrtp.Session | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def join_request(self, conference_id: str, *, give_address: bool = False) -> pb.JoinRequest:
        request = pb.JoinRequest(
            conference_id=conference_id, participant_id=self.participant_id, display_name=self.participant_id.title()
        )
        for ssrc, kind in zip(self.track_ssrcs, self.kinds, strict=False):
            if kind == media_pb2.AUDIO:
                request.tracks.add(ssrc=ssrc, kind=kind, codec="opus", payload_type=111, clock_rate=48000, channels=2)
            else:
                request.tracks.add(ssrc=ssrc, kind=kind, codec="VP8", payload_type=96, clock_rate=90000)
        if give_address:
            request.receive_address.ip, request.receive_address.port = self.address
        return request

    def joined(self, participant: pb.Participant) -> None:
        suite = media_pb2.SrtpSuite.Name(participant.suite)
        self.session = participant
        self._tx = sender_session(suite, base64.b64decode(participant.send_key))
        self._rx = receiver_session(suite, base64.b64decode(participant.receive_key))

    def send_round(self) -> None:
        """One packet of each track to the media daemon."""
        assert self.session is not None and self._tx is not None
        target = (self.session.media_address.ip, self.session.media_address.port)
        for ssrc in self.track_ssrcs:
            seq = self._seq[ssrc] = (self._seq[ssrc] + 1) & 0xFFFF
            payload = VP8_KEY_FRAME_START + f"{self.participant_id}|{ssrc}|{seq}".encode()
            packet = build_rtp(seq, seq * 3000, ssrc, payload)
            self.sock.sendto(self._tx.protect(packet), target)

    def receive(self) -> int:
        """Decrypt everything queued; a packet that does not authenticate fails the test."""
        assert self._rx is not None
        count = 0
        while True:
            try:
                datagram = self.sock.recv(4096)
            except BlockingIOError:
                return count
            if 192 <= datagram[1] <= 223:
                continue  # RTCP from the daemon (a key-frame request for a video track)
            packet = parse_rtp(self._rx.unprotect(datagram))
            publisher, track_ssrc, _ = packet.payload.removeprefix(VP8_KEY_FRAME_START).decode().split("|")
            self.received.append(Received(packet.ssrc, publisher, int(track_ssrc)))
            count += 1

    def drain(self) -> None:
        """Discard what is queued (not decrypted)."""
        while True:
            try:
                self.sock.recv(4096)
            except BlockingIOError:
                return

    def counts(self) -> Counter[tuple[str, int, int]]:
        """Packets received per (publisher, publisher's SSRC, SSRC received with)."""
        return Counter((r.publisher_id, r.track_ssrc, r.ssrc) for r in self.received)

    def close(self) -> None:
        self.sock.close()


def exchange(peers: list[Peer], done, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Every peer sends a round and reads, until `done()` or the timeout (then AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for peer in peers:
            peer.send_round()
        time.sleep(0.01)
        for peer in peers:
            peer.receive()
        if done():
            return
    summary = {p.participant_id: dict(p.counts()) for p in peers}
    raise AssertionError(f"media exchange incomplete after {timeout:.0f} s: {summary}")
