"""The media side of `charter demo`: what each participant publishes (ffmpeg test sources,
or a built-in RTP source where ffmpeg is missing) and a receiver that decrypts what Charter
sends it, keeps RFC 3550 reception statistics per stream (loss, interarrival jitter) and
answers each sender report with a receiver report, so that the daemon measures the RTT."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import secrets
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Sequence
from typing import cast

import pylibsrtp

from charter.sdp import ParticipantSession
from charter.subscriptions import Subscription
from charter.tracks import Track
from mediad import rtcp
from mediad.srtp import create_session

FFMPEG = shutil.which("ffmpeg")
VIDEO_FPS = 30
AUDIO_FRAME_SECONDS = 0.020
SENDER_REPORT_INTERVAL = 1.0  # the built-in source's; ffmpeg sends one every 5 s
RTP_HEADER = struct.Struct("!BBHII")


def demo_tracks() -> tuple[Track, Track]:
    """A participant's camera (VP8) and microphone (Opus), with random SSRCs."""
    video_ssrc = secrets.randbits(32) or 1
    audio_ssrc = secrets.randbits(32) or 2
    if audio_ssrc == video_ssrc:
        audio_ssrc ^= 1
    return (
        Track(video_ssrc, "video", "VP8", 96, 90000, name="camera"),
        Track(audio_ssrc, "audio", "opus", 111, 48000, channels=2, name="microphone"),
    )


# --------------------------------------------------------------------------------------
# Reception statistics (RFC 3550 appendix A.3 and A.8)


