"""Fast start with real peers: an ffmpeg publisher with a key frame every 10 seconds, which
ignores key-frame requests, and a GStreamer receiver that subscribes 3 seconds in, through a
real media daemon. The route waits for a key frame (SubscriptionSpec.wait_for_key_frame);
the publisher does not answer the request, so the daemon starts the receiver from the key
frame its cache holds (mediad/fast_start.py): the receiver decodes the whole group of
pictures, key frame first, where it would otherwise have waited for the next key frame (here:
none, the publisher stops before it)."""
from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from charter.endpoints import EndpointSpec
from charter.subscriptions import SubscriptionSpec
from charter.suites import SrtpSuite
from charter.tracks import Track
from charter.v1 import mediad_pb2, mediad_pb2_grpc
from media_processes import Picture, Running, Stream, ffmpeg_sender, missing_tools
from media_receivers import GstReceiver
from processes import Process, create_endpoints, free_udp_range, start_mediad
from waits import settle, wait_until

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(missing_tools() is not None, reason=f"{missing_tools()}: peer tests need both"),
]

SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
PICTURE = Picture(320, 240, 30, key_frame_interval=300)  # one key frame, at the start
FRAMES = 6 * 30
LATE = 3.0  # seconds into the stream the receiver subscribes
CAMERA = Track(0x0FA5_7001, "video", "VP8", 96, 90000, name="camera")
RECEIVED = 0x0FA5_7002
ENOUGH = 0.9


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_mediad(tmp_path_factory.mktemp("fast-start"), "", "mediad-f", free_udp_range(4),
                           drain_timeout=1)
    try:
        yield process
    finally:
        process.stop()


def test_a_late_receiver_of_a_publisher_that_ignores_key_frame_requests_starts_from_the_cache(
        daemon: Process, tmp_path: Path) -> None:
    publisher_keys, receiver_keys = (os.urandom(30), os.urandom(30)), (os.urandom(30), os.urandom(30))

    (p_port,) = create_endpoints(daemon, EndpointSpec("c/cam", "c", SUITE, publisher_keys[0], publisher_keys[1], None,
                                                              tracks=(CAMERA,)))
    sending = Stream("video", "VP8", 96, 90000, 0, CAMERA.ssrc, "127.0.0.1", p_port, SUITE.value,
                     base64.b64encode(publisher_keys[0]).decode())
    with Running() as running:
        sender = running.add(ffmpeg_sender("cam", sending, FRAMES, tmp_path, PICTURE))
        receiver_port = free_udp_range(1)[0]
        receiving = Stream("video", "VP8", 96, 90000, 0, RECEIVED, "127.0.0.1", receiver_port, SUITE.value,
                           base64.b64encode(receiver_keys[1]).decode())
        receiver = running.add(GstReceiver("late", [receiving], tmp_path))
        receiver.wait_ready()
        time.sleep(LATE)
        assert sender.running, sender.describe()
        subscribed = time.monotonic()
        create_endpoints(daemon, EndpointSpec(
            "c/late", "c", SUITE, receiver_keys[0], receiver_keys[1], ("127.0.0.1", receiver_port),
            subscriptions=(SubscriptionSpec("c/cam", CAMERA.ssrc, "c/late", RECEIVED, wait_for_key_frame=True),)))
        wait_until(lambda: receiver.frames(RECEIVED) > 0 or not sender.running, timeout=30,
                   what="the late receiver's first frame")
        first_frame = time.monotonic() - subscribed
        assert sender.wait(30) == 0, sender.describe()
        settle(lambda: [receiver.frames(RECEIVED)])
        decoded = receiver.frames(RECEIVED)

    with grpc.insecure_channel(daemon.address) as channel:
        stats = mediad_pb2_grpc.MediaDaemonStub(channel).GetStats(mediad_pb2.GetStatsRequest(conference_id="c"),
                                                                  timeout=10)
    (late,) = [e for e in stats.endpoints if e.endpoint_id == "c/late"]
    print(f"fast start: first frame {first_frame:.2f} s after subscribing {LATE:g} s into a 10-second group; "
          f"decoded {decoded} of {FRAMES} frames; rtcp {dict(stats.rtcp)}")
    assert stats.rtcp["fast_start"] == 1 and stats.rtcp["fast_start_done"] == 1, dict(stats.rtcp)
    assert decoded >= ENOUGH * FRAMES, f"decoded {decoded} of the {FRAMES} frames since the key frame"
    assert late.counters.packets_out > 0
