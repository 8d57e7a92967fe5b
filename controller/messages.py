"""Translation between charter.v1 messages and the controller's domain, with the checks
that make a bad request an INVALID_ARGUMENT naming its field."""
from __future__ import annotations

import ipaddress
import re

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from charter import sdp
from charter.addresses import address_to_proto
from charter.errors import InvalidArgument
from charter.suites import encode_key
from charter.v1 import controller_pb2 as pb
from charter.v1 import media_pb2
from controller import events
from controller.model import Conference, Participant
from controller.registry import DaemonInfo, DaemonLoad

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
MAX_TEXT = 256


# --- requests -> domain ------------------------------------------------------------------

def parse_id(field: str, value: str, *, required: bool = True) -> str:
    """A valid id, or "" when optional and empty."""
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return ""
    if not _ID.match(value):
        raise InvalidArgument(
            field, f"{value[:80]!r} is not a valid id: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return value


def parse_text(field: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {MAX_TEXT}")
    return value


def parse_daemon(field: str, daemon: pb.Daemon) -> DaemonInfo:
    daemon_id = parse_id(f"{field}.daemon_id", daemon.daemon_id)
    if not re.fullmatch(r"[^\s]+:\d{1,5}", daemon.grpc_address):
        raise InvalidArgument(f"{field}.grpc_address", f"{daemon.grpc_address[:80]!r} is not host:port")
    try:
        ipaddress.ip_address(daemon.media_ip)
    except ValueError:
        raise InvalidArgument(f"{field}.media_ip", f"{daemon.media_ip[:60]!r} is not an IP address") from None
    first, last = daemon.port_range.first, daemon.port_range.last
    if not 0 < first <= last <= 65535:
        raise InvalidArgument(f"{field}.port_range", f"{first}-{last} is not a UDP port range")
    if daemon.capacity == 0:
        raise InvalidArgument(f"{field}.capacity", "is required: the endpoints it takes at most")
    region = parse_id(f"{field}.region", daemon.region, required=False)
    return DaemonInfo(daemon_id, daemon.grpc_address, daemon.media_ip, first, last, daemon.capacity, region)


def parse_load(load: pb.DaemonLoad) -> DaemonLoad:
    return DaemonLoad(
        endpoints=load.endpoints,
        tracks=load.tracks,
        subscriptions=load.subscriptions,
        packets_in_per_second=load.packets_in_per_second,
        packets_out_per_second=load.packets_out_per_second,
        draining=load.draining,
    )


# --- domain -> responses -----------------------------------------------------------------

def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def daemon_to_proto(info: DaemonInfo) -> pb.Daemon:
    return pb.Daemon(
        daemon_id=info.daemon_id,
        grpc_address=info.grpc_address,
        media_ip=info.media_ip,
        port_range=media_pb2.PortRange(first=info.port_first, last=info.port_last),
        capacity=info.capacity,
        region=info.region,
    )


def load_to_proto(load: DaemonLoad) -> pb.DaemonLoad:
    return pb.DaemonLoad(
        endpoints=load.endpoints,
        tracks=load.tracks,
        subscriptions=load.subscriptions,
        packets_in_per_second=load.packets_in_per_second,
        packets_out_per_second=load.packets_out_per_second,
        draining=load.draining,
    )


def summary_to_proto(p: Participant | events.ParticipantJoined) -> pb.ParticipantSummary:
    return pb.ParticipantSummary(
        participant_id=p.participant_id,
        display_name=p.display_name,
        tracks=[t.to_proto() for t in p.tracks],
        joined_at=timestamp(p.joined_at),
    )


def conference_to_proto(c: Conference) -> pb.Conference:
    return pb.Conference(
        conference_id=c.conference_id,
        name=c.name,
        daemon_id=c.daemon_id,
        persistent=c.persistent,
        created_at=timestamp(c.created_at),
        participants=[summary_to_proto(p) for p in c.participants.values()],
    )


def participant_to_proto(p: Participant) -> pb.Participant:
    message = pb.Participant(
        conference_id=p.conference_id,
        participant_id=p.participant_id,
        display_name=p.display_name,
        tracks=[t.to_proto() for t in p.tracks],
        media_address=address_to_proto(p.media_address),
        suite=p.suite.number,
        send_key=encode_key(p.send_key),
        receive_key=encode_key(p.receive_key),
        subscriptions=[s.to_proto() for s in p.subscriptions.values()],
        daemon_id=p.daemon_id,
        joined_at=timestamp(p.joined_at),
        region=p.region,
    )
    if p.receive_address is not None:
        message.receive_address.CopyFrom(address_to_proto(p.receive_address))
    if p.webrtc is not None:
        # Its keys come from DTLS: the SDES fields stay empty.
        message.send_key = message.receive_key = ""
        message.webrtc = True
        message.sdp = p.webrtc.sdp
        return message
    message.sdp = sdp.render(sdp.from_participant(message))
    return message


def event_to_proto(event: events.Event, watcher_id: str) -> pb.ConferenceEvent:
    message = pb.ConferenceEvent(sequence=event.sequence, time=timestamp(event.time), initial=event.initial)
    body = event.body
    if isinstance(body, events.ParticipantJoined):
        message.participant_joined.participant.CopyFrom(summary_to_proto(body))
    elif isinstance(body, events.ParticipantLeft):
        message.participant_left.participant_id = body.participant_id
        message.participant_left.reason = body.reason
    elif isinstance(body, events.SessionOffer):
        message.session_offer.sdp = body.sdp
        message.session_offer.version = body.version
    elif isinstance(body, events.TrackAdded):
        message.track_added.publisher_id = body.publisher_id
        message.track_added.track.CopyFrom(body.track.to_proto())
        message.track_added.ssrc = body.ssrcs.get(watcher_id, 0)
    elif isinstance(body, events.TrackRemoved):
        message.track_removed.publisher_id = body.publisher_id
        message.track_removed.track_ssrc = body.track.ssrc
        message.track_removed.ssrc = body.ssrcs.get(watcher_id, 0)
    elif isinstance(body, events.ConferenceEnded):
        message.conference_ended.reason = body.reason
    elif isinstance(body, events.ParticipantMoved):
        moved = body.participant
        message.participant_moved.participant_id = moved.participant_id
        message.participant_moved.daemon_id = moved.daemon_id
        message.participant_moved.reason = body.reason
        if watcher_id == moved.participant_id:
            message.participant_moved.participant.CopyFrom(participant_to_proto(moved))
    elif isinstance(body, events.ConferenceUnplaced):
        message.conference_unplaced.reason = body.reason
    return message
