"""Independent media peers for interop tests: ffmpeg and GStreamer as SRTP senders and
receivers, each a real subprocess configured only from an SDP media description.

Frames are counted from the decoder's own output:
- ffmpeg writes one `framemd5` line per decoded frame (`-fps_mode passthrough`: no frame
  is duplicated or dropped to fit a rate);
- GStreamer writes each decoded frame, scaled to a fixed tiny raw format, to a file: its
  size divided by the frame size is the number of frames the decoder put out. (The
  `fakesink silent=false` messages of `gst-launch -v` are not exact: the bus can repeat or
  coalesce them.)
"""
from __future__ import annotations

import base64
import dataclasses
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from charter.sdp import Media, ParticipantSession
from charter.tracks import Track

T = TypeVar("T", bound="MediaProcess | Receiver")
FFMPEG = shutil.which("ffmpeg")
GST_LAUNCH = shutil.which("gst-launch-1.0")
GST_INSPECT = shutil.which("gst-inspect-1.0")

# Generous: a wait only lasts this long when something is wrong (2 shared cores).
READY_SECONDS = 20.0
STOP_SECONDS = 15.0

VIDEO_SIZE = (320, 240)
VIDEO_FPS = 30
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
# GStreamer receivers write each decoded frame in one of these fixed raw formats.
GST_VIDEO_CAPS = "video/x-raw,format=I420,width=16,height=16"
GST_VIDEO_FRAME_BYTES = 16 * 16 * 3 // 2
GST_AUDIO_CAPS = "audio/x-raw,format=S16LE,rate=48000,channels=2"
GST_AUDIO_FRAME_BYTES = OPUS_FRAME_SAMPLES * 2 * 2

# SDES suite -> GStreamer srtpenc/srtpdec cipher and auth names.
GST_SUITES = {
    "AES_CM_128_HMAC_SHA1_80": ("aes-128-icm", "hmac-sha1-80"),
    "AES_CM_128_HMAC_SHA1_32": ("aes-128-icm", "hmac-sha1-32"),
    "AEAD_AES_128_GCM": ("aes-128-gcm", "null"),
}
# ffmpeg's srtp protocol knows only the AES-CM suites.
FFMPEG_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")


