"""`charter sdp CONFERENCE PARTICIPANT`: a participant's media session as SDP, read from the
controller (GetParticipant), to hand to ffmpeg, GStreamer or a SIP endpoint as it is; or,
with `--as ffmpeg|gst`, the ready command lines that publish or receive its tracks
(cli/peer_commands.py)."""
from __future__ import annotations

import argparse
import os
import sys

from charter import sdp
from charter.tokens import call_metadata
from cli import peer_commands

DEFAULT_CONTROLLER = "127.0.0.1:50051"
# The options of --as alone, with the direction they belong to (None: either).
COMMAND_OPTIONS = {"input": "send", "frames": "send", "fps": "send", "size": None, "sink": "recv"}


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, such as 320x240") from None
    if not all(2 <= n <= 4096 and n % 2 == 0 for n in size):
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be even, 2-4096")
    return size


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("conference", help="conference id")
    parser.add_argument("participant", help="participant id")
    parser.add_argument(
        "--controller", default=os.environ.get("CHARTER_CONTROLLER", DEFAULT_CONTROLLER),
        help="controller gRPC address [CHARTER_CONTROLLER, default %(default)s]",
    )
    parser.add_argument(
        "--track", type=int, metavar="SSRC",
        help="only this track (its SSRC as the participant sees it): ffmpeg opens one socket "
        "per m-line, so a process that receives one track takes that track's SDP; with --as, that track's command",
    )
    parser.add_argument(
        "--direction", choices=["send", "recv"],
        help="only the tracks the participant publishes (send) or receives (recv); with --as, which commands",
    )
    parser.add_argument(
        "--answer", action="store_true",
        help="Charter's SDP answer for an offer/answer endpoint such as a SIP user agent "
        "(every m-line on the daemon's port, Charter's key) instead of the participant's view",
    )
    parser.add_argument("--token", default=os.environ.get("CHARTER_TOKEN", ""),
                        help="access token of the controller (charter token) [CHARTER_TOKEN]")
    parser.add_argument("-o", "--output", help="write to this file instead of standard output")
    commands = parser.add_argument_group(
        "command lines (--as)",
        "Instead of SDP, print the shell command lines that publish (--direction send) or receive "
        "(--direction recv) the participant's tracks, each after a '# ...' line naming what it does. "
        "send: one command per track, to run side by side (each in its own terminal, or ending in &); "
        "SRTP with the participant's send key, SSRC and payload type to the daemon's port, RTCP to the "
        "same port; ffmpeg knows only the AES_CM suites. recv: needs a participant that joined with a "
        "receive address (a latching one receives on the port it sends from). GStreamer receives every "
        "track in one pipeline (a branch per SSRC; H.264 decoded by avdec_h264). ffmpeg reads a port as "
        "one stream, so it receives only a participant that receives exactly one track; its SDP is "
        "inline in the command (a data: URI). The keys are on the command lines.",
    )
    commands.add_argument("--as", dest="tool", choices=peer_commands.TOOLS,
                          help="print ffmpeg or GStreamer (gst-launch-1.0) command lines; needs --direction")
    commands.add_argument(
        "--input", metavar="SOURCE",
        help="send: what to publish instead of a test source (testsrc / sine; videotestsrc / audiotestsrc): "
        "for ffmpeg a file or URL, read in real time, its first video or audio stream; for gst a source "
        "description that gives raw media, such as 'filesrc location=movie.mkv ! decodebin' or v4l2src",
    )
    commands.add_argument("--frames", type=_positive, metavar="N",
                          help="send: stop after N frames (video frames, or 20 ms audio frames); default: run until "
                          "Ctrl-C")
    commands.add_argument("--fps", type=_positive, metavar="N",
                          help=f"send: video frames per second (default {peer_commands.DEFAULT_FPS} for the test "
                          "source)")
    commands.add_argument(
        "--size", type=_size, metavar="WxH",
        help="send: the video size (default {}x{} for the test source); recv with --sink files: the size "
        "video frames are written at (same default)".format(*peer_commands.DEFAULT_SIZE),
    )
    commands.add_argument(
        "--sink", choices=peer_commands.SINKS,
        help="recv: where each decoded track goes: screen (the default: shown and played; needs a display and "
        "sound; ffplay for ffmpeg), files (raw decoded frames in the current directory, one file per track, "
        "PARTICIPANT-SSRC.yuv as I420 at --size, PARTICIPANT-SSRC.pcm as 48 kHz stereo S16LE: they play with "
        "ffplay -f rawvideo -pixel_format yuv420p -video_size WxH, or ffplay -f s16le -ar 48000 -ch_layout "
        "stereo), none (decoded and dropped)",
    )


def fetch(
    controller: str, conference_id: str, participant_id: str, timeout: float = 10.0, token: str = ""
) -> sdp.ParticipantSession:
    import grpc

    from charter.v1 import controller_pb2, controller_pb2_grpc

    with grpc.insecure_channel(controller) as channel:
        stub = controller_pb2_grpc.ConferenceServiceStub(channel)
        request = controller_pb2.GetParticipantRequest(conference_id=conference_id, participant_id=participant_id)
        return sdp.from_participant(stub.GetParticipant(request, timeout=timeout, metadata=call_metadata(token)))


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of options, before anything is asked of the controller."""
    given = [name for name in COMMAND_OPTIONS if getattr(args, name) is not None]
    if args.answer and (args.track is not None or args.direction is not None or args.tool is not None):
        return "--answer describes the whole session; leave out --track, --direction and --as"
    if args.tool is None:
        if given:
            return f"--{given[0]} goes with --as ffmpeg|gst"
        return None
    if args.direction is None:
        return (f"--as {args.tool} needs --direction: send (commands that publish the participant's tracks) "
                "or recv (a command that receives and decodes the tracks it receives)")
    for name in given:
        belongs = COMMAND_OPTIONS[name]
        if name == "size" and args.direction == "recv" and args.sink != "files":
            return "--size with --direction recv is the size of the frames --sink files writes"
        if belongs is not None and belongs != args.direction:
            return f"--{name} goes with --direction {belongs}"
    return None


def run(args: argparse.Namespace) -> int:
    import grpc

    wrong = usage_error(args)
    if wrong is not None:
        print(f"charter sdp: {wrong}", file=sys.stderr)
        return 2
    try:
        session = fetch(args.controller, args.conference, args.participant, token=args.token)
    except grpc.RpcError as error:
        print(f"charter sdp: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    direction = {"send": sdp.SEND_ONLY, "recv": sdp.RECV_ONLY, None: None}[args.direction]
    try:
        if args.tool is not None:
            options = peer_commands.Options(input=args.input, frames=args.frames, size=args.size, fps=args.fps,
                                            sink=args.sink or "screen")
            commands = peer_commands.build(session, args.tool, args.direction, ssrc=args.track, options=options)
            text = peer_commands.render_commands(commands)
        elif args.answer:
            text = sdp.render_answer(session)
        else:
            text = sdp.render(session, ssrc=args.track, direction=direction)
    except KeyError as error:
        print(f"charter sdp: {error.args[0]}", file=sys.stderr)
        return 1
    except peer_commands.CommandError as error:
        print(f"charter sdp: {error}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
