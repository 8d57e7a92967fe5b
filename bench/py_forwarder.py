"""A plain-Python SRTP forwarder on uvloop: what a Python user would write instead of a
compiled hot path. Per packet: pylibsrtp Session.unprotect, then per subscriber a rewritten
header (SSRC, sequence number, timestamp), Session.protect, transport.sendto from the
subscriber's own socket. Runs in its own process for the benchmark.
"""

from __future__ import annotations

import asyncio
import struct

import pylibsrtp
import uvloop

from bench.relay_process import RelayConfig, load_config, serve_stdin, udp_socket
from mediad.srtp import create_session

_SEQ_TS_SSRC = struct.Struct("!HII")


class SubscriberLeg:
    def __init__(self, index: int, session: pylibsrtp.Session, ssrc: int, remote: tuple[str, int]) -> None:
        self.session = session
        self.ssrc = ssrc
        self.remote = remote
        self.seq_offset = 1000 * (index + 1)
        self.ts_offset = 90000 * (index + 1)
        self.transport: asyncio.DatagramTransport | None = None


class PublisherProtocol(asyncio.DatagramProtocol):
    def __init__(self, session: pylibsrtp.Session, legs: list[SubscriberLeg]) -> None:
        self.session = session
        self.legs = legs
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            plain = self.session.unprotect(data)
        except pylibsrtp.Error:
            self.dropped += 1
            return
        self.packets_in += 1
        seq, ts, _ = _SEQ_TS_SSRC.unpack_from(plain, 2)
        for leg in self.legs:
            packet = bytearray(plain)
            _SEQ_TS_SSRC.pack_into(
                packet, 2, (seq + leg.seq_offset) & 0xFFFF, (ts + leg.ts_offset) & 0xFFFFFFFF, leg.ssrc
            )
            leg.transport.sendto(leg.session.protect(bytes(packet)), leg.remote)  # type: ignore[union-attr]
            self.packets_out += 1


async def serve(config: RelayConfig) -> None:
    loop = asyncio.get_running_loop()
    legs = [
        SubscriberLeg(i, create_session(config.suite, s.key, inbound=False), s.ssrc, s.remote)
        for i, s in enumerate(config.subscribers)
    ]
    for leg in legs:
        leg.transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=udp_socket())
    publisher_sock = udp_socket()
    publisher = PublisherProtocol(create_session(config.suite, config.publisher_key, inbound=True), legs)
    await loop.create_datagram_endpoint(lambda: publisher, sock=publisher_sock)
    await serve_stdin(
        lambda: {
            "packets_in": publisher.packets_in,
            "packets_out": publisher.packets_out,
            "dropped": publisher.dropped,
        },
        publisher_sock.getsockname(),
    )


def main() -> None:
    uvloop.run(serve(load_config()))


if __name__ == "__main__":
    main()
