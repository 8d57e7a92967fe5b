"""Loss repair with a real decoder: an ffmpeg publisher, a real media daemon, and two
GStreamer subscribers (rtpbin, AVPF) each behind a lossy leg that drops 5 % of the daemon's
RTP packets in bursts of 3, the same packets for both. One asks for what it lost (rtpbin's
retransmission requests: RTCP generic NACKs, SRTCP with its key) and the daemon sends those
packets again from its cache; the other does not. The one that asks decodes at least 99 % of
the frames; both figures are printed. What the subscribers' receiver reports tell the daemon
(loss, round-trip time; GetStats) agrees with what the legs did."""
from __future__ import annotations

import base64
import os
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from charter.endpoints import EndpointSpec
from charter.subscriptions import SubscriptionSpec
from charter.suites import SrtpSuite
from charter.tracks import Track
from charter.v1 import mediad_pb2, mediad_pb2_grpc
from media_processes import GST_LAUNCH, GST_SUITES, MediaProcess, Picture, Running, Stream, ffmpeg_sender, missing_tools
from processes import Process, create_endpoints, free_udp_range, start_mediad, udp_port_bound
from waits import settle, wait_until

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(missing_tools() is not None, reason=f"{missing_tools()}: peer tests need both"),
]

SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80
PICTURE = Picture(320, 240, 30)
FRAMES = 10 * 30  # long enough that a lost last packet (no later one shows the gap) is within 1 %
CAMERA = Track(0x0B5E_0001, "video", "VP8", 96, 90000, name="camera")
ENOUGH = 0.99
BURST = 3
LOSS = 0.05


class LossyLeg:
    """Relays the daemon's datagrams to a receiver, dropping RTP in bursts: each RTP packet
    starts a burst of BURST lost ones with probability LOSS / BURST (seeded: the same
    packets for every leg). RTCP passes."""

    def __init__(self, to: tuple[str, int], seed: int) -> None:
        self.to = to
        self.random = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.relayed = self.dropped = 0
        self._burst = 0
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _run(self) -> None:
        while self._running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            rtp = not 192 <= data[1] <= 223
            if rtp and (self._burst or self.random.random() < LOSS / BURST):
                self._burst = (self._burst or BURST) - 1
                self.dropped += 1
                continue
            self.sock.sendto(data, self.to)
            self.relayed += 1

    def stop(self) -> None:
        self._running = False
        self._thread.join(5)
        self.sock.close()


def gst_subscriber(name: str, port: int, stream: Stream, send_key: bytes, daemon_port: int, *, repair: bool,
                   workdir: Path) -> tuple[MediaProcess, Path]:
    """gst-launch: SRTP in on `port` (RTCP muxed), rtpbin with AVPF feedback (NACKs when
    `repair`), VP8 decoded to 16x16 I420 frames in a file; its RTCP protected with its send
    key to the daemon's port. The jitter buffer holds 1.5 s: on two busy cores a packet sent
    again can take longer than a loopback round trip."""
    cipher, auth = GST_SUITES[stream.suite]
    caps = (f"application/x-srtp,media=video,clock-rate=90000,encoding-name=VP8,payload={stream.payload_type},"
            f"ssrc=(uint){stream.ssrc},srtp-key=(buffer){stream.key_hex},srtp-cipher={cipher},srtp-auth={auth},"
            f"srtcp-cipher={cipher},srtcp-auth={auth}")
    output = workdir / f"{name}.raw"
    pipeline = (
        f"rtpbin name=rb rtp-profile=avpf latency=1500 do-retransmission={'true' if repair else 'false'} "
        f"udpsrc address=127.0.0.1 port={port} caps=application/x-srtp ! capssetter replace=true caps={caps} "
        f"! srtpdec name=dec dec.rtp_src ! rb.recv_rtp_sink_0 dec.rtcp_src ! rb.recv_rtcp_sink_0 "
        f"rb. ! rtpvp8depay ! vp8dec ! videoconvert ! videoscale ! video/x-raw,format=I420,width=16,height=16 "
        f"! filesink location={output} sync=false async=false buffer-mode=unbuffered "
        f"rb.send_rtcp_src_0 ! enc.rtcp_sink_0 srtpenc name=enc key={send_key.hex()} rtp-cipher={cipher} "
        f"rtp-auth={auth} rtcp-cipher={cipher} rtcp-auth={auth} "
        f"enc.rtcp_src_0 ! udpsink host=127.0.0.1 port={daemon_port} sync=false async=false"
    )
    return MediaProcess(name, [GST_LAUNCH or "gst-launch-1.0", "-q", "-e", *pipeline.split()], workdir), output


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_mediad(tmp_path_factory.mktemp("loss-repair"), "", "mediad-l", free_udp_range(4),
                           drain_timeout=1)
    try:
        yield process
    finally:
        process.stop()


