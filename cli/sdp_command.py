"""`charter sdp CONFERENCE PARTICIPANT`: a participant's media session as SDP, read from the
controller (GetParticipant), to hand to ffmpeg, GStreamer or a SIP endpoint as it is."""
from __future__ import annotations

import argparse
import os
import sys

from charter import sdp
from charter.tokens import call_metadata

DEFAULT_CONTROLLER = "127.0.0.1:50051"


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
        "per m-line, so a process that receives one track takes that track's SDP",
    )
    parser.add_argument(
        "--direction", choices=["send", "recv"],
        help="only the tracks the participant publishes (send) or receives (recv)",
    )
    parser.add_argument(
        "--answer", action="store_true",
        help="Charter's SDP answer for an offer/answer endpoint such as a SIP user agent "
        "(every m-line on the daemon's port, Charter's key) instead of the participant's view",
    )
    parser.add_argument("--token", default=os.environ.get("CHARTER_TOKEN", ""),
                        help="access token of the controller (charter token) [CHARTER_TOKEN]")
    parser.add_argument("-o", "--output", help="write to this file instead of standard output")


def fetch(
    controller: str, conference_id: str, participant_id: str, timeout: float = 10.0, token: str = ""
) -> sdp.ParticipantSession:
    import grpc

    from charter.v1 import controller_pb2, controller_pb2_grpc

    with grpc.insecure_channel(controller) as channel:
        stub = controller_pb2_grpc.ConferenceServiceStub(channel)
        request = controller_pb2.GetParticipantRequest(conference_id=conference_id, participant_id=participant_id)
        return sdp.from_participant(stub.GetParticipant(request, timeout=timeout, metadata=call_metadata(token)))


def run(args: argparse.Namespace) -> int:
    import grpc

    try:
        session = fetch(args.controller, args.conference, args.participant, token=args.token)
    except grpc.RpcError as error:
        print(f"charter sdp: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    direction = {"send": sdp.SEND_ONLY, "recv": sdp.RECV_ONLY, None: None}[args.direction]
    if args.answer and (args.track is not None or direction is not None):
        print("charter sdp: --answer describes the whole session; leave out --track and --direction", file=sys.stderr)
        return 2
    try:
        text = sdp.render_answer(session) if args.answer else sdp.render(session, ssrc=args.track, direction=direction)
    except KeyError as error:
        print(f"charter sdp: {error.args[0]}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