@dataclasses.dataclass
class StreamStats:
    """What one receiver knows of one incoming stream (one SSRC)."""

    clock_rate: int
    packets: int = 0
    bytes: int = 0
    base_seq: int = -1
    max_seq: int = 0  # extended: cycles * 65536 + seq
    jitter: float = 0.0  # in RTP timestamp units
    _transit: float | None = None
    _expected_prior: int = 0
    _received_prior: int = 0

    def add(self, seq: int, timestamp: int, arrival: float, size: int) -> None:
        self.packets += 1
        self.bytes += size
        if self.base_seq < 0:
            self.base_seq = self.max_seq = seq
        else:
            # The extension closest to the highest so far (wrap-around either way).
            cycles = self.max_seq & ~0xFFFF
            candidates = (cycles - 0x10000 + seq, cycles + seq, cycles + 0x10000 + seq)
            extended = min(candidates, key=lambda c: abs(c - self.max_seq))
            self.max_seq = max(self.max_seq, extended)
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            # Timestamps wrap at 2^32: a jump that large is a wrap, not network jitter.
            if d < 1 << 31:
                self.jitter += (d - self.jitter) / 16
        self._transit = transit

    @property
    def expected(self) -> int:
        return 0 if self.base_seq < 0 else self.max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (negative with duplicates, as RFC 3550 counts)."""
        return self.expected - self.packets

    @property
    def loss_fraction(self) -> float:
        return max(self.lost, 0) / self.expected if self.expected else 0.0

    @property
    def jitter_ms(self) -> float:
        return 1000.0 * self.jitter / self.clock_rate

    def report_block(self, ssrc: int, lsr: int = 0, dlsr: int = 0) -> rtcp.ReportBlock:
        """The report block about this stream (RFC 3550 6.4.1, A.3); starts a new interval
        for the fraction lost."""
        expected_interval = self.expected - self._expected_prior
        lost_interval = expected_interval - (self.packets - self._received_prior)
        self._expected_prior, self._received_prior = self.expected, self.packets
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        lost = max(-(1 << 23), min(self.lost, (1 << 23) - 1))
        return rtcp.ReportBlock(
            ssrc, min(fraction, 255), lost, self.max_seq & 0xFFFFFFFF, int(self.jitter) & 0xFFFFFFFF, lsr, dlsr
        )


class DemoReceiver(asyncio.DatagramProtocol):
    """A participant's receive address: SRTP in, per-SSRC statistics.

    It is bound before Join (Join takes the receive address) and keyed after it."""

    def __init__(self) -> None:
        self.session: pylibsrtp.Session | None = None
        self.tx: pylibsrtp.Session | None = None
        self.media_address: tuple[str, int] | None = None
        self.ssrc = secrets.randbits(32) or 1  # sender SSRC of its receiver reports
        self.clock_rates: dict[int, int] = {}
        self.streams: dict[int, StreamStats] = {}
        self.auth_failures = 0
        self.rtcp = 0
        self.rtcp_bad = 0
        self.reports_sent = 0
        self.transport: asyncio.DatagramTransport | None = None

    def key(self, session: ParticipantSession) -> None:
        self.session = create_session(session.suite, base64.b64decode(session.receive_key), inbound=True)
        # Receiver reports go to the participant's endpoint like its media: with its send key.
        self.tx = create_session(session.suite, base64.b64decode(session.send_key), inbound=False)
        self.media_address = session.media_address
        self.expect(session.received)

    def expect(self, subscriptions: Sequence[Subscription]) -> None:
        for subscription in subscriptions:
            self.clock_rates[subscription.ssrc] = subscription.track.clock_rate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's protocol is given its DatagramTransport.
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        arrival = time.monotonic()
        if self.session is None or len(data) < 12 or data[0] >> 6 != 2:
            return
        if 192 <= data[1] <= 223:  # RTCP (RFC 5761)
            self.rtcp += 1
            self._rtcp_received(data, arrival)
            return
        try:
            plain = self.session.unprotect(data)
        except pylibsrtp.Error:
            self.auth_failures += 1
            return
        _, _, seq, timestamp, ssrc = RTP_HEADER.unpack_from(plain)
        stats = self.streams.get(ssrc)
        if stats is None:
            stats = self.streams[ssrc] = StreamStats(self.clock_rates.get(ssrc, 90000))
        stats.add(seq, timestamp, arrival, len(plain))

    def _rtcp_received(self, data: bytes, arrival: float) -> None:
        assert self.session is not None
        try:
            packets = rtcp.parse_compound(self.session.unprotect_rtcp(data))
        except (pylibsrtp.Error, ValueError):
            self.rtcp_bad += 1
            return
        blocks = []
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport) and packet.ssrc in self.streams:
                # Answered at once; DLSR still says how long it was held (RFC 3550 6.4.1).
                dlsr = round((time.monotonic() - arrival) * 65536)
                blocks.append(
                    self.streams[packet.ssrc].report_block(packet.ssrc, rtcp.ntp_middle(packet.ntp_timestamp), dlsr)
                )
        if blocks and self.tx is not None and self.transport is not None and self.media_address is not None:
            report = rtcp.ReceiverReport(self.ssrc, tuple(blocks))
            self.transport.sendto(self.tx.protect_rtcp(bytes(report)), self.media_address)
            self.reports_sent += 1

    @property
    def packets(self) -> int:
        return sum(s.packets for s in self.streams.values())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_receiver(host: str = "127.0.0.1") -> tuple[DemoReceiver, tuple[str, int]]:
    """A receiver bound to a free UDP port of `host`, and its address."""
    loop = asyncio.get_running_loop()
    receiver = DemoReceiver()
    transport, _ = await loop.create_datagram_endpoint(lambda: receiver, local_addr=(host, 0))
    return receiver, transport.get_extra_info("sockname")[:2]


# --------------------------------------------------------------------------------------
# Publishers


class Publisher:
    """Sends a participant's tracks to its endpoint until stopped."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    @property
    def failed(self) -> str | None:
        """Why it stopped before it was told to, or None."""
        return None


class FfmpegPublisher(Publisher):
    """One ffmpeg process: a test pattern as VP8 and a tone as Opus, two SRTP outputs to the
    daemon's port (RTCP multiplexed on it), each with its SSRC."""

    def __init__(
        self, session: ParticipantSession, index: int, log_path: str, *, duration: float, size: str = "320x240"
    ) -> None:
        self.session = session
        self.argv = ffmpeg_command(session, index, duration, size)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = False

    async def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    @property
    def failed(self) -> str | None:
        if self.process is None or self._stopping or self.process.poll() is None:
            return None
        return f"ffmpeg exited with code {self.process.returncode} (log: {self.log_path})"

    async def stop(self) -> None:
        self._stopping = True
        process = self.process
        if process is None:
            return
        # ffmpeg ends its main loop on the first SIGINT and interrupts blocking I/O on the second.
        for wait in (1.0, 5.0):
            if process.poll() is not None:
                break
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), wait)
            except TimeoutError:
                pass
        if process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)