def test_a_gstreamer_subscriber_that_asks_again_decodes_what_a_lossy_leg_lost(daemon: Process,
                                                                              tmp_path: Path) -> None:
    cam_keys = (os.urandom(30), os.urandom(30))
    keys = {name: (os.urandom(30), os.urandom(30)) for name in ("repaired", "unrepaired")}
    ports = {name: free_udp_range(1)[0] for name in keys}
    seed = 5  # fixed: the same loss every run (15 of the first 220 RTP packets, bursts of 3)
    legs = {name: LossyLeg(("127.0.0.1", ports[name]), seed) for name in keys}
    ssrcs = {"repaired": 0x0B5E_0002, "unrepaired": 0x0B5E_0003}

    (cam_port,) = create_endpoints(daemon, EndpointSpec("c/cam", "c", SUITE, cam_keys[0], cam_keys[1], None,
                                                                tracks=(CAMERA,)))
    try:
        with Running() as running:
            outputs: dict[str, Path] = {}
            endpoint_ports: dict[str, int] = {}
            for name in keys:
                endpoint_ports[name], = create_endpoints(daemon, EndpointSpec(
                    f"c/{name}", "c", SUITE, keys[name][0], keys[name][1], legs[name].address,
                    subscriptions=(SubscriptionSpec("c/cam", CAMERA.ssrc, f"c/{name}", ssrcs[name],
                                                    wait_for_key_frame=True),)))
                stream = Stream("video", "VP8", 96, 90000, 0, ssrcs[name], "127.0.0.1", ports[name], SUITE.value,
                                base64.b64encode(keys[name][1]).decode())
                process, outputs[name] = gst_subscriber(name, ports[name], stream, keys[name][0],
                                                        endpoint_ports[name], repair=name == "repaired",
                                                        workdir=tmp_path)
                running.add(process)
            for name in keys:
                wait_until(lambda n=name: udp_port_bound(ports[n]), what=f"the {name} subscriber to listen")
            publishing = Stream("video", "VP8", 96, 90000, 0, CAMERA.ssrc, "127.0.0.1", cam_port, SUITE.value,
                                base64.b64encode(cam_keys[0]).decode())
            sender = running.add(ffmpeg_sender("cam", publishing, FRAMES, tmp_path, PICTURE))
            assert sender.wait(60) == 0, sender.describe()

            def decoded() -> dict[str, int]:
                return {n: (o.stat().st_size // (16 * 16 * 3 // 2) if o.exists() else 0) for n, o in outputs.items()}
            settle(lambda: list(decoded().values()))
            got = decoded()
    finally:
        for leg in legs.values():
            leg.stop()
    with grpc.insecure_channel(daemon.address) as channel:
        stats = mediad_pb2_grpc.MediaDaemonStub(channel).GetStats(mediad_pb2.GetStatsRequest(conference_id="c"),
                                                                  timeout=10)
    retransmitted = {s.subscription.endpoint_id: s.retransmitted for e in stats.endpoints for s in e.subscriptions}
    reported = {s.subscription.endpoint_id: (s.receiver_reports, s.packets_lost, s.fraction_lost, s.jitter_ms, s.rtt_ms)
                for e in stats.endpoints for s in e.subscriptions}
    print(f"as the subscribers reported it (reports, lost, fraction lost, jitter ms, RTT ms): {reported}")
    print(f"loss repair: {FRAMES} frames sent, {legs['repaired'].dropped} of "
          f"{legs['repaired'].dropped + legs['repaired'].relayed} datagrams dropped on each leg; decoded "
          f"{got['repaired']} with repair ({retransmitted.get('c/repaired', 0)} packets sent again), "
          f"{got['unrepaired']} without")
    assert legs["repaired"].dropped > 0
    assert retransmitted.get("c/repaired", 0) > 0 and retransmitted.get("c/unrepaired", 0) == 0
    assert got["repaired"] >= ENOUGH * FRAMES, got
    # The subscribers' own receiver reports, as the daemon shows them, agree with the legs: the
    # one without repair lost what its leg dropped (up to its last report), the other nothing
    # in the end; both measured a round trip through the daemon's sender reports.
    reports, lost, _, _, rtt = reported["c/unrepaired"]
    assert reports >= 1 and 0 < lost <= legs["unrepaired"].dropped and 0 < rtt < 50, reported
    reports, repaired_lost, _, _, rtt = reported["c/repaired"]
    assert reports >= 1 and repaired_lost < lost and 0 < rtt < 50, reported
