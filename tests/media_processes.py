"""Independent media peers for interop tests: ffmpeg and GStreamer, each a real subprocess
configured only from an SDP media description. Here: which tools there are, the Stream a
peer is given, the peer process itself, and the senders with their pinned pipelines (the
receivers are in media_receivers)."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from charter.sdp import Media
from processes import start_logged

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
    return (
        GST_INSPECT is not None
        and subprocess.run([GST_INSPECT, "--exists", element], capture_output=True).returncode == 0
    )


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
# Processes


class MediaProcess:
    """A peer subprocess with its output in a log file (read back in failure messages)."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = workdir / f"{name}.log"
        self.process = start_logged(self.argv, self.log_path, cwd=workdir,
                                    env=None if env is None else {**os.environ, **env})

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self, tail: int = 3000) -> str:
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


class Stoppable(Protocol):
    def stop(self) -> None: ...


T = TypeVar("T", bound=Stoppable)


class Running:
    """Owns peer processes from the moment they start: leaving the `with` block stops every
    one, whatever happened in between."""

    def __init__(self) -> None:
        self.items: list[Stoppable] = []

    def add(self, item: T) -> T:
        self.items.append(item)
        return item

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for item in reversed(self.items):
            item.stop()


# --------------------------------------------------------------------------------------
# Senders: publish `frames` frames of a test source, paced in real time.


@dataclasses.dataclass(frozen=True)
class Picture:
    """What a video sender encodes: its size and frame rate (smaller where many run at once),
    and the RTP sequence number it starts from (None: random). A sender started again with
    the same key and SSRC must start above where the last one stopped, or its packets are
    replays to the receiving SRTP session."""

    width: int = VIDEO_SIZE[0]
    height: int = VIDEO_SIZE[1]
    fps: int = VIDEO_FPS
    first_seq: int | None = None
    key_frame_interval: int = 0
    """Frames from one key frame to the next; 0: one a second."""

    @property
    def gop(self) -> int:
        return self.key_frame_interval or self.fps


def _ffmpeg_encoder(stream: Stream, frames: int, picture: Picture) -> list[str]:
    codec = stream.codec_name
    width, height, fps = picture.width, picture.height, picture.fps
    if codec in ("vp8", "h264"):
        source = [
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size={width}x{height}:rate={fps}",
            "-frames:v",
            str(frames),
        ]
        if codec == "vp8":
            return [*source, "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k",
                    "-g", str(picture.gop), "-keyint_min", str(picture.gop)]
        return [
            *source,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            "300k",
            "-g",
            str(picture.gop),
        ]
    if codec == "opus":
        return [
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:samples_per_frame={OPUS_FRAME_SAMPLES}",
            "-frames:a",
            str(frames),
            "-ac",
            "2",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
            "-frame_duration",
            "20",
            "-application",
            "lowdelay",
        ]
    raise ValueError(f"no ffmpeg encoder for {stream.codec}")


def ffmpeg_sender(name: str, stream: Stream, frames: int, workdir: Path, picture: Picture = Picture()) -> MediaProcess:
    """ffmpeg encoding a test source and sending it as SRTP to the stream's address.

    RTCP goes to the same port (rtcp-mux); the SSRC option is a signed 32-bit integer.
    """
    if stream.suite not in FFMPEG_SUITES:
        raise ValueError(f"ffmpeg cannot send {stream.suite}")
    ssrc = stream.ssrc - (1 << 32) if stream.ssrc >= 1 << 31 else stream.ssrc
    url = f"srtp://{stream.host}:{stream.port}?rtcpport={stream.port}&pkt_size=1200"
    argv = [
        FFMPEG or "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        *_ffmpeg_encoder(stream, frames, picture),
        "-f",
        "rtp",
        "-payload_type",
        str(stream.payload_type),
        *(["-seq", str(picture.first_seq)] if picture.first_seq is not None else []),
        "-ssrc",
        str(ssrc),
        "-srtp_out_suite",
        stream.suite,
        "-srtp_out_params",
        stream.key,
        url,
    ]
    return MediaProcess(name, argv, workdir)


def _gst_encoder(stream: Stream, frames: int, picture: Picture) -> str:
    codec = stream.codec_name
    width, height, fps = picture.width, picture.height, picture.fps
    pay = f"pt={stream.payload_type} ssrc={stream.ssrc}"
    if picture.first_seq is not None:
        pay += f" seqnum-offset={picture.first_seq}"
    if codec in ("vp8", "h264"):
        source = (
            f"videotestsrc num-buffers={frames} is-live=true "
            f"! video/x-raw,width={width},height={height},framerate={fps}/1"
        )
        if codec == "vp8":
            encoder = f"vp8enc deadline=1 cpu-used=8 target-bitrate=300000 keyframe-max-dist={picture.gop}"
            return f"{source} ! {encoder} ! rtpvp8pay {pay} mtu=1200"
        return (
            f"{source} ! openh264enc bitrate=300000 gop-size={picture.gop} ! h264parse "
            f"! rtph264pay {pay} mtu=1200 config-interval=-1"
        )
    if codec == "opus":
        return (
            f"audiotestsrc num-buffers={frames} samplesperbuffer={OPUS_FRAME_SAMPLES} is-live=true wave=sine "
            f"! audio/x-raw,rate=48000,channels=2 ! opusenc frame-size=20 bitrate=64000 ! rtpopuspay {pay}"
        )
    raise ValueError(f"no GStreamer encoder for {stream.codec}")


def gst_sender(name: str, stream: Stream, frames: int, workdir: Path, picture: Picture = Picture()) -> MediaProcess:
    """gst-launch encoding a test source, srtpenc, udpsink to the stream's address."""
    cipher, auth = GST_SUITES[stream.suite]
    pipeline = (
        f"{_gst_encoder(stream, frames, picture)} "
        f"! srtpenc key={stream.key_hex} rtp-cipher={cipher} rtp-auth={auth} rtcp-cipher={cipher} rtcp-auth={auth} "
        f"! udpsink host={stream.host} port={stream.port} sync=false"
    )
    return MediaProcess(name, [GST_LAUNCH or "gst-launch-1.0", "-q", "-e", *pipeline.split()], workdir)


SENDERS = {"ffmpeg": ffmpeg_sender, "gst": gst_sender}