def _signed(ssrc: int) -> int:
    # ffmpeg's -ssrc option is a signed 32-bit integer.
    return ssrc - (1 << 32) if ssrc >= 1 << 31 else ssrc


def ffmpeg_command(session: ParticipantSession, index: int, duration: float, size: str = "320x240") -> list[str]:
    """The sources end by themselves after `duration` seconds, should nobody stop them."""
    host, port = session.media_address
    url = f"srtp://{host}:{port}?rtcpport={port}&pkt_size=1200"
    video = next(t for t in session.published if t.kind == "video")
    audio = next(t for t in session.published if t.kind == "audio")
    # -re (read at the native rate) and -t are options of the input they precede.
    paced = ["-re", "-t", f"{duration:.0f}", "-f", "lavfi", "-i"]
    argv = [FFMPEG or "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"]
    argv += [*paced, f"testsrc2=size={size}:rate={VIDEO_FPS}"]
    argv += [*paced, f"sine=frequency={440 + 110 * index}:sample_rate=48000:samples_per_frame=960"]
    keys = ["-srtp_out_suite", session.suite, "-srtp_out_params", session.send_key]
    argv += [
        "-map", "0:v", "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k", "-g", "60",
        "-f", "rtp", "-payload_type", str(video.payload_type), "-ssrc", str(_signed(video.ssrc)), *keys, url,
    ]
    argv += [
        "-map", "1:a", "-ac", "2", "-c:a", "libopus", "-b:a", "48k", "-frame_duration", "20",
        "-application", "lowdelay",
        "-f", "rtp", "-payload_type", str(audio.payload_type), "-ssrc", str(_signed(audio.ssrc)), *keys, url,
    ]
    return argv


class BuiltinPublisher(Publisher):
    """RTP packets with placeholder payloads at the pace of a 30 fps video (two packets a
    frame, a key frame each second) and 20 ms audio, SRTP-protected in Python: for machines
    without ffmpeg. The video payloads begin as VP8's do (RFC 7741), so that the daemon
    tells key frames apart, as a new receiver's route waits for one."""

    def __init__(self, session: ParticipantSession) -> None:
        self.session = session
        self.tx = create_session(session.suite, base64.b64decode(session.send_key), inbound=False)
        self.tasks: list[asyncio.Task[None]] = []
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=self.session.media_address
        )
        for track in self.session.published:
            if track.kind == "video":
                self.tasks.append(asyncio.create_task(self._send(track, 1 / VIDEO_FPS, (1100, 700))))
            else:
                self.tasks.append(asyncio.create_task(self._send(track, AUDIO_FRAME_SECONDS, (120,))))

    async def _send(self, track: Track, interval: float, sizes: Sequence[int]) -> None:
        assert self.transport is not None
        seq = secrets.randbits(16)
        timestamp0 = secrets.randbits(32)
        start = time.monotonic()
        frame = 0
        packets = octets = 0
        next_report = start + SENDER_REPORT_INTERVAL
        while True:
            timestamp = (timestamp0 + int(frame * interval * track.clock_rate)) & 0xFFFFFFFF
            for i, size in enumerate(sizes):
                marker = 0x80 if i == len(sizes) - 1 else 0
                header = RTP_HEADER.pack(0x80, marker | track.payload_type, seq, timestamp, track.ssrc)
                lead = b""
                if track.kind == "video":  # frame start (S=1) or not; a key frame (P=0) each second
                    lead = bytes([0x10 if i == 0 else 0x00, 0x00 if frame % VIDEO_FPS == 0 else 0x01])
                self.transport.sendto(self.tx.protect(header + lead + os.urandom(size - len(lead))))
                seq = (seq + 1) & 0xFFFF
                packets += 1
                octets += size
            if time.monotonic() >= next_report:
                next_report += SENDER_REPORT_INTERVAL
                report = rtcp.SenderReport(track.ssrc, rtcp.ntp_now(), timestamp, packets, octets)
                self.transport.sendto(self.tx.protect_rtcp(bytes(report)))
            frame += 1
            # Paced against the start time, so that delays do not accumulate.
            await asyncio.sleep(max(0.0, start + frame * interval - time.monotonic()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()
