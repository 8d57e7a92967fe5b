"""`charter sdp --as ffmpeg|gst`: the command lines that publish or receive a participant's
tracks. In process: what the builder prints for a session, read back with shlex, and its
errors. With real peers: the publishers `charter sdp` prints run as printed through
`charter up`, and the receivers it prints (GStreamer for three tracks, ffmpeg for one)
decode at least 95 % of the frames, counted from the files they write."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from socket import SOCK_DGRAM
from urllib.parse import parse_qs, urlsplit

import pytest

from charter import sdp
from charter.processes import free_port
from charter.sdp import ParticipantSession
from charter.subscriptions import Subscription
from charter.tracks import Track
from charter_up import CharterUp, charter_up
from cli import peer_commands
from cli.main import main
from cli.peer_commands import CommandError, Options, build, render_commands
from media_processes import MediaProcess, Running, gst_cannot_send, missing_tools
from processes import ROOT, udp_port_bound
from waits import settle, wait_until

SEND_KEY = base64.b64encode(bytes(range(1, 31))).decode()
RECEIVE_KEY = base64.b64encode(bytes(range(100, 130))).decode()
GCM_SEND_KEY = base64.b64encode(bytes(range(1, 29))).decode()
GCM_RECEIVE_KEY = base64.b64encode(bytes(range(100, 128))).decode()
VP8 = Track(0x1234_5678, "video", "VP8", 96, 90000, name="camera")
OPUS = Track(0x9ABC_DEF0, "audio", "opus", 111, 48000, channels=2, name="microphone")  # above 2**31: signed for ffmpeg
FROM_BOB = Subscription("bob", Track(33, "video", "H264", 97, 90000), 3333)
FROM_CAROL = Subscription("carol", Track(44, "audio", "opus", 111, 48000, channels=2), 0xF000_0004)


def session(**changes: object) -> ParticipantSession:
    fields: dict[str, object] = dict(
        conference_id="room-1",
        participant_id="alice",
        media_address=("127.0.0.1", 20000),
        suite="AES_CM_128_HMAC_SHA1_80",
        send_key=SEND_KEY,
        receive_key=RECEIVE_KEY,
        published=(VP8, OPUS),
        received=(FROM_BOB, FROM_CAROL),
        receive_address=("127.0.0.1", 40000),
    )
    fields.update(changes)
    return ParticipantSession(**fields)  # type: ignore[arg-type]


def printed(text: str) -> list[tuple[list[str], list[str]]]:
    """(comment lines, argv) of each command in the printed text, argv as a shell reads it."""
    commands: list[tuple[list[str], list[str]]] = []
    comments: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif line.strip():
            commands.append((comments, shlex.split(line)))
            comments = []
    assert not comments, f"comment lines after the last command:\n{text}"
    return commands


def after(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def words(argv: list[str], prefix: str) -> list[str]:
    """The values of GStreamer properties named `prefix` (such as "ssrc=")."""
    return [word[len(prefix):] for word in argv if word.startswith(prefix)]


def test_ffmpeg_publishers_send_each_track_with_its_ssrc_payload_type_suite_and_send_key() -> None:
    commands = printed(render_commands(build(session(), "ffmpeg", "send", options=Options(frames=90))))
    assert len(commands) == 2
    for (comments, argv), track in zip(commands, (VP8, OPUS), strict=True):
        assert comments == [f"# alice publishes {track.kind} {track.codec}, SSRC {track.ssrc} ({track.name}) "
                            "to 127.0.0.1:20000"]
        assert argv[0] == "ffmpeg"
        assert after(argv, "-payload_type") == str(track.payload_type)
        # ffmpeg's -ssrc is a signed 32-bit integer: the same 32 bits.
        assert int(after(argv, "-ssrc")) % (1 << 32) == track.ssrc
        assert after(argv, "-srtp_out_suite") == "AES_CM_128_HMAC_SHA1_80"
        assert after(argv, "-srtp_out_params") == SEND_KEY
        url = urlsplit(argv[-1])
        assert (url.scheme, url.hostname, url.port) == ("srtp", "127.0.0.1", 20000)
        assert parse_qs(url.query) == {"rtcpport": ["20000"], "pkt_size": ["1200"]}  # rtcp-mux
        assert after(argv, "-frames:v" if track.kind == "video" else "-frames:a") == "90"
    assert int(after(commands[1][1], "-ssrc")) < 0
    assert after(commands[0][1], "-c:v") == "libvpx" and after(commands[1][1], "-c:a") == "libopus"


def test_ffmpeg_publishes_a_named_input_and_h264_as_baseline() -> None:
    h264 = Track(7, "video", "H264", 97, 90000)
    (command,) = build(session(published=(h264,)), "ffmpeg", "send", options=Options(input="talk file.mkv"))
    argv = list(command.argv)
    assert argv[argv.index("-i") - 1] == "-re" and after(argv, "-i") == "talk file.mkv"
    assert after(argv, "-map") == "0:v:0" and "lavfi" not in argv
    assert [after(argv, o) for o in ("-c:v", "-preset", "-tune", "-profile:v")] == [
        "libx264", "ultrafast", "zerolatency", "baseline"]
    assert shlex.split(command.text().splitlines()[-1]) == argv


def test_gst_publishers_protect_with_the_send_key_in_the_sessions_suite() -> None:
    gcm = session(suite="AEAD_AES_128_GCM", send_key=GCM_SEND_KEY, receive_key=GCM_RECEIVE_KEY)
    commands = printed(render_commands(build(gcm, "gst", "send", options=Options(frames=50, size=(160, 120)))))
    assert len(commands) == 2
    for (comments, argv), track in zip(commands, (VP8, OPUS), strict=True):
        assert f"SSRC {track.ssrc}" in comments[0]
        assert argv[:2] == ["gst-launch-1.0", "-e"]
        assert words(argv, "ssrc=") == [str(track.ssrc)] and words(argv, "pt=") == [str(track.payload_type)]
        assert words(argv, "key=") == [base64.b64decode(GCM_SEND_KEY).hex()]
        assert words(argv, "rtp-cipher=") == words(argv, "rtcp-cipher=") == ["aes-128-gcm"]
        assert words(argv, "rtp-auth=") == ["null"]
        assert words(argv, "host=") == ["127.0.0.1"] and words(argv, "port=") == ["20000"]
        assert words(argv, "num-buffers=") == ["50"]
    assert "video/x-raw,width=160,height=120,framerate=30/1" in commands[0][1]
    (h264,) = build(session(published=(Track(7, "video", "H264", 97, 90000),)), "gst", "send")
    assert "openh264enc" in h264.argv


def test_gst_receiver_has_a_branch_per_received_ssrc_with_the_receive_key() -> None:
    (command,) = build(session(), "gst", "recv", options=Options(sink="files", size=(16, 16)))
    ((comments, argv),) = printed(command.text())
    assert comments == [
        "# alice receives video H264, SSRC 3333 from bob on port 40000: I420 16x16 frames to alice-3333.yuv",
        f"# alice receives audio opus, SSRC {0xF000_0004} from carol on port 40000: 48 kHz stereo S16LE to "
        f"alice-{0xF000_0004}.pcm",
    ]
    assert words(argv, "port=") == ["40000"]
    assert argv.count("udpsrc") == 1 and argv.count("srtpdec") == 2
    caps = words(argv, "caps=application/x-srtp,")
    assert [c.split("ssrc=(uint)")[1].split(",")[0] for c in caps] == ["3333", str(0xF000_0004)]
    key = base64.b64decode(RECEIVE_KEY).hex()
    assert all(f"srtp-key=(buffer){key}," in c and "srtp-auth=hmac-sha1-80" in c for c in caps)
    assert words(argv, "location=") == ["alice-3333.yuv", f"alice-{0xF000_0004}.pcm"]
    # The daemon's RTCP leaves each srtpdec by its rtcp_src: linked, or the branch stops.
    assert words(argv, "dec0.rtcp_src") == [""] and words(argv, "dec1.rtcp_src") == [""]
    only = build(session(), "gst", "recv", ssrc=3333, options=Options(sink="none"))[0].argv
    assert only.count("srtpdec") == 1 and "fakesink" in only and "filesink" not in only


def test_ffmpeg_receiver_reads_the_one_track_sdp_inline() -> None:
    one = session(received=(FROM_BOB,))
    (command,) = build(one, "ffmpeg", "recv", options=Options(sink="files", size=(16, 16)))
    ((_, argv),) = printed(command.text())
    assert after(argv, "-f") == "sdp" and "srtp" in after(argv, "-protocol_whitelist").split(",")
    uri = after(argv, "-i")
    assert uri.startswith("data:application/sdp;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]).decode() == sdp.render(one, ssrc=3333)
    assert argv[-1] == "alice-3333.yuv" and after(argv, "-s") == "16x16"
    (play,) = build(one, "ffmpeg", "recv")
    assert play.argv[0] == "ffplay" and after(list(play.argv), "-i") == uri


def test_what_cannot_be_built_says_why() -> None:
    gcm = session(suite="AEAD_AES_128_GCM", send_key=GCM_SEND_KEY, receive_key=GCM_RECEIVE_KEY)
    for direction in ("send", "recv"):
        with pytest.raises(CommandError, match="AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32.*AEAD_AES_128_GCM"):
            build(gcm, "ffmpeg", direction)
    # ffmpeg reads a port as one stream; a participant receiving two tracks has them on one port.
    for ssrc in (None, 3333):
        with pytest.raises(CommandError, match="ffmpeg cannot receive participant 'alice'.*--as gst"):
            build(session(), "ffmpeg", "recv", ssrc=ssrc)
    with pytest.raises(CommandError, match="without a receive address"):
        build(session(receive_address=None), "gst", "recv")
    with pytest.raises(CommandError, match="no track with SSRC 5.*305419896"):
        build(session(), "gst", "send", ssrc=5)
    with pytest.raises(CommandError, match="publishes no tracks"):
        build(session(published=()), "ffmpeg", "send")
    with pytest.raises(CommandError, match="receives no tracks"):
        build(session(received=()), "gst", "recv")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--as", "gst"], "--as gst needs --direction: send"),
        (["--as", "ffmpeg", "--track", "1"], "--as ffmpeg needs --direction"),
        (["--sink", "files"], "--sink goes with --as"),
        (["--as", "gst", "--direction", "recv", "--input", "v4l2src"], "--input goes with --direction send"),
        (["--as", "gst", "--direction", "send", "--sink", "files"], "--sink goes with --direction recv"),
        (["--as", "gst", "--direction", "recv", "--size", "16x16"], "--sink files"),
        (["--answer", "--as", "gst", "--direction", "send"], "--answer describes the whole session"),
    ],
)
def test_usage_errors_exit_2_before_asking_the_controller(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    # Port 9 (discard): nothing answers, so an error that asked the controller would differ.
    assert main(["sdp", "room-1", "alice", "--controller", "127.0.0.1:9", *options]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Real peers through `charter up`

LOCALHOST = "127.0.0.1"
VIDEO_FRAMES = 60  # 2 s at 30 fps
AUDIO_FRAMES = 100  # 2 s of 20 ms frames
ENOUGH = 0.95
SEND_SIZE = "160x120"
# The receivers write frames at 16x16 (I420) and audio as 48 kHz stereo S16LE.
FRAME_BYTES = {"video": 16 * 16 * 3 // 2, "audio": peer_commands.OPUS_FRAME_SAMPLES * 2 * 2}
FRAMES = {"video": VIDEO_FRAMES, "audio": AUDIO_FRAMES}


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    if missing_tools() is not None:
        pytest.skip(f"{missing_tools()}: peer tests need both")
    with charter_up(tmp_path_factory.mktemp("charter-up")) as system:
        yield system


def run_charter_sdp(
    controller: str, conference: str, participant: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """`charter sdp`, run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "sdp", conference, participant, "--controller", controller, *options],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def charter_sdp(controller: str, conference: str, participant: str, *options: str) -> str:
    """What `charter sdp` prints."""
    result = run_charter_sdp(controller, conference, participant, *options)
    assert result.returncode == 0, result.stderr
    return result.stdout


