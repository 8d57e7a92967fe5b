"""Ready command lines for ffmpeg and GStreamer (`charter sdp --as ffmpeg|gst`): a
participant's session turned into the processes that publish its tracks to the media daemon
or receive and decode the tracks Charter sends it, so that no one translates SDP by hand.

Publishing: one command per track, each sending SRTP with the participant's send key, the
track's SSRC and payload type to the daemon's port (RTCP to the same port, rtcp-mux).

Receiving: every received track arrives at the participant's one receive port, told apart
by SSRC. GStreamer takes them all in one pipeline (udpsrc, a tee, one srtpdec branch per
SSRC: srtpdec drops other SSRCs). ffmpeg cannot: it opens a socket and keeps one SRTP
context per m-line and does not tell SSRCs apart, so it receives a participant that
receives exactly one track; its SDP goes inline, as a data: URI, so that the command
stands alone.

Pure: no I/O."""
from __future__ import annotations

import base64
import dataclasses
import re
import shlex
from collections.abc import Sequence

from charter.sdp import ParticipantSession, render
from charter.suites import SrtpSuite
from charter.tracks import Track

TOOLS = ("ffmpeg", "gst")
SEND = "send"
RECV = "recv"
SINKS = ("screen", "files", "none")
"""Where received tracks go: shown and played, written to raw files, or only decoded."""

DEFAULT_SIZE = (320, 240)
DEFAULT_FPS = 30
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
VIDEO_BITRATE = 300_000
AUDIO_BITRATE = 64_000
PACKET_SIZE = 1200
FFMPEG_SUITES = (SrtpSuite.AES_CM_128_HMAC_SHA1_80, SrtpSuite.AES_CM_128_HMAC_SHA1_32)
"""The only suites ffmpeg's srtp protocol knows."""
GST_SUITES = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: ("aes-128-icm", "hmac-sha1-80"),
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: ("aes-128-icm", "hmac-sha1-32"),
    SrtpSuite.AEAD_AES_128_GCM: ("aes-128-gcm", "null"),
}
"""A suite as srtpenc and srtpdec name its cipher and authentication."""
FFMPEG_RECEIVE_PROTOCOLS = "data,udp,rtp,srtp,crypto"
# What each kind of received track becomes with `--sink files`: a fixed raw format, so the
# file plays with ffplay -f rawvideo / -f s16le and its size counts the decoded frames.
AUDIO_FILE_CAPS = "audio/x-raw,format=S16LE,rate=48000,channels=2"


class CommandError(Exception):
    """The session cannot be published or received this way; the message says why."""


@dataclasses.dataclass(frozen=True)
class Options:
    input: str | None = None
    """Send: what to publish instead of a test source (ffmpeg: a file or URL; gst: a source
    description that gives raw media)."""
    frames: int | None = None
    """Send: stop after this many frames (video frames, or 20 ms audio frames)."""
    size: tuple[int, int] | None = None
    """Send: the video size (of the test source, or the input scaled); recv with files:
    the size frames are written at."""
    fps: int | None = None
    """Send: the video frame rate."""
    sink: str = "screen"
    """Recv: one of SINKS."""


@dataclasses.dataclass(frozen=True)
class Command:
    """A process to run: what it does (comment lines) and its argv."""

    comments: tuple[str, ...]
    argv: tuple[str, ...]

    def text(self) -> str:
        """The comment lines and the command, quoted for a POSIX shell (shlex.split gives the
        argv back); GStreamer's links stay a bare `!`, which no shell expands before a space."""
        words = ("!" if word == "!" else shlex.quote(word) for word in self.argv)
        return "".join(f"# {line}\n" for line in self.comments) + " ".join(words) + "\n"


@dataclasses.dataclass(frozen=True)
class _Flow:
    """One track as it flows here: the SSRC it has, whose it is, and where it goes."""

    track: Track
    ssrc: int
    publisher: str
    host: str
    port: int
    key: str  # base64 SDES inline key

    @property
    def codec(self) -> str:
        return self.track.codec.lower()

    @property
    def key_hex(self) -> str:
        return base64.b64decode(self.key).hex()

    def describe(self) -> str:
        name = f" ({self.track.name})" if self.track.name else ""
        return f"{self.track.kind} {self.track.codec}, SSRC {self.ssrc}{name}"


