"""The forwarding core's seams for WebRTC endpoints: STUN and DTLS handed to the handshake
handler with their source (and cut off in C when they flood), endpoints without SRTP keys
until a handshake gives them, and datagrams sent as they are."""
from __future__ import annotations

import asyncio
import socket

from forward_harness import Harness, new_key, udp_socket
from rtp import build_rtcp_receiver_report, build_rtp

STUN = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)  # a binding request header
DTLS = b"\x16\xfe\xfd" + bytes(10)  # a handshake record header
SUITE = "AES_CM_128_HMAC_SHA1_80"


def webrtc_endpoint(harness: Harness, name: str = "browser") -> tuple[object, socket.socket]:
    """An endpoint as a DTLS-SRTP participant starts: no keys, no remote, no latching."""
    sock = udp_socket()
    endpoint = harness.forwarder.create_endpoint(sock, name=name, latch=False, handshakes=True)
    return endpoint, sock


def test_stun_and_dtls_reach_the_handler_with_their_source(harness: Harness) -> None:
    seen: list[tuple[str, bytes, tuple[str, int]]] = []
    harness.forwarder.set_handshake_handler(lambda ep, data, source: seen.append((ep.name, data, source)))
    endpoint, _ = webrtc_endpoint(harness)
    assert endpoint.handshakes and not endpoint.keyed and endpoint.remote is None and not endpoint.latching
    peer = harness.peer(endpoint.local_address, SUITE, new_key(SUITE), SUITE, new_key(SUITE))
    harness.deliver(peer, [STUN, DTLS], endpoint)
    assert seen == [("browser", STUN, peer.address), ("browser", DTLS, peer.address)]
    assert endpoint.counters.handshakes_in == 2
    assert sum(endpoint.counters.drops) == 0


def test_an_sdes_endpoint_drops_stun_and_dtls_even_with_a_handler(harness: Harness) -> None:
    seen: list[bytes] = []
    harness.forwarder.set_handshake_handler(lambda ep, data, source: seen.append(data))
    sdes = harness.participant()
    harness.deliver(sdes.peer, [STUN, DTLS], sdes.endpoint)
    assert seen == []
    assert (sdes.endpoint.counters.dropped("stun"), sdes.endpoint.counters.dropped("dtls")) == (1, 1)


def test_a_flood_is_cut_off_before_python_and_counted(harness: Harness) -> None:
    seen: list[bytes] = []
    harness.forwarder.set_handshake_handler(lambda ep, data, source: seen.append(data))
    endpoint, _ = webrtc_endpoint(harness)
    peer = harness.peer(endpoint.local_address, SUITE, new_key(SUITE), SUITE, new_key(SUITE))
    flood = 2000
    harness.deliver(peer, [DTLS] * flood, endpoint)
    flooded = endpoint.counters.dropped("handshake_flood")
    # The bucket holds 200 and refills at 100/s: most of a fast flood never reaches Python.
    assert len(seen) == endpoint.counters.handshakes_in == flood - flooded
    assert 200 <= len(seen) < flood // 2


def test_a_failing_handler_is_counted_and_forwarding_goes_on(harness: Harness) -> None:
    def broken(ep: object, data: bytes, source: tuple[str, int]) -> None:
        raise RuntimeError("handshake bug")

    harness.forwarder.set_handshake_handler(broken)
    endpoint, _ = webrtc_endpoint(harness)
    peer = harness.peer(endpoint.local_address, SUITE, new_key(SUITE), SUITE, new_key(SUITE))
    publisher, viewer = harness.participant(), harness.participant()
    publisher.endpoint.add_track(7).subscribe(viewer.endpoint, 70)
    peer.send_raw(STUN)
    for _ in range(500):  # the loop reports the handler's exception: wait without failing on it
        harness.loop.run_until_complete(asyncio.sleep(0.002))
        if endpoint.counters.handshake_errors:
            break
    assert endpoint.counters.handshake_errors == 1
    assert [e["message"] for e in harness.errors] == ["handshake handler failed"]
    harness.errors.clear()
    publisher.peer.send(build_rtp(1, 0, 7, b"media"))
    harness.wait(lambda: len(viewer.peer.received) == 1, "media past the failed handshake")


def test_an_endpoint_without_keys_drops_media_until_keys_arrive(harness: Harness) -> None:
    endpoint, _ = webrtc_endpoint(harness)
    rx_key, tx_key = new_key(SUITE), new_key(SUITE)
    peer = harness.peer(endpoint.local_address, SUITE, rx_key, SUITE, tx_key)
    track = endpoint.add_track(5)
    viewer = harness.participant()
    track.subscribe(viewer.endpoint, 50)
    publisher = harness.participant()
    to_browser = publisher.endpoint.add_track(9).subscribe(endpoint, 90)

    harness.deliver(peer, [peer.protect(build_rtp(1, 0, 5, b"early"))], endpoint)
    assert endpoint.counters.dropped("not_keyed") == 1 and endpoint.counters.packets_in == 0
    assert not endpoint.send_rtcp(build_rtcp_receiver_report(1))
    publisher.peer.send(build_rtp(1, 0, 9, b"to the browser"))
    harness.wait(lambda: to_browser.dropped_no_remote == 1, "a packet held back: the browser is not keyed")

    # The handshake is done: keys, then the address ICE nominated.
    endpoint.set_keys(rx_suite=SUITE, rx_key=rx_key, tx_suite=SUITE, tx_key=tx_key)
    endpoint.set_remote(peer.address)
    assert endpoint.keyed
    peer.send(build_rtp(2, 900, 5, b"keyed"))
    harness.wait(lambda: len(viewer.peer.received) == 1, "the browser's media forwarded")
    publisher.peer.send(build_rtp(2, 900, 9, b"to the browser"))
    harness.wait(lambda: len(peer.received) == 1, "media reaching the browser")
    assert peer.plain[0].endswith(b"to the browser")


def test_an_endpoint_that_does_not_latch_keeps_no_remote(harness: Harness) -> None:
    sock = udp_socket()
    rx_key, tx_key = new_key(SUITE), new_key(SUITE)
    endpoint = harness.forwarder.create_endpoint(
        sock, rx_suite=SUITE, rx_key=rx_key, tx_suite=SUITE, tx_key=tx_key, latch=False
    )
    endpoint.add_track(3)
    peer = harness.peer(endpoint.local_address, SUITE, rx_key, SUITE, tx_key)
    harness.deliver(peer, [peer.protect(build_rtp(1, 0, 3, b"x"))], endpoint)
    assert endpoint.counters.packets_in == 1
    assert endpoint.remote is None and not endpoint.latching


def test_datagrams_go_out_as_they_are(harness: Harness) -> None:
    endpoint, _ = webrtc_endpoint(harness)
    receiver = udp_socket()
    receiver.settimeout(5)
    assert endpoint.send_datagram(b"\x01\x01answer", receiver.getsockname())
    data, source = receiver.recvfrom(100)
    assert (data, source) == (b"\x01\x01answer", endpoint.local_address)
    receiver.close()
    endpoint.close()
    assert not endpoint.send_datagram(b"late", ("127.0.0.1", 9))


