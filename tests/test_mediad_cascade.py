"""The building block of one conference across daemons: two real media daemons linked by a
pair of relay endpoints (ordinary SDES endpoints, daemon to daemon, made through the
MediaDaemon API as a controller would). A publisher on one daemon reaches a subscriber on
the other through the same hot path on both sides (its track routed to the relay endpoint,
which on the far side publishes it to the local subscribers), and the subscriber's key-frame
request (PLI) crosses back over the link to the publisher, with each side's SSRCs. Removing
the relayed track from the far end (its publisher left) takes its route with it."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import Iterator

import grpc
import pytest

from charter.endpoints import EndpointSpec
from charter.subscriptions import SubscriptionSpec
from charter.suites import SrtpSuite
from charter.tracks import Track
from charter.v1 import mediad_pb2, mediad_pb2_grpc
from controller.daemons import MediaDaemonClient
from mediad import rtcp
from processes import Process, free_udp_range, start_mediad
from rtp import build_rtp, parse_rtp, receiver_session, sender_session

SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
TRACK = Track(0x1111_1111, "video", "VP8", 96, 90000, name="camera")
RELAYED = 0x2222_2222   # the track's SSRC on the link
RECEIVED = 0x3333_3333  # the subscriber's SSRC of it
PACKETS = 60
AFTER = 10  # packets the publisher sends once the far end no longer has its track


@pytest.fixture
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Process]]:
    log_dir = tmp_path_factory.mktemp("cascade")
    x = start_mediad(log_dir, "", "mediad-x", free_udp_range(4), drain_timeout=1)
    try:
        y = start_mediad(log_dir, "", "mediad-y", free_udp_range(4), drain_timeout=1)
        try:
            yield x, y
        finally:
            y.stop()
    finally:
        x.stop()


def key() -> bytes:
    return os.urandom(30)


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    return sock


def test_a_track_crosses_a_relay_link_and_its_key_frame_request_comes_back(
        daemons: tuple[Process, Process]) -> None:
    async def scenario() -> None:
        x = MediaDaemonClient("mediad-x", daemons[0].address)
        y = MediaDaemonClient("mediad-y", daemons[1].address)
        publisher_keys, subscriber_keys, x_to_y, y_to_x = (key(), key()), (key(), key()), key(), key()
        publisher, subscriber = udp(), udp()
        try:
            # On X: the publisher (latched from what it sends).
            p_port = await x.create_endpoint(EndpointSpec(
                "c/publisher", "c", SUITE, publisher_keys[0], publisher_keys[1], None, tracks=(TRACK,)))
            # On Y: its end of the link, publishing the relayed track (made first: its address
            # is not known yet).
            y_end = EndpointSpec("c/relay-x", "c", SUITE, x_to_y, y_to_x, None,
                                 tracks=(Track(RELAYED, "video", "VP8", 96, 90000, name="camera"),))
            relay_y = await y.create_endpoint(y_end)
            # On X: its end of the link, sending the track there with the link's SSRC.
            relay_x = await x.create_endpoint(EndpointSpec(
                "c/relay-y", "c", SUITE, y_to_x, x_to_y, ("127.0.0.1", relay_y),
                subscriptions=(SubscriptionSpec("c/publisher", TRACK.ssrc, "c/relay-y", RELAYED),)))
            # Y's end told X's address: both ends fixed, neither waits to latch.
            assert await y.create_endpoint(dataclasses.replace(y_end, remote=("127.0.0.1", relay_x))) == relay_y
            # On Y: the subscriber, receiving the relayed track as any local one.
            s_port = await y.create_endpoint(EndpointSpec(
                "c/subscriber", "c", SUITE, subscriber_keys[0], subscriber_keys[1], subscriber.getsockname()[:2],
                subscriptions=(SubscriptionSpec("c/relay-x", RELAYED, "c/subscriber", RECEIVED),)))
        finally:
            await x.close()
            await y.close()

        send = sender_session(SUITE.value, publisher_keys[0])
        for seq in range(PACKETS):
            publisher.sendto(send.protect(build_rtp(seq, seq * 3000, TRACK.ssrc, b"frame %d" % seq)),
                             ("127.0.0.1", p_port))
            time.sleep(0.002)
        receive = receiver_session(SUITE.value, subscriber_keys[1])
        payloads = []
        while len(payloads) < PACKETS:
            data = subscriber.recv(2048)
            if 192 <= data[1] <= 223:
                continue  # RTCP
            packet = parse_rtp(receive.unprotect(data))
            assert packet.ssrc == RECEIVED
            payloads.append(packet.payload)
        assert payloads == [b"frame %d" % seq for seq in range(PACKETS)]

        # The subscriber asks for a key frame: the publisher is asked, for its own SSRC.
        ask = sender_session(SUITE.value, subscriber_keys[0])
        subscriber.sendto(ask.protect_rtcp(bytes(rtcp.PictureLossIndication(0xABCD, RECEIVED))),
                          ("127.0.0.1", s_port))
        hear = receiver_session(SUITE.value, publisher_keys[1])
        deadline = time.monotonic() + 5
        asked = []
        while not asked and time.monotonic() < deadline:
            data = publisher.recv(2048)
            if not 192 <= data[1] <= 223:
                continue
            for packet in rtcp.parse_compound(hear.unprotect_rtcp(data)):
                if isinstance(packet, rtcp.PictureLossIndication):
                    asked.append(packet.media_ssrc)
        assert asked == [TRACK.ssrc]

        # Y's end of the link removes the relayed copy (its publisher left the conference):
        # the route to the subscriber goes with it, and what X still relays is dropped there.
        y = MediaDaemonClient("mediad-y", daemons[1].address)
        channel = grpc.aio.insecure_channel(daemons[1].address)
        stub = mediad_pb2_grpc.MediaDaemonStub(channel)
        try:
            assert await y.remove_tracks("c/relay-x", [RELAYED]) == 1
            assert await y.remove_tracks("c/relay-x", [RELAYED]) == 0
            end = await stub.GetEndpoint(mediad_pb2.GetEndpointRequest(endpoint_id="c/relay-x"), timeout=5)
            assert list(end.tracks) == []
            held = await stub.GetEndpoint(mediad_pb2.GetEndpointRequest(endpoint_id="c/subscriber"), timeout=5)
            assert list(held.subscriptions) == []
            for seq in range(PACKETS, PACKETS + AFTER):
                publisher.sendto(send.protect(build_rtp(seq, seq * 3000, TRACK.ssrc, b"frame %d" % seq)),
                                 ("127.0.0.1", p_port))
            dropped = 0
            deadline = time.monotonic() + 5
            while dropped < AFTER and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                stats = await stub.GetStats(mediad_pb2.GetStatsRequest(endpoint_id="c/relay-x"), timeout=5)
                dropped = stats.endpoints[0].counters.drops["unknown_ssrc"]
            assert dropped == AFTER
            stats = await stub.GetStats(mediad_pb2.GetStatsRequest(endpoint_id="c/subscriber"), timeout=5)
            assert list(stats.endpoints[0].subscriptions) == []
        finally:
            await y.close()
            await channel.close()
        publisher.close()
        subscriber.close()

    asyncio.run(scenario())


BUDGET = 5
MIC = Track(0x4444_4444, "audio", "opus", 111, 48000, name="mic")


@pytest.fixture
def strict_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Process]]:
    """Two daemons on machines of their own, as far as the send budget goes: no receiver's
    network is trusted, and an unproven one gets BUDGET packets."""
    log_dir = tmp_path_factory.mktemp("strict")
    options = ("--trusted-receivers", "", "--unproven-budget", str(BUDGET))
    x = start_mediad(log_dir, "", "mediad-x", free_udp_range(4), drain_timeout=1, options=options)
    try:
        y = start_mediad(log_dir, "", "mediad-y", free_udp_range(4), drain_timeout=1, options=options)
        try:
            yield x, y
        finally:
            y.stop()
    finally:
        x.stop()


@pytest.mark.parametrize("relay_link", [True, False], ids=["relay-link", "plain-endpoints"])
def test_a_relay_link_end_is_sent_everything_without_proof(strict_daemons: tuple[Process, Process],
                                                           relay_link: bool) -> None:
    """Made as relay link ends (CreateEndpointRequest.relay_link), the ends of a link need no
    proof: the near end, which sends to the far one, is proven from the start, and audio
    crossing one way (nothing comes back but the far daemon's reports, once a second) gets
    through whole. Made as plain endpoints, the near end starts unproven, on its budget."""
    async def scenario() -> tuple[bool, int]:
        x = MediaDaemonClient("mediad-x", strict_daemons[0].address)
        y = MediaDaemonClient("mediad-y", strict_daemons[1].address)
        publisher_keys, subscriber_keys, x_to_y, y_to_x = (key(), key()), (key(), key()), key(), key()
        publisher, subscriber = udp(), udp()
        channel = grpc.aio.insecure_channel(strict_daemons[0].address)
        try:
            p_port = await x.create_endpoint(EndpointSpec(
                "c/publisher", "c", SUITE, publisher_keys[0], publisher_keys[1], None, tracks=(MIC,)))
            y_end = EndpointSpec("c/relay-x", "c", SUITE, x_to_y, y_to_x, None,
                                 tracks=(dataclasses.replace(MIC, ssrc=RELAYED),), relay_link=relay_link)
            relay_y = await y.create_endpoint(y_end)
            relay_x = await x.create_endpoint(EndpointSpec(
                "c/relay-y", "c", SUITE, y_to_x, x_to_y, ("127.0.0.1", relay_y),
                subscriptions=(SubscriptionSpec("c/publisher", MIC.ssrc, "c/relay-y", RELAYED),),
                relay_link=relay_link))
            await y.create_endpoint(dataclasses.replace(y_end, remote=("127.0.0.1", relay_x)))
            s_port = await y.create_endpoint(EndpointSpec(
                "c/subscriber", "c", SUITE, subscriber_keys[0], subscriber_keys[1], subscriber.getsockname()[:2],
                subscriptions=(SubscriptionSpec("c/relay-x", RELAYED, "c/subscriber", RECEIVED),)))
            stats = await mediad_pb2_grpc.MediaDaemonStub(channel).GetStats(
                mediad_pb2.GetStatsRequest(endpoint_id="c/relay-y"), timeout=5)
            proven = stats.endpoints[0].proven
        finally:
            await x.close()
            await y.close()
            await channel.close()
        if not relay_link:
            return proven, 0
        # The subscriber proves itself: an authenticated report from its address.
        report = sender_session(SUITE.value, subscriber_keys[0])
        subscriber.sendto(report.protect_rtcp(bytes(rtcp.ReceiverReport(0xABCD))), ("127.0.0.1", s_port))
        await asyncio.sleep(0.2)
        send = sender_session(SUITE.value, publisher_keys[0])
        for seq in range(PACKETS):
            publisher.sendto(send.protect(build_rtp(seq, seq * 960, MIC.ssrc, b"frame %d" % seq, payload_type=111)),
                             ("127.0.0.1", p_port))
        got = 0
        while got < PACKETS:
            data = subscriber.recv(2048)
            got += not 192 <= data[1] <= 223
        publisher.close()
        subscriber.close()
        return proven, got

    proven, got = asyncio.run(scenario())
    assert proven == relay_link
    if relay_link:
        assert got == PACKETS
