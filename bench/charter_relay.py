"""Runs Charter's forwarding core (mediad._forward.Forwarder on uvloop) in its own process for
the benchmark: one publisher endpoint with one track, one subscriber endpoint per receiver
(fixed remote), and optionally `idle_endpoints` more endpoints that carry no traffic (each
with a bound socket, keys, a track and a subscription, in pairs), the state of a busy daemon.

With `webrtc` (bench/webrtc_relay.py) every endpoint is made as the media daemon makes a
browser's: handshakes on and no keys at creation, then keyed as DTLS-SRTP keys it and given
the address ICE nominates; each route carries the receiver's own payload type and goes
without header extensions, as routes to browsers do.
"""
from __future__ import annotations

import asyncio
import resource
from typing import Any

import uvloop

from bench.relay_process import RelayConfig, load_config, serve_stdin, udp_socket
from charter.suites import generate_key
from mediad._forward import DROP_REASONS, Endpoint, Forwarder
from mediad.media import VIDEO_CACHE_PACKETS

IDLE_SSRC_BASE = 0x10000000


def add_idle_endpoints(forwarder: Forwarder, suite: str, count: int) -> None:
    """`count` endpoints in subscribed pairs, each on its own bound socket (port 0: the
    ephemeral range, clear of the media ports other benchmarks use)."""
    endpoints = []
    for i in range(count):
        ep = forwarder.create_endpoint(
            udp_socket(), rx_suite=suite, rx_key=generate_key(suite), tx_suite=suite,
            tx_key=generate_key(suite), name=f"idle-{i}",
        )
        ep.add_track(IDLE_SSRC_BASE + 2 * i)
        endpoints.append(ep)
    for i in range(0, count - 1, 2):
        a, b = endpoints[i], endpoints[i + 1]
        a.tracks[0].subscribe(b, IDLE_SSRC_BASE + 1 + 2 * (i + 1))
        b.tracks[0].subscribe(a, IDLE_SSRC_BASE + 1 + 2 * i)


WEBRTC_PAYLOAD_TYPE = 98
"""A receiver's payload type for the codec, other than the publisher's (what the load sends)."""


def keyed_endpoint(forwarder: Forwarder, suite: str, rx_key: bytes, tx_key: bytes,
                   remote: tuple[str, int] | None, name: str, *, webrtc: bool) -> Endpoint:
    if not webrtc:
        return forwarder.create_endpoint(udp_socket(), rx_suite=suite, rx_key=rx_key, tx_suite=suite,
                                         tx_key=tx_key, remote=remote, name=name)
    endpoint = forwarder.create_endpoint(udp_socket(), name=name, latch=False, handshakes=True)
    endpoint.set_keys(rx_suite=suite, rx_key=rx_key, tx_suite=suite, tx_key=tx_key)
    if remote is not None:
        endpoint.set_remote(remote, latch=False)
    return endpoint


async def serve(config: RelayConfig, *, webrtc: bool = False) -> None:
    loop = asyncio.get_running_loop()
    forwarder = Forwarder(loop, batch_size=config.batch_size or 32)
    suite = config.suite
    publisher = keyed_endpoint(forwarder, suite, config.publisher_key, generate_key(suite), None, "publisher",
                               webrtc=webrtc)
    if webrtc:
        # The load sends from its own address, which ICE would have nominated.
        publisher.set_remote(None, latch=True)
    # As the media daemon adds a video track: with its retransmission cache.
    track = publisher.add_track(
        config.publisher_ssrc, clock_rate=90000, kind="video", codec="VP8", cache_packets=VIDEO_CACHE_PACKETS
    )
    for i, sub in enumerate(config.subscribers):
        ep = keyed_endpoint(forwarder, suite, generate_key(suite), sub.key, sub.remote, f"subscriber-{i}",
                            webrtc=webrtc)
        if webrtc:
            track.subscribe(ep, sub.ssrc, payload_type=WEBRTC_PAYLOAD_TYPE, strip_extensions=True)
        else:
            track.subscribe(ep, sub.ssrc)
    if config.idle_endpoints:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = config.idle_endpoints + len(config.subscribers) + 100
        if needed > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
        add_idle_endpoints(forwarder, suite, config.idle_endpoints)

    def stats() -> dict[str, Any]:
        totals = forwarder.totals()
        return {
            "packets_in": totals.packets_in, "packets_out": totals.packets_out,
            "drops": dict(zip(DROP_REASONS, totals.drops, strict=False)), "endpoints": len(forwarder.endpoints),
        }

    try:
        await serve_stdin(stats, publisher.local_address, endpoints=len(forwarder.endpoints))
    finally:
        forwarder.close()


def main() -> None:
    uvloop.run(serve(load_config()))


if __name__ == "__main__":
    main()