def missing_tools() -> str | None:
    """Why peer tests cannot run here, or None."""
    missing = [name for name, path in (("ffmpeg", FFMPEG), ("gst-launch-1.0", GST_LAUNCH)) if path is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def gst_cannot_send(codec: str) -> str | None:
    """Why GStreamer cannot encode `codec` here, or None (H.264 comes from openh264enc)."""
    element = {"vp8": "vp8enc", "h264": "openh264enc", "opus": "opusenc"}[codec.lower()]
    return None if gst_has(element) else f"GStreamer has no {element}"


def gst_has(element: str) -> bool:
    return GST_INSPECT is not None and subprocess.run(
        [GST_INSPECT, "--exists", element], capture_output=True
    ).returncode == 0


@dataclasses.dataclass(frozen=True)
class Stream:
    """One SRTP stream as a peer needs it: where it flows, its codec, SSRC and key."""

    kind: str
    codec: str
    payload_type: int
    clock_rate: int
    channels: int
    ssrc: int
    host: str
    port: int
    suite: str
    key: str  # base64 SDES inline key

    @classmethod
    def from_media(cls, media: Media) -> Stream:
        if not media.crypto:
            raise ValueError(f"m={media.kind} port {media.port} has no a=crypto line")
        host, port = media.transport()
        return cls(
            kind=media.kind,
            codec=media.codec,
            payload_type=media.payload_type,
            clock_rate=media.clock_rate,
            channels=media.channels,
            ssrc=media.ssrc,
            host=host,
            port=port,
            suite=media.crypto[0].suite,
            key=media.crypto[0].key,
        )

    def with_key(self, key: bytes) -> Stream:
        return dataclasses.replace(self, key=base64.b64encode(key).decode())

    @property
    def key_hex(self) -> str:
        return base64.b64decode(self.key).hex()

    @property
    def codec_name(self) -> str:
        return self.codec.lower()


# --------------------------------------------------------------------------------------
# Processes


def udp_port_bound(port: int) -> bool:
    """True when some socket of this machine is bound to UDP `port`."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    local = line.split()[1]  # "0100007F:9C40"
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class MediaProcess:
    """A peer subprocess with its stderr in a log file (read back in failure messages)."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self, tail: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-tail:]

    def describe(self) -> str:
        return f"{self.name} (exit {self.process.poll()}): {' '.join(self.argv)}\n--- log ---\n{self.log()}"

    def wait(self, timeout: float) -> int:
        """Wait for a process that ends by itself (a sender after its last frame)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.describe()}") from None

    def stop(self) -> None:
        """Interrupt: ffmpeg and `gst-launch -e` finish their output on SIGINT. ffmpeg only
        leaves a blocking read on a second one (the first just ends its main loop)."""
        for wait in (1.0, STOP_SECONDS):
            if not self.running:
                break
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        if self.running:
            self.process.kill()
            self.process.wait()
        self._log.close()


# --------------------------------------------------------------------------------------
# Senders: publish `frames` frames of a test source, paced in real time.


def _ffmpeg_encoder(stream: Stream, frames: int) -> list[str]:
    codec = stream.codec_name
    width, height = VIDEO_SIZE
    if codec in ("vp8", "h264"):
        source = ["-re", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={VIDEO_FPS}", "-frames:v", str(frames)]
        if codec == "vp8":
            return [*source, "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k", "-g", "30"]
        return [
            *source, "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-b:v", "300k", "-g", "30",
        ]
    if codec == "opus":
        return [
            "-re", "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:samples_per_frame={OPUS_FRAME_SAMPLES}",
            "-frames:a", str(frames), "-ac", "2", "-c:a", "libopus", "-b:a", "64k", "-frame_duration", "20",
            "-application", "lowdelay",
        ]
    raise ValueError(f"no ffmpeg encoder for {stream.codec}")


def ffmpeg_sender(name: str, stream: Stream, frames: int, workdir: Path) -> MediaProcess:
    """ffmpeg encoding a test source and sending it as SRTP to the stream's address.

    RTCP goes to the same port (rtcp-mux); the SSRC option is a signed 32-bit integer.
    """
    if stream.suite not in FFMPEG_SUITES:
        raise ValueError(f"ffmpeg cannot send {stream.suite}")
    ssrc = stream.ssrc - (1 << 32) if stream.ssrc >= 1 << 31 else stream.ssrc
    url = f"srtp://{stream.host}:{stream.port}?rtcpport={stream.port}&pkt_size=1200"
    argv = [
        FFMPEG or "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
        *_ffmpeg_encoder(stream, frames),
        "-f", "rtp", "-payload_type", str(stream.payload_type), "-ssrc", str(ssrc),
        "-srtp_out_suite", stream.suite, "-srtp_out_params", stream.key, url,
    ]
    return MediaProcess(name, argv, workdir)


def _gst_encoder(stream: Stream, frames: int) -> str:
    codec = stream.codec_name
    width, height = VIDEO_SIZE
    pay = f"pt={stream.payload_type} ssrc={stream.ssrc}"
    if codec in ("vp8", "h264"):
        source = (
            f"videotestsrc num-buffers={frames} is-live=true "
            f"! video/x-raw,width={width},height={height},framerate={VIDEO_FPS}/1"
        )
        if codec == "vp8":
            encoder = "vp8enc deadline=1 cpu-used=8 target-bitrate=300000 keyframe-max-dist=30"
            return f"{source} ! {encoder} ! rtpvp8pay {pay} mtu=1200"
        return (
            f"{source} ! openh264enc bitrate=300000 gop-size=30 ! h264parse "
            f"! rtph264pay {pay} mtu=1200 config-interval=-1"
        )
    if codec == "opus":
        return (
            f"audiotestsrc num-buffers={frames} samplesperbuffer={OPUS_FRAME_SAMPLES} is-live=true wave=sine "
            f"! audio/x-raw,rate=48000,channels=2 ! opusenc frame-size=20 bitrate=64000 ! rtpopuspay {pay}"
        )
    raise ValueError(f"no GStreamer encoder for {stream.codec}")


def gst_sender(name: str, stream: Stream, frames: int, workdir: Path) -> MediaProcess:
    """gst-launch encoding a test source, srtpenc, udpsink to the stream's address."""
    cipher, auth = GST_SUITES[stream.suite]
    pipeline = (
        f"{_gst_encoder(stream, frames)} "
        f"! srtpenc key={stream.key_hex} rtp-cipher={cipher} rtp-auth={auth} rtcp-cipher={cipher} rtcp-auth={auth} "
        f"! udpsink host={stream.host} port={stream.port} sync=false"
    )
    return MediaProcess(name, [GST_LAUNCH or "gst-launch-1.0", "-q", "-e", *pipeline.split()], workdir)


SENDERS = {"ffmpeg": ffmpeg_sender, "gst": gst_sender}


# --------------------------------------------------------------------------------------
# Receivers: listen on the stream's port, decrypt, decode, count decoded frames.


class Receiver:
    port: int
    process: MediaProcess

    def frames(self, ssrc: int) -> int:
        raise NotImplementedError

    def wait_ready(self) -> None:
        """Wait until the receiver's socket is bound, so that no packet goes unheard."""
        wait_until(
            lambda: udp_port_bound(self.port) or not self.process.running,
            f"{self.process.name} to bind UDP {self.port}",
            READY_SECONDS,
        )
        assert self.process.running, f"receiver ended before listening:\n{self.process.describe()}"

    def stop(self) -> None:
        self.process.stop()


class FfmpegReceiver(Receiver):
    """ffmpeg reading a one-track SDP file: it binds the m-line's port and decrypts with
    the m-line's a=crypto key (ffmpeg opens one socket per m-line)."""

    def __init__(self, name: str, sdp: str, workdir: Path) -> None:
        from charter.sdp import parse

        media = parse(sdp).media
        if len(media) != 1:
            raise ValueError(f"an ffmpeg receiver takes a one-track SDP, got {len(media)} m-lines")
        self.port = media[0].port
        self.ssrc = media[0].ssrcs[0] if media[0].ssrcs else 0
        self.sdp_path = workdir / f"{name}.sdp"
        self.sdp_path.write_text(sdp)
        self.output = workdir / f"{name}.framemd5"
        argv = [
            FFMPEG or "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
            "-protocol_whitelist", "file,udp,rtp,srtp,crypto",
            "-threads", "1", "-i", str(self.sdp_path), "-map", "0", "-fps_mode", "passthrough",
            "-f", "framemd5", "-flush_packets", "1", str(self.output),
        ]
        self.process = MediaProcess(name, argv, workdir)

    def frames(self, ssrc: int | None = None) -> int:
        try:
            with open(self.output) as f:
                return sum(1 for line in f if line.strip() and not line.startswith("#"))
        except FileNotFoundError:
            return 0


def _gst_decoder(stream: Stream) -> tuple[str, int]:
    codec = stream.codec_name
    if codec == "vp8":
        chain = "rtpvp8depay ! vp8dec"
    elif codec == "h264":
        decoder = "openh264dec" if gst_has("openh264dec") else "avdec_h264"
        chain = f"rtph264depay ! h264parse ! {decoder}"
    elif codec == "opus":
        return f"rtpopusdepay ! opusdec ! audioconvert ! audioresample ! {GST_AUDIO_CAPS}", GST_AUDIO_FRAME_BYTES
    else:
        raise ValueError(f"no GStreamer decoder for {stream.codec}")
    return f"{chain} ! videoconvert ! videoscale ! {GST_VIDEO_CAPS}", GST_VIDEO_FRAME_BYTES


class GstReceiver(Receiver):
    """gst-launch receiving one or more SRTP streams on one port.

    srtpdec takes its key and SSRC from caps and drops other SSRCs, so each stream gets its
    own branch off a tee, with its caps set: several tracks of a participant arrive on its
    one receive port, told apart by SSRC as the SDP states them. The sinks do not wait for
    preroll (async=false): a branch whose stream never comes must not hold up the others.
    """

    def __init__(self, name: str, streams: Sequence[Stream], workdir: Path) -> None:
        if not streams:
            raise ValueError("a receiver needs at least one stream")
        ports = {s.port for s in streams}
        if len(ports) != 1:
            raise ValueError(f"a GStreamer receiver listens on one port, the streams name {sorted(ports)}")
        self.port = ports.pop()
        self.outputs: dict[int, tuple[Path, int]] = {}
        branches = []
        for stream in streams:
            cipher, auth = GST_SUITES[stream.suite]
            caps = (
                f"application/x-srtp,media={stream.kind},clock-rate={stream.clock_rate},"
                f"encoding-name={stream.codec.upper()},payload={stream.payload_type},ssrc=(uint){stream.ssrc},"
                f"srtp-key=(buffer){stream.key_hex},srtp-cipher={cipher},srtp-auth={auth},"
                f"srtcp-cipher={cipher},srtcp-auth={auth}"
            )
            decode, frame_bytes = _gst_decoder(stream)
            output = workdir / f"{name}-{stream.ssrc}.raw"
            self.outputs[stream.ssrc] = (output, frame_bytes)
            # The daemon's RTCP (translated sender reports) comes on the same port: srtpdec
            # hands it to its rtcp_src pad, which must be linked or the branch stops.
            dec = f"dec{len(branches)}"
            branches.append(
                f"t. ! queue ! capssetter replace=true caps={caps} ! srtpdec name={dec} ! {decode} "
                f"! filesink location={output} sync=false async=false buffer-mode=unbuffered "
                f"{dec}.rtcp_src ! fakesink sync=false async=false"
            )
        pipeline = f"udpsrc address=0.0.0.0 port={self.port} caps=application/x-srtp ! tee name=t " + " ".join(branches)
        self.process = MediaProcess(name, [GST_LAUNCH or "gst-launch-1.0", "-q", "-e", *pipeline.split()], workdir)

    def frames(self, ssrc: int) -> int:
        output, frame_bytes = self.outputs[ssrc]
        try:
            return output.stat().st_size // frame_bytes
        except FileNotFoundError:
            return 0


def ffmpeg_receiver(name: str, sdp: str, workdir: Path) -> FfmpegReceiver:
    return FfmpegReceiver(name, sdp, workdir)


def settle(counts: Callable[[], Sequence[int]], *, quiet: float = 2.0, timeout: float = 30.0) -> None:
    """Wait until decoded-frame counts stop growing for `quiet` seconds (or `timeout`)."""
    deadline = time.monotonic() + timeout
    last = list(counts())
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = list(counts())
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return


class Running:
    """Owns peer processes from the moment they start: leaving the `with` block stops every
    one, whatever happened in between."""

    def __init__(self) -> None:
        self.items: list[MediaProcess | Receiver] = []

    def add(self, item: T) -> T:
        self.items.append(item)
        return item

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for item in reversed(self.items):
            item.stop()


def random_ssrcs() -> Iterator[int]:
    """Distinct random SSRCs (RFC 3550 section 8: chosen at random)."""
    import secrets

    seen: set[int] = set()
    while True:
        ssrc = secrets.randbits(32)
        if ssrc and ssrc not in seen:
            seen.add(ssrc)
            yield ssrc


# --------------------------------------------------------------------------------------
# The real thing: `charter up` (controller and media daemon processes) driven over gRPC.


def free_port(kind: int = 0) -> int:
    """A port the kernel just handed out (SOCK_DGRAM for UDP, else TCP), closed again."""
    import socket

    with socket.socket(socket.AF_INET, kind or socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    import socket

    return free_port(socket.SOCK_DGRAM)


class CharterUp:
    """`charter up` with one media daemon on free ports, as a user starts it."""

    def __init__(self, workdir: Path, *, media_ports: str | None = None) -> None:
        import random
        import sys

        import grpc

        from charter.v1 import controller_pb2_grpc

        self.controller_address = f"127.0.0.1:{free_port()}"
        self.mediad_address = f"127.0.0.1:{free_port()}"
        if media_ports is None:
            # A block of the default media range; ports another process holds are skipped.
            first = random.randrange(16384, 32767 - 400, 100)
            media_ports = f"{first}-{first + 399}"
        argv = [
            sys.executable, "-m", "cli", "up", "--daemons", "1",
            "--controller-port", self.controller_address.rsplit(":", 1)[1],
            "--mediad-port", self.mediad_address.rsplit(":", 1)[1],
            "--ports", media_ports, "--log-format", "text", "--log-level", "warning",
        ]
        self.process = MediaProcess("charter-up", argv, workdir)
        self.channel = grpc.insecure_channel(self.controller_address)
        self.daemon_channel = grpc.insecure_channel(self.mediad_address)
        self.conferences = controller_pb2_grpc.ConferenceServiceStub(self.channel)
        self._registry = controller_pb2_grpc.DaemonRegistryStub(self.channel)
        self._wait_daemon()

    def _wait_daemon(self) -> None:
        import grpc

        from charter.v1 import controller_pb2

        def registered() -> bool:
            assert self.process.running, f"charter up exited:\n{self.process.describe()}"
            try:
                reply = self._registry.ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return len(reply.daemons) > 0

        wait_until(registered, "charter up to serve with a registered media daemon", 60.0)

    def create_conference(self, conference_id: str) -> None:
        from charter.v1 import controller_pb2

        self.conferences.CreateConference(controller_pb2.CreateConferenceRequest(conference_id=conference_id), timeout=10)

    def join(
        self,
        conference_id: str,
        participant_id: str,
        tracks: Sequence[Track] = (),
        *,
        receive_address: tuple[str, int] | None = None,
    ) -> ParticipantSession:
        from charter.sdp import from_participant
        from charter.v1 import controller_pb2

        request = controller_pb2.JoinRequest(
            conference_id=conference_id,
            participant_id=participant_id,
            tracks=[t.to_proto() for t in tracks],
        )
        if receive_address is not None:
            request.receive_address.ip, request.receive_address.port = receive_address
        return from_participant(self.conferences.Join(request, timeout=10).participant)

    def session(self, conference_id: str, participant_id: str) -> ParticipantSession:
        from charter.sdp import from_participant
        from charter.v1 import controller_pb2

        request = controller_pb2.GetParticipantRequest(conference_id=conference_id, participant_id=participant_id)
        return from_participant(self.conferences.GetParticipant(request, timeout=10))

    def api_sdp(self, conference_id: str, participant_id: str) -> str:
        """The SDP the API returns with the participant (Participant.sdp of GetParticipant)."""
        from charter.v1 import controller_pb2

        request = controller_pb2.GetParticipantRequest(conference_id=conference_id, participant_id=participant_id)
        return str(self.conferences.GetParticipant(request, timeout=10).sdp)

    def endpoint_stats(self, conference_id: str, participant_id: str) -> Any:
        """The daemon's EndpointStats of a participant (endpoint id "conference/participant")."""
        from charter.v1 import mediad_pb2, mediad_pb2_grpc

        daemon = mediad_pb2_grpc.MediaDaemonStub(self.daemon_channel)
        stats = daemon.GetStats(mediad_pb2.GetStatsRequest(conference_id=conference_id), timeout=10)
        for endpoint in stats.endpoints:
            if endpoint.endpoint_id == f"{conference_id}/{participant_id}":
                return endpoint
        raise KeyError(f"the daemon has no endpoint for {conference_id}/{participant_id}")

    def end_conference(self, conference_id: str) -> None:
        from charter.v1 import controller_pb2

        self.conferences.EndConference(controller_pb2.EndConferenceRequest(conference_id=conference_id), timeout=10)

    def close(self) -> int | None:
        """SIGTERM, as Ctrl-C would; the exit code (0: every process stopped cleanly)."""
        self.channel.close()
        self.daemon_channel.close()
        if self.process.running:
            self.process.process.send_signal(signal.SIGTERM)
            try:
                self.process.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.process.kill()
        self.process.stop()
        return self.process.process.returncode