def frames_in(path: Path, kind: str) -> int:
    return path.stat().st_size // FRAME_BYTES[kind] if path.exists() else 0


@pytest.mark.peers
def test_printed_publishers_and_receivers_carry_the_frames(charter: CharterUp, tmp_path: Path) -> None:
    """Ada publishes VP8 and Opus with the ffmpeg commands printed for her, Ben H.264 (or
    VP8 where GStreamer has no openh264enc) and Dee VP8 with the GStreamer ones; Cy receives
    Ada's and Ben's three tracks with the GStreamer command printed for him, Eve Dee's one
    track with the ffmpeg command printed for her."""
    ben_codec, ben_pt = ("H264", 97) if gst_cannot_send("h264") is None else ("VP8", 96)
    tracks = {
        "ada": [Track(0x1234_5678, "video", "VP8", 96, 90000, name="camera"),
                Track(0x9ABC_DEF0, "audio", "opus", 111, 48000, channels=2, name="microphone")],
        "ben": [Track(0x0BEB_0BEB, "video", ben_codec, ben_pt, 90000, name="camera")],
        "dee": [Track(0xDEE0_0001, "video", "VP8", 96, 90000, name="camera")],
    }
    # Cy receives Ada's and Ben's tracks; Eve, in a conference of her own, Dee's one track.
    conferences = {"as-printed": ("ada", "ben", "cy"), "one-track": ("dee", "eve")}
    receive_ports = {"cy": free_port(SOCK_DGRAM), "eve": free_port(SOCK_DGRAM)}
    for conference, members in conferences.items():
        charter.create_conference(conference)
        for name in members:
            receive = (LOCALHOST, receive_ports[name]) if name in receive_ports else None
            charter.join(conference, name, tracks.get(name, []), receive_address=receive)
    cy = charter.session("as-printed", "cy")
    eve = charter.session("one-track", "eve")
    expected = {  # file -> (kind, frames sent)
        f"cy-{s.ssrc}.{'yuv' if s.track.kind == 'video' else 'pcm'}": (s.track.kind, FRAMES[s.track.kind])
        for s in cy.received
    }
    expected |= {f"eve-{s.ssrc}.yuv": ("video", VIDEO_FRAMES) for s in eve.received}
    assert len(expected) == 4

    address = charter.controller_address
    to_files = ("--direction", "recv", "--sink", "files", "--size", "16x16")
    cy_commands = printed(charter_sdp(address, "as-printed", "cy", "--as", "gst", *to_files))
    eve_commands = printed(charter_sdp(address, "one-track", "eve", "--as", "ffmpeg", *to_files))
    # One command per track (--track), each with the frames of its kind.
    senders = {
        f"{name}-{track.ssrc}": printed(charter_sdp(
            address, conference, name, "--as", tool, "--direction", "send", "--track", str(track.ssrc),
            "--size", SEND_SIZE, "--frames", str(FRAMES[track.kind])))
        for name, conference, tool in (("ada", "as-printed", "ffmpeg"), ("ben", "as-printed", "gst"),
                                       ("dee", "one-track", "gst"))
        for track in tracks[name]
    }
    assert [len(c) for c in (cy_commands, eve_commands, *senders.values())] == [1, 1, 1, 1, 1, 1]
    # Ada latches (no receive address): nothing else can listen where she receives.
    latching = run_charter_sdp(address, "as-printed", "ada", "--as", "gst", "--direction", "recv")
    assert (latching.returncode, latching.stdout) == (1, "") and "without a receive address" in latching.stderr

    def decoded() -> dict[str, int]:
        return {name: frames_in(tmp_path / name, kind) for name, (kind, _) in expected.items()}

    with Running() as running:
        receivers = {
            name: running.add(MediaProcess(f"{name}-receiver", commands[0][1], tmp_path))
            for name, commands in (("cy", cy_commands), ("eve", eve_commands))
        }
        for name, receiver in receivers.items():
            port = receive_ports[name]
            wait_until(lambda: udp_port_bound(port) or not receiver.running, timeout=20,  # noqa: B023
                       what=f"{name}'s receiver to bind UDP {port}")
            assert receiver.running, receiver.describe()
        publishers = [running.add(MediaProcess(f"{name}-sender", commands[0][1], tmp_path))
                      for name, commands in senders.items()]
        for publisher in publishers:
            assert publisher.wait(60) == 0, publisher.describe()
        settle(lambda: list(decoded().values()))
        logs = "\n".join(r.describe() for r in receivers.values())

    counts = decoded()
    print(f"frames sent and decoded: { {name: (sent, counts[name]) for name, (_, sent) in expected.items()} }")
    for name, (_, sent) in expected.items():
        assert ENOUGH * sent <= counts[name] <= sent + 1, f"{name}: {counts[name]} of {sent} frames\n{logs}"
    # Every packet the printed publishers sent passed the daemon's checks (key, SSRC, type).
    for conference, members in conferences.items():
        for name in members:
            counters = charter.endpoint_stats(conference, name).counters
            assert sum(counters.drops.values()) == 0, (name, dict(counters.drops))
        charter.end_conference(conference)