def build(
    session: ParticipantSession, tool: str, direction: str, *, ssrc: int | None = None, options: Options = Options()
) -> list[Command]:
    """The commands that publish (`direction="send"`) or receive (`"recv"`) the session's
    tracks with `tool`, or only the track with `ssrc`; CommandError when there is none to
    make."""
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {TOOLS}, not {tool!r}")
    if direction not in (SEND, RECV):
        raise ValueError(f"direction must be {SEND!r} or {RECV!r}, not {direction!r}")
    if options.sink not in SINKS:
        raise ValueError(f"sink must be one of {SINKS}, not {options.sink!r}")
    if tool == "ffmpeg" and session.suite not in FFMPEG_SUITES:
        raise CommandError(
            f"ffmpeg's SRTP knows only {' and '.join(s.value for s in FFMPEG_SUITES)}; participant "
            f"{session.participant_id!r} uses {session.suite.value}: use --as gst (GStreamer knows all three), "
            "or join with one of those suites"
        )
    flows = _flows(session, direction)
    if ssrc is not None:
        chosen = [f for f in flows if f.ssrc == ssrc]
        if not chosen:
            known = ", ".join(str(f.ssrc) for f in flows) or "none"
            verb = "publishes" if direction == SEND else "receives"
            raise CommandError(f"participant {session.participant_id!r} {verb} no track with SSRC {ssrc} "
                               f"(the SSRCs of what it {verb}: {known})")
    else:
        chosen = flows
    if not chosen:
        verb = "publishes no tracks" if direction == SEND else "receives no tracks (yet: no one else publishes)"
        raise CommandError(f"participant {session.participant_id!r} {verb}")
    if direction == SEND:
        maker = _ffmpeg_sender if tool == "ffmpeg" else _gst_sender
        return [maker(flow, session, options) for flow in chosen]
    if tool == "gst":
        return [_gst_receiver(chosen, session, options)]
    if len(flows) > 1:
        known = ", ".join(str(f.ssrc) for f in flows)
        raise CommandError(
            f"ffmpeg cannot receive participant {session.participant_id!r}: its {len(flows)} tracks (SSRCs {known}) "
            f"all arrive on its one receive port {flows[0].port}, and ffmpeg takes what comes to a port as one "
            "stream (it does not tell SSRCs apart: it decodes whichever it locks onto, or none), so --track does "
            "not help either. "
            "Use --as gst (one pipeline, a branch per SSRC), or join a participant per track, each with a "
            "receive address of its own"
        )
    return [_ffmpeg_receiver(chosen[0], session, options)]


def render_commands(commands: Sequence[Command]) -> str:
    return "".join(c.text() for c in commands)


def _flows(session: ParticipantSession, direction: str) -> list[_Flow]:
    if direction == SEND:
        host, port = session.media_address
        return [_Flow(t, t.ssrc, session.participant_id, host, port, session.send_key) for t in session.published]
    if session.receive_address is None:
        raise CommandError(
            f"participant {session.participant_id!r} joined without a receive address: the daemon sends its tracks "
            "back to the address and port it sends from (latching), which a separate receiving process cannot "
            "listen on; join with a receive_address to receive with --as"
        )
    host, port = session.receive_address
    return [_Flow(s.track, s.ssrc, s.publisher_id, host, port, session.receive_key) for s in session.received]


def _signed(ssrc: int) -> int:
    """ffmpeg's -ssrc is a signed 32-bit integer."""
    return ssrc - (1 << 32) if ssrc >= 1 << 31 else ssrc


def _size(options: Options) -> tuple[int, int]:
    return options.size or DEFAULT_SIZE


def _file_name(flow: _Flow, session: ParticipantSession) -> str:
    participant = re.sub(r"[^A-Za-z0-9._-]", "_", session.participant_id)
    return f"{participant}-{flow.ssrc}.{'yuv' if flow.track.kind == 'video' else 'pcm'}"


# --------------------------------------------------------------------------------------
# ffmpeg


