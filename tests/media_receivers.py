"""Media peers as receivers: ffmpeg and GStreamer listen on a stream's port, decrypt with
the SDP's key, decode, and count the frames they decoded, from the decoder's own output:
- ffmpeg writes one `framemd5` line per decoded frame (`-fps_mode passthrough`: no frame
  is duplicated or dropped to fit a rate);
- GStreamer writes each decoded frame, scaled to a fixed tiny raw format, to a file: its
  size divided by the frame size is the number of frames the decoder put out. (The
  `fakesink silent=false` messages of `gst-launch -v` are not exact: the bus can repeat or
  coalesce them.)
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from charter.sdp import parse
from media_processes import (
    FFMPEG,
    GST_AUDIO_CAPS,
    GST_AUDIO_FRAME_BYTES,
    GST_LAUNCH,
    GST_SUITES,
    GST_VIDEO_CAPS,
    GST_VIDEO_FRAME_BYTES,
    READY_SECONDS,
    MediaProcess,
    Stream,
    gst_has,
)
from processes import udp_port_bound
from waits import wait_until


class Receiver:
    port: int
    process: MediaProcess

    def frames(self, ssrc: int) -> int:
        raise NotImplementedError

    def wait_ready(self) -> None:
        """Wait until the receiver's socket is bound, so that no packet goes unheard."""
        wait_until(
            lambda: udp_port_bound(self.port) or not self.process.running,
            timeout=READY_SECONDS,
            what=f"{self.process.name} to bind UDP {self.port}",
        )
        assert self.process.running, f"receiver ended before listening:\n{self.process.describe()}"

    def stop(self) -> None:
        self.process.stop()


class FfmpegReceiver(Receiver):
    """ffmpeg reading a one-track SDP file: it binds the m-line's port and decrypts with
    the m-line's a=crypto key (ffmpeg opens one socket per m-line)."""

    def __init__(self, name: str, sdp: str, workdir: Path) -> None:
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
        branches: list[str] = []
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
