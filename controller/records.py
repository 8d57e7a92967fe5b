"""Conferences and their events as plain JSON-able records, for a store that outlives the controller (the
SQLite file, later Redis). One function each way per type; keys go through `seal` and
`unseal`, so a store decides how they rest (sealed with a key of its own, never in clear).

A record that does not read back raises RecordError naming the conference and the field:
a store must not lose a conference silently."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from charter.endpoints import DtlsFingerprint
from charter.subscriptions import Subscription
from charter.suites import SrtpSuite
from charter.tracks import Track
from charter.webrtc_sdp import Route, Transport, parse_offer
from controller.events import (
    Body,
    ConferenceEnded,
    ConferenceUnplaced,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantMoved,
    SessionOffer,
    TrackAdded,
    TrackRemoved,
)
from controller.model import Conference, Participant, RelayLink, WebRtcSession

RECORD_VERSION = 1
"""Of the record layout below (the store's schema version is separate)."""

Seal = Callable[[bytes], str]
Unseal = Callable[[str], bytes]


class RecordError(ValueError):
    """A stored conference that cannot be read back."""


def track_record(track: Track) -> dict[str, Any]:
    return {"ssrc": track.ssrc, "kind": track.kind, "codec": track.codec, "payload_type": track.payload_type,
            "clock_rate": track.clock_rate, "channels": track.channels, "name": track.name}


def track_from(record: dict[str, Any]) -> Track:
    return _track(int(record["ssrc"]), str(record["kind"]), str(record["codec"]), int(record["payload_type"]),
                  int(record["clock_rate"]), int(record["channels"]), str(record["name"]))


@functools.lru_cache(maxsize=8192)
def _track(ssrc: int, kind: str, codec: str, payload_type: int, clock_rate: int, channels: int, name: str) -> Track:
    # A conference record holds each track once per subscriber: a Track (immutable) is built
    # and checked once, not on every read of a shared store.
    return Track(ssrc, kind, codec, payload_type, clock_rate, channels, name)


def _route_record(route: Route) -> dict[str, Any]:
    return {"mid": route.mid, "publisher_id": route.publisher_id, "track": track_record(route.track),
            "ssrc": route.ssrc, "payload_type": route.payload_type, "rtx_ssrc": route.rtx_ssrc,
            "rtx_payload_type": route.rtx_payload_type, "active": route.active}


def _route_from(record: dict[str, Any]) -> Route:
    return Route(str(record["mid"]), str(record["publisher_id"]), track_from(record["track"]), int(record["ssrc"]),
                 int(record["payload_type"]), int(record["rtx_ssrc"]), int(record["rtx_payload_type"]),
                 bool(record["active"]))


def _session_record(session: WebRtcSession) -> dict[str, Any]:
    transport = session.transport
    return {
        "offer": session.offer.sdp,
        "transport": {"ice_ufrag": transport.ice_ufrag, "ice_pwd": transport.ice_pwd,
                      "fingerprint": [transport.fingerprint.algorithm, transport.fingerprint.value],
                      "address": list(transport.address)},
        "answer": session.answer,
        "routes": [_route_record(r) for r in session.routes],
        "version": session.version,
        "outstanding": None if session.outstanding is None else [_route_record(r) for r in session.outstanding],
        "outstanding_sdp": session.outstanding_sdp,
        "answered": [_route_record(r) for r in session.answered],
        "sdp": session.sdp,
    }


def _session_from(record: dict[str, Any]) -> WebRtcSession:
    transport = record["transport"]
    outstanding = record["outstanding"]
    algorithm, value = transport["fingerprint"]
    return WebRtcSession(
        offer=parse_offer(str(record["offer"])),
        transport=Transport(str(transport["ice_ufrag"]), str(transport["ice_pwd"]),
                            DtlsFingerprint(str(algorithm), str(value)),
                            (str(transport["address"][0]), int(transport["address"][1]))),
        answer=str(record["answer"]),
        routes=[_route_from(r) for r in record["routes"]],
        version=int(record["version"]),
        outstanding=None if outstanding is None else tuple(_route_from(r) for r in outstanding),
        outstanding_sdp=str(record["outstanding_sdp"]),
        answered=tuple(_route_from(r) for r in record["answered"]),
        sdp=str(record["sdp"]),
    )


def _subscription_record(subscription: Subscription) -> dict[str, Any]:
    return {"publisher_id": subscription.publisher_id, "track": track_record(subscription.track),
            "ssrc": subscription.ssrc, "payload_type": subscription.payload_type,
            "rtx_ssrc": subscription.rtx_ssrc, "rtx_payload_type": subscription.rtx_payload_type}


def _subscription_from(record: dict[str, Any]) -> Subscription:
    payload_type = record["payload_type"]
    return Subscription(str(record["publisher_id"]), track_from(record["track"]), int(record["ssrc"]),
                        None if payload_type is None else int(payload_type), int(record["rtx_ssrc"]),
                        int(record["rtx_payload_type"]))


def _participant_record(participant: Participant, seal: Seal) -> dict[str, Any]:
    return {
        "participant_id": participant.participant_id,
        "display_name": participant.display_name,
        "tracks": [track_record(t) for t in participant.tracks],
        "suite": participant.suite.value,
        "send_key": seal(participant.send_key) if participant.send_key else "",
        "receive_key": seal(participant.receive_key) if participant.receive_key else "",
        "receive_address": None if participant.receive_address is None else list(participant.receive_address),
        "daemon_id": participant.daemon_id,
        "endpoint_id": participant.endpoint_id,
        "media_address": list(participant.media_address),
        "joined_at": participant.joined_at,
        "subscriptions": [_subscription_record(s) for s in participant.subscriptions.values()],
        "webrtc": None if participant.webrtc is None else _session_record(participant.webrtc),
        "region": participant.region,
    }


def _participant_from(conference_id: str, record: dict[str, Any], unseal: Unseal) -> Participant:
    receive_address = record["receive_address"]
    subscriptions = [_subscription_from(s) for s in record["subscriptions"]]
    session = record["webrtc"]
    return Participant(
        conference_id=conference_id,
        participant_id=str(record["participant_id"]),
        display_name=str(record["display_name"]),
        tracks=tuple(track_from(t) for t in record["tracks"]),
        suite=SrtpSuite(record["suite"]),
        send_key=unseal(record["send_key"]) if record["send_key"] else b"",
        receive_key=unseal(record["receive_key"]) if record["receive_key"] else b"",
        receive_address=None if receive_address is None else (str(receive_address[0]), int(receive_address[1])),
        daemon_id=str(record["daemon_id"]),
        endpoint_id=str(record["endpoint_id"]),
        media_address=(str(record["media_address"][0]), int(record["media_address"][1])),
        joined_at=float(record["joined_at"]),
        subscriptions={(s.publisher_id, s.track.ssrc): s for s in subscriptions},
        webrtc=None if session is None else _session_from(session),
        region=str(record.get("region", "")),  # records written before regions have none
    )


def conference_record(conference: Conference, seal: Seal) -> dict[str, Any]:
    return {
        "record_version": RECORD_VERSION,
        "conference_id": conference.conference_id,
        "name": conference.name,
        "daemon_id": conference.daemon_id,
        "persistent": conference.persistent,
        "created_at": conference.created_at,
        "participants": [_participant_record(p, seal) for p in conference.participants.values()],
        "sequence": conference.sequence,
        "links": [_link_record(link, seal) for link in conference.links.values()],
    }


def _link_record(link: RelayLink, seal: Seal) -> dict[str, Any]:
    return {"daemons": list(link.daemons), "keys": [seal(k) for k in link.keys],
            "addresses": [list(a) for a in link.addresses],
            "relayed": [[publisher, ssrc, relayed] for (publisher, ssrc), relayed in link.relayed.items()]}


def _link_from(record: dict[str, Any], unseal: Unseal) -> RelayLink:
    a, b = (str(d) for d in record["daemons"])
    key_a, key_b = (unseal(k) for k in record["keys"])
    (ip_a, port_a), (ip_b, port_b) = record["addresses"]
    return RelayLink((a, b), (key_a, key_b), ((str(ip_a), int(port_a)), (str(ip_b), int(port_b))),
                     {(str(p), int(s)): int(r) for p, s, r in record["relayed"]})


def conference_from(record: dict[str, Any], unseal: Unseal) -> Conference:
    conference_id = str(record.get("conference_id", "?"))
    try:
        if record["record_version"] != RECORD_VERSION:
            raise RecordError(f"record version {record['record_version']} (this controller reads {RECORD_VERSION})")
        participants = [_participant_from(conference_id, p, unseal) for p in record["participants"]]
        return Conference(
            conference_id=conference_id,
            name=str(record["name"]),
            daemon_id=str(record["daemon_id"]),
            persistent=bool(record["persistent"]),
            created_at=float(record["created_at"]),
            participants={p.participant_id: p for p in participants},
            sequence=int(record["sequence"]),
            links={frozenset(link.daemons): link for link in
                   (_link_from(r, unseal) for r in record.get("links", ()))},
        )
    except RecordError as error:
        raise RecordError(f"conference {conference_id!r}: {error}") from None
    except (KeyError, TypeError, ValueError, IndexError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise RecordError(f"conference {conference_id!r} does not read back ({reason})") from None


def event_record(event: Event, seal: Seal) -> dict[str, Any]:
    body = event.body
    record: dict[str, Any] = {"sequence": event.sequence, "time": event.time, "kind": type(body).__name__}
    if isinstance(body, ParticipantJoined):
        record.update(participant_id=body.participant_id, display_name=body.display_name,
                      tracks=[track_record(t) for t in body.tracks], joined_at=body.joined_at)
    elif isinstance(body, ParticipantLeft):
        record.update(participant_id=body.participant_id, reason=body.reason)
    elif isinstance(body, TrackAdded | TrackRemoved):
        record.update(publisher_id=body.publisher_id, track=track_record(body.track), ssrcs=body.ssrcs)
    elif isinstance(body, ConferenceEnded | ConferenceUnplaced):
        record.update(reason=body.reason)
    elif isinstance(body, ParticipantMoved):
        record.update(participant=_participant_record(body.participant, seal), reason=body.reason)
    else:
        record.update(participant_id=body.participant_id, sdp=body.sdp, version=body.version)
    return record


def event_from(conference_id: str, record: dict[str, Any], unseal: Unseal) -> Event:
    try:
        kind = record["kind"]
        body: Body
        if kind == "ParticipantJoined":
            body = ParticipantJoined(str(record["participant_id"]), str(record["display_name"]),
                                     tuple(track_from(t) for t in record["tracks"]), float(record["joined_at"]))
        elif kind == "ParticipantLeft":
            body = ParticipantLeft(str(record["participant_id"]), str(record["reason"]))
        elif kind in ("TrackAdded", "TrackRemoved"):
            made = TrackAdded if kind == "TrackAdded" else TrackRemoved
            body = made(str(record["publisher_id"]), track_from(record["track"]),
                        {str(k): int(v) for k, v in record["ssrcs"].items()})
        elif kind == "ConferenceEnded":
            body = ConferenceEnded(str(record["reason"]))
        elif kind == "ConferenceUnplaced":
            body = ConferenceUnplaced(str(record["reason"]))
        elif kind == "ParticipantMoved":
            body = ParticipantMoved(_participant_from(conference_id, record["participant"], unseal),
                                    str(record["reason"]))
        elif kind == "SessionOffer":
            body = SessionOffer(str(record["participant_id"]), str(record["sdp"]), int(record["version"]))
        else:
            raise RecordError(f"an event of an unknown kind {kind!r}")
        return Event(int(record["sequence"]), float(record["time"]), body)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RecordError(f"an event does not read back ({type(error).__name__}: {error})") from None