def _ffmpeg_source(flow: _Flow, options: Options) -> list[str]:
    video = flow.track.kind == "video"
    if options.input is not None:
        source = ["-re", "-i", options.input, "-map", "0:v:0" if video else "0:a:0"]
        if video and options.size is not None:
            source += ["-s", "{}x{}".format(*options.size)]
        if video and options.fps is not None:
            source += ["-r", str(options.fps)]
    elif video:
        width, height = _size(options)
        source = ["-re", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={options.fps or DEFAULT_FPS}"]
    else:
        source = ["-re", "-f", "lavfi", "-i",
                  f"sine=frequency=440:sample_rate=48000:samples_per_frame={OPUS_FRAME_SAMPLES}"]
    if options.frames is not None:
        source += ["-frames:v" if video else "-frames:a", str(options.frames)]
    return source


def _ffmpeg_encoder(flow: _Flow, options: Options) -> list[str]:
    gop = str(options.fps or DEFAULT_FPS)
    bitrate = f"{VIDEO_BITRATE // 1000}k"
    if flow.codec == "vp8":
        return ["-pix_fmt", "yuv420p", "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8",
                "-b:v", bitrate, "-g", gop]
    if flow.codec == "h264":
        return ["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                "-profile:v", "baseline", "-b:v", bitrate, "-g", gop]
    if flow.codec == "opus":
        channels = "1" if flow.track.channels == 1 else "2"
        return ["-ac", channels, "-ar", "48000", "-c:a", "libopus", "-b:a", f"{AUDIO_BITRATE // 1000}k",
                "-frame_duration", "20", "-application", "lowdelay"]
    raise CommandError(f"no ffmpeg encoder here for {flow.track.codec} (SSRC {flow.ssrc}): VP8, H264 and opus have one")


def _ffmpeg_sender(flow: _Flow, session: ParticipantSession, options: Options) -> Command:
    url = f"srtp://{flow.host}:{flow.port}?rtcpport={flow.port}&pkt_size={PACKET_SIZE}"
    argv = (
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
        *_ffmpeg_source(flow, options),
        *_ffmpeg_encoder(flow, options),
        "-f", "rtp", "-payload_type", str(flow.track.payload_type), "-ssrc", str(_signed(flow.ssrc)),
        "-srtp_out_suite", session.suite.value, "-srtp_out_params", flow.key, url,
    )
    return Command((f"{session.participant_id} publishes {flow.describe()} to {flow.host}:{flow.port}",), argv)


def _ffmpeg_receiver(flow: _Flow, session: ParticipantSession, options: Options) -> Command:
    description = render(session, ssrc=flow.ssrc)
    uri = "data:application/sdp;base64," + base64.b64encode(description.encode()).decode()
    # One decoder thread: frame threads hold frames back, and Ctrl-C drops what they hold.
    reader = ["-threads", "1", "-protocol_whitelist", FFMPEG_RECEIVE_PROTOCOLS, "-f", "sdp", "-i", uri]
    receives = f"{session.participant_id} receives {flow.describe()} from {flow.publisher} on port {flow.port}"
    name = _file_name(flow, session)
    if options.sink == "screen":
        what = "shown (ffplay)" if flow.track.kind == "video" else "played (ffplay)"
        return Command((f"{receives}: {what}",), ("ffplay", "-hide_banner", "-loglevel", "warning", *reader))
    if options.sink == "none":
        output, what = ["-f", "null", "-"], "decoded only"
    elif flow.track.kind == "video":
        width, height = _size(options)
        output = ["-fps_mode", "passthrough", "-flush_packets", "1", "-f", "rawvideo", "-pix_fmt", "yuv420p",
                  "-s", f"{width}x{height}", name]
        what = f"I420 {width}x{height} frames to {name}"
    else:
        output = ["-flush_packets", "1", "-f", "s16le", "-ar", "48000", "-ac", "2", name]
        what = f"48 kHz stereo S16LE to {name}"
    argv = ("ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", *reader, "-map", "0", *output)
    return Command((f"{receives}: {what}",), argv)


# --------------------------------------------------------------------------------------
# GStreamer (gst-launch-1.0 takes its pipeline as words; -e ends it cleanly on Ctrl-C)


def _gst_source(flow: _Flow, options: Options) -> list[str]:
    video = flow.track.kind == "video"
    size = options.size or (None if options.input is not None else DEFAULT_SIZE)
    fps = options.fps or (None if options.input is not None else DEFAULT_FPS)
    fields = [f"width={size[0]},height={size[1]}"] if size else []
    fields += [f"framerate={fps}/1"] if fps else []
    raw_video = ",".join(["video/x-raw", *fields])
    raw_audio = f"audio/x-raw,rate=48000,channels={1 if flow.track.channels == 1 else 2}"
    if options.input is None:
        frames = [f"num-buffers={options.frames}"] if options.frames is not None else []
        if video:
            return ["videotestsrc", "is-live=true", *frames, "!", raw_video]
        return ["audiotestsrc", "is-live=true", "wave=sine", f"samplesperbuffer={OPUS_FRAME_SAMPLES}", *frames,
                "!", raw_audio]
    source = shlex.split(options.input)
    if video:
        source += ["!", "videoconvert", "!", "videoscale", "!", "videorate", "!", raw_video]
    else:
        source += ["!", "audioconvert", "!", "audioresample", "!", raw_audio]
    if options.frames is not None:
        source += ["!", "identity", f"eos-after={options.frames}"]
    return source


def _gst_encoder(flow: _Flow, options: Options) -> list[str]:
    gop = str(options.fps or DEFAULT_FPS)
    pay = [f"pt={flow.track.payload_type}", f"ssrc={flow.ssrc}"]
    if flow.codec == "vp8":
        return ["vp8enc", "deadline=1", "cpu-used=8", f"target-bitrate={VIDEO_BITRATE}", f"keyframe-max-dist={gop}",
                "!", "rtpvp8pay", *pay, f"mtu={PACKET_SIZE}"]
    if flow.codec == "h264":
        return ["openh264enc", f"bitrate={VIDEO_BITRATE}", f"gop-size={gop}", "!", "h264parse",
                "!", "rtph264pay", *pay, f"mtu={PACKET_SIZE}", "config-interval=-1"]
    if flow.codec == "opus":
        return ["opusenc", "frame-size=20", f"bitrate={AUDIO_BITRATE}", "!", "rtpopuspay", *pay]
    raise CommandError(f"no GStreamer encoder here for {flow.track.codec} (SSRC {flow.ssrc}): VP8, H264 and opus "
                       "have one")


def _gst_sender(flow: _Flow, session: ParticipantSession, options: Options) -> Command:
    cipher, auth = GST_SUITES[session.suite]
    argv = (
        "gst-launch-1.0", "-e",
        *_gst_source(flow, options), "!", *_gst_encoder(flow, options),
        "!", "srtpenc", f"key={flow.key_hex}", f"rtp-cipher={cipher}", f"rtp-auth={auth}",
        f"rtcp-cipher={cipher}", f"rtcp-auth={auth}",
        "!", "udpsink", f"host={flow.host}", f"port={flow.port}", "sync=false",
    )
    return Command((f"{session.participant_id} publishes {flow.describe()} to {flow.host}:{flow.port}",), argv)


def _gst_decoder(flow: _Flow) -> list[str]:
    if flow.codec == "vp8":
        return ["rtpvp8depay", "!", "vp8dec"]
    if flow.codec == "h264":
        return ["rtph264depay", "!", "h264parse", "!", "avdec_h264"]
    if flow.codec == "opus":
        return ["rtpopusdepay", "!", "opusdec"]
    raise CommandError(f"no GStreamer decoder here for {flow.track.codec} (SSRC {flow.ssrc}): VP8, H264 and opus "
                       "have one")


def _gst_sink(flow: _Flow, session: ParticipantSession, options: Options) -> tuple[list[str], str]:
    """The end of a branch after its decoder, and what it does. No sink waits for preroll
    (async=false): a branch whose stream never comes must not hold up the others."""
    free = ["sync=false", "async=false"]
    video = flow.track.kind == "video"
    convert = ["videoconvert"] if video else ["audioconvert", "!", "audioresample"]
    if options.sink == "none":
        return ["fakesink", *free], "decoded only"
    if options.sink == "screen":
        # An auto sink is a bin: async-handling keeps its preroll to itself, as async=false does.
        sink = ["autovideosink" if video else "autoaudiosink", "sync=false", "async-handling=true"]
        return [*convert, "!", *sink], "shown" if video else "played"
    name = _file_name(flow, session)
    if video:
        width, height = _size(options)
        caps = f"video/x-raw,format=I420,width={width},height={height}"
        convert += ["!", "videoscale"]
        what = f"I420 {width}x{height} frames to {name}"
    else:
        caps = AUDIO_FILE_CAPS
        what = f"48 kHz stereo S16LE to {name}"
    return [*convert, "!", caps, "!", "filesink", f"location={name}", *free, "buffer-mode=unbuffered"], what


def _gst_receiver(flows: Sequence[_Flow], session: ParticipantSession, options: Options) -> Command:
    cipher, auth = GST_SUITES[session.suite]
    port = flows[0].port
    words = ["gst-launch-1.0", "-e", "udpsrc", "address=0.0.0.0", f"port={port}", "caps=application/x-srtp",
             "!", "tee", "name=t"]
    comments = []
    for number, flow in enumerate(flows):
        # srtpdec takes its key and SSRC from the caps and drops every other SSRC.
        caps = (
            f"application/x-srtp,media={flow.track.kind},clock-rate={flow.track.clock_rate},"
            f"encoding-name={flow.track.codec.upper()},payload={flow.track.payload_type},ssrc=(uint){flow.ssrc},"
            f"srtp-key=(buffer){flow.key_hex},srtp-cipher={cipher},srtp-auth={auth},"
            f"srtcp-cipher={cipher},srtcp-auth={auth}"
        )
        sink, what = _gst_sink(flow, session, options)
        decoder = f"dec{number}"
        # The daemon's RTCP comes on the same port: srtpdec hands it to rtcp_src, which must
        # be linked or the branch stops.
        words += ["t.", "!", "queue", "!", "capssetter", "replace=true", f"caps={caps}",
                  "!", "srtpdec", f"name={decoder}", "!", *_gst_decoder(flow), "!", *sink,
                  f"{decoder}.rtcp_src", "!", "fakesink", "sync=false", "async=false"]
        comments.append(f"{session.participant_id} receives {flow.describe()} from {flow.publisher} "
                        f"on port {port}: {what}")
    return Command(tuple(comments), tuple(words))
