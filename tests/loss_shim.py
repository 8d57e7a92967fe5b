"""A lossy leg between a WebRTC peer and the media daemon, on loopback: a UDP relay in the
test's event loop. The peer is given the shim's address instead of the daemon's candidate
(`through`, applied to every SDP of the daemon the peer reads);
the shim relays every datagram both ways (STUN, DTLS and SRTCP untouched) and drops some of
the SRTP packets the daemon sends to the peer, chosen by `drop(payload_type, count)`.

ICE does not mind: the daemon answers the checks the shim relays (it sees the shim's
address as the browser's) and the peer gets the answers from the address it sent to."""
from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

CANDIDATE = re.compile(r"a=candidate:\S+ 1 udp \d+ (\d+\.\d+\.\d+\.\d+) (\d+) typ host")


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)


class LossShim:
    def __init__(self, drop: Callable[[int, int], bool]) -> None:
        self.daemon: tuple[str, int] | None = None
        """Where the peer's datagrams go: set by `through` from the daemon's SDP."""
        self.drop = drop
        """(payload type, how many RTP packets of that payload type came before) -> drop it?"""
        self.peer: tuple[str, int] | None = None
        self.seen: dict[int, int] = {}
        self.dropped = 0
        self._front = _Side(self._from_peer)
        self._back = _Side(self._from_daemon)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self._front, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: self._back, local_addr=("127.0.0.1", 0))

    @property
    def address(self) -> tuple[str, int]:
        """Where the peer sends instead of the daemon."""
        assert self._front.transport is not None, "start() first"
        host, port = self._front.transport.get_extra_info("sockname")[:2]
        return host, port

    def through(self, sdp: str) -> str:
        """The daemon's SDP with its candidate (and m-line ports) replaced by the shim's."""
        found = CANDIDATE.search(sdp)
        if found is None:
            return sdp
        host, port = found.group(1), int(found.group(2))
        self.daemon = (host, port)
        shim_host, shim_port = self.address
        return sdp.replace(f"{host} {port} typ host", f"{shim_host} {shim_port} typ host").replace(
            f" {port} UDP/TLS/RTP/SAVPF", f" {shim_port} UDP/TLS/RTP/SAVPF"
        )

    def close(self) -> None:
        for side in (self._front, self._back):
            if side.transport is not None:
                side.transport.close()

    def _from_peer(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer = addr
        if self._back.transport is not None and self.daemon is not None:
            self._back.transport.sendto(data, self.daemon)

    def _from_daemon(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.peer is None or self._front.transport is None:
            return
        # RTP (RFC 7983 first byte 128-191, RFC 5761: not an RTCP packet type in byte 1).
        if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
            payload_type = data[1] & 0x7F
            count = self.seen.get(payload_type, 0)
            self.seen[payload_type] = count + 1
            if self.drop(payload_type, count):
                self.dropped += 1
                return
        self._front.transport.sendto(data, self.peer)

