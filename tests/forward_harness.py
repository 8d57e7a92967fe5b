"""Drives mediad._forward on a uvloop loop with real loopback sockets.

A `Participant` is one forwarder endpoint plus the test socket acting as its remote peer:
the peer protects with the endpoint's rx key and decrypts with the endpoint's tx key.
Tests stay synchronous: `Harness.wait` runs the loop until a condition holds.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import pylibsrtp

from mediad._forward import DROP_REASONS, Endpoint, Forwarder, Subscription, Track
from rtp import receiver_session, sender_session

LOCALHOST = "127.0.0.1"
KEY_LENGTHS = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30, "AEAD_AES_128_GCM": 28}
DEFAULT_SUITE = "AES_CM_128_HMAC_SHA1_80"
# Generous: the machine is shared, and a wait only lasts this long when a test fails.
WAIT_SECONDS = 15.0
PEER_BUFFER = 1 << 20


def new_key(suite: str) -> bytes:
    return os.urandom(KEY_LENGTHS[suite])


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCALHOST, 0))
    return sock


@dataclasses.dataclass
class Received:
    datagram: bytes
    source: tuple[str, int]
    plain: bytes | None  # None when it did not decrypt with the peer's key


class Peer:
    """A plain test socket talking SRTP to one endpoint."""

    def __init__(
        self,
        target: tuple[str, int],
        send_suite: str,
        send_key: bytes,
        recv_suite: str,
        recv_key: bytes,
    ) -> None:
        self.sock = udp_socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PEER_BUFFER)
        self.sock.setblocking(False)
        self.target = target
        self.send_suite = send_suite
        self.send_key = send_key
        self.recv_suite = recv_suite
        self.recv_key = recv_key
        self.tx = sender_session(send_suite, send_key)
        self.rx = receiver_session(recv_suite, recv_key)
        self.received: list[Received] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def protect(self, plain: bytes) -> bytes:
        return self.tx.protect(plain)

    def protect_rtcp(self, plain: bytes) -> bytes:
        return self.tx.protect_rtcp(plain)

    def send_raw(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.target)

    def send(self, plain: bytes) -> bytes:
        """Protect and send an RTP packet; the protected datagram."""
        datagram = self.protect(plain)
        self.send_raw(datagram)
        return datagram

    def drain(self) -> int:
        """Read every datagram waiting on the socket; how many."""
        count = 0
        while True:
            try:
                datagram, source = self.sock.recvfrom(65536)
            except BlockingIOError:
                return count
            try:
                plain: bytes | None = self.rx.unprotect(datagram)
            except pylibsrtp.Error:
                plain = None
            self.received.append(Received(datagram, source[:2], plain))
            count += 1

    @property
    def plain(self) -> list[bytes]:
        """Decrypted packets received so far (asserting that every one decrypted)."""
        bad = [r for r in self.received if r.plain is None]
        assert not bad, f"{len(bad)} of {len(self.received)} datagrams did not decrypt with the peer's key"
        return [r.plain for r in self.received if r.plain is not None]

    def close(self) -> None:
        self.sock.close()


@dataclasses.dataclass
class Participant:
    endpoint: Endpoint
    peer: Peer
    rx_suite: str
    rx_key: bytes
    tx_suite: str
    tx_key: bytes


def processed(endpoint: Endpoint) -> int:
    """Datagrams the endpoint has accounted for: forwarded, consumed as RTCP or as a
    handshake, or dropped."""
    counters = endpoint.counters
    return counters.packets_in + counters.rtcp_in + counters.handshakes_in + sum(counters.drops)


COUNTERS = (
    "packets_in", "bytes_in", "packets_out", "bytes_out", "rtcp_in", "rtcp_out", "rtcp_errors",
    "handshakes_in", "handshake_errors",
)
SUBSCRIPTION_COUNTERS = (
    "packets", "bytes", "dropped_paused", "dropped_no_remote", "dropped_stale", "dropped_waiting_key_frame",
    "send_errors", "retransmitted", "rtx_sent", "retransmit_misses", "last_activity", "last_seq", "last_timestamp",
)


def counts(thing: Endpoint | Track | Subscription | Forwarder) -> dict[str, Any]:
    """The typed counters of a core object as one dict, for tests that compare many at once
    (with the reference forwarder's, or before and after)."""
    if isinstance(thing, Subscription):
        return {name: getattr(thing, name) for name in SUBSCRIPTION_COUNTERS}
    if isinstance(thing, Track):
        return {"packets": thing.packets, "bytes": thing.bytes, "last_activity": thing.last_activity,
                "subscriptions": len(thing.subscriptions)}
    counters = thing.totals() if isinstance(thing, Forwarder) else thing.counters
    values: dict[str, Any] = {name: getattr(counters, name) for name in COUNTERS}
    values["drops"] = dict(zip(DROP_REASONS, counters.drops, strict=False))
    if isinstance(thing, Endpoint):
        values["last_activity"] = thing.last_activity
    else:
        values.update(endpoints=len(thing.endpoints), batches=thing.batches, batch_packets=thing.batch_packets)
    return values


class Harness:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self.forwarder = Forwarder(loop)
        self.peers: list[Peer] = []

    def participant(
        self,
        suite: str = DEFAULT_SUITE,
        *,
        tx_suite: str | None = None,
        latching: bool = False,
        name: str = "",
    ) -> Participant:
        """A new endpoint and its peer; the endpoint's remote is the peer unless `latching`."""
        tx_suite = tx_suite or suite
        rx_key, tx_key = new_key(suite), new_key(tx_suite)
        sock = udp_socket()
        local = sock.getsockname()[:2]
        peer = self.peer(local, suite, rx_key, tx_suite, tx_key)
        endpoint = self.forwarder.create_endpoint(
            sock,
            rx_suite=suite,
            rx_key=rx_key,
            tx_suite=tx_suite,
            tx_key=tx_key,
            remote=None if latching else peer.address,
            name=name,
        )
        return Participant(endpoint, peer, suite, rx_key, tx_suite, tx_key)

    def peer(
        self, target: tuple[str, int], send_suite: str, send_key: bytes, recv_suite: str, recv_key: bytes
    ) -> Peer:
        peer = Peer(target, send_suite, send_key, recv_suite, recv_key)
        self.peers.append(peer)
        return peer

    def extra_peer(self, of: Participant, *, send_key: bytes | None = None) -> Peer:
        """Another socket sending to `of`'s endpoint, with its keys unless `send_key`."""
        return self.peer(
            of.endpoint.local_address,
            of.rx_suite,
            of.rx_key if send_key is None else send_key,
            of.tx_suite,
            of.tx_key,
        )

    def drain(self) -> None:
        for peer in self.peers:
            peer.drain()

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
        """Run the loop (draining every peer) until `condition()` holds."""
        self.loop.run_until_complete(self._until(condition, what, timeout))

    async def _until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            self.check_errors()
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.002)

    def settle(self, endpoint: Endpoint, count: int) -> None:
        """Wait until `endpoint` has accounted for `count` datagrams in total (and no more)."""
        self.wait(lambda: processed(endpoint) >= count, f"{count} datagrams processed by {endpoint!r}")
        assert processed(endpoint) == count, (
            f"{endpoint!r} accounted for {processed(endpoint)} datagrams, {count} were sent"
        )
        self.drain()

    def deliver(self, peer: Peer, datagrams: Iterable[bytes], endpoint: Endpoint) -> None:
        """Send raw datagrams from `peer` and wait until `endpoint` has processed them all."""
        before = processed(endpoint)
        count = 0
        for datagram in datagrams:
            peer.send_raw(datagram)
            count += 1
        self.settle(endpoint, before + count)

    def check_errors(self) -> None:
        assert not self.errors, f"the event loop reported errors: {self.errors}"

    def close(self) -> None:
        self.forwarder.close()
        for peer in self.peers:
            peer.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
