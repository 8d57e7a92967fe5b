"""One conference across daemons: the routes of a join, turned into what each daemon must
make when some of them cross from one daemon to another (pure: no I/O).

A route between endpoints on one daemon is made there as it is. A route from a publisher on
daemon X to a receiver on daemon Y goes through the conference's relay link of X and Y
(controller/model.py RelayLink): on X, the track is routed once to X's end of the link with
an SSRC of the link; on Y, the link's end publishes it with that SSRC, and the route to the
receiver starts there, with the receiver's own SSRC and options. RTCP feedback follows the
same way back: the daemons' RTCP path treats a link end like any participant."""
from __future__ import annotations

import dataclasses
import secrets
from collections import defaultdict
from dataclasses import dataclass, field

from charter.endpoints import EndpointSpec
from charter.subscriptions import SubscriptionSpec
from charter.suites import DEFAULT_SUITE, generate_key
from charter.tracks import Track
from controller.model import Conference, Participant, RelayLink

LINK_SUITE = DEFAULT_SUITE


def new_link(a: str, b: str) -> RelayLink:
    """A link of daemons `a` and `b` not made yet (no addresses)."""
    first, second = sorted((a, b))
    return RelayLink((first, second), (generate_key(LINK_SUITE), generate_key(LINK_SUITE)),
                     (("", 0), ("", 0)))


def end_spec(conference_id: str, link: RelayLink, daemon_id: str, tracks: tuple[Track, ...] = (),
             subscriptions: tuple[SubscriptionSpec, ...] = ()) -> EndpointSpec:
    """The end of `link` on `daemon_id` as its daemon makes it: it protects with its own key,
    unprotects with the other end's, and sends to the other end (once that has an address)."""
    side = link.side(daemon_id)
    other = link.addresses[1 - side]
    return EndpointSpec(link.end(conference_id, daemon_id), conference_id, LINK_SUITE, link.keys[1 - side],
                        link.keys[side], other if other[1] else None, tracks, subscriptions, relay_link=True)


@dataclass
class RelayPlan:
    """What a join asks of the daemons beyond the newcomer's endpoint."""

    links: dict[frozenset[str], RelayLink]
    """The conference's links after the join (a copy: the conference changes only once
    every daemon has made its part)."""
    new_links: list[frozenset[str]] = field(default_factory=list)
    """Links to make first, in order."""
    on_newcomer: list[SubscriptionSpec] = field(default_factory=list)
    """Routes made with the newcomer's endpoint, on its daemon."""
    end_tracks: dict[tuple[str, frozenset[str]], list[Track]] = field(default_factory=lambda: defaultdict(list))
    """(daemon, link) -> relayed tracks its end of the link publishes from now on."""
    elsewhere: dict[str, list[SubscriptionSpec]] = field(default_factory=lambda: defaultdict(list))
    """Routes on other daemons: tracks to link ends, link ends to their receivers."""


def plan(conference: Conference, newcomer_daemon: str, routes: list[SubscriptionSpec],
         daemon_of: dict[str, str], publisher_of: dict[str, str],
         tracks: dict[tuple[str, int], Track]) -> RelayPlan:
    """Where each of `routes` (a join's, each with the newcomer at one end) is made.
    `daemon_of`: endpoint id -> its daemon; `publisher_of`: endpoint id -> participant id;
    `tracks`: (participant id, SSRC) -> the track, the newcomer's included."""
    result = RelayPlan(links={k: dataclasses.replace(v, relayed=dict(v.relayed)) for k, v in conference.links.items()})

    def on(daemon_id: str, route: SubscriptionSpec) -> None:
        (result.on_newcomer if daemon_id == newcomer_daemon else result.elsewhere[daemon_id]).append(route)

    for route in routes:
        source, target = daemon_of[route.track_endpoint_id], daemon_of[route.endpoint_id]
        if source == target:
            on(source, route)
            continue
        pair = frozenset((source, target))
        link = result.links.get(pair)
        if link is None:
            link = result.links[pair] = new_link(source, target)
            result.new_links.append(pair)
        key = (publisher_of[route.track_endpoint_id], route.track_ssrc)
        relayed = link.relayed.get(key)
        if relayed is None:
            relayed = link.relayed[key] = _new_ssrc(set(link.relayed.values()))
            on(source, SubscriptionSpec(route.track_endpoint_id, route.track_ssrc,
                                        link.end(conference.conference_id, source), relayed))
            result.end_tracks[(target, pair)].append(dataclasses.replace(tracks[key], ssrc=relayed))
        on(target, dataclasses.replace(route, track_endpoint_id=link.end(conference.conference_id, target),
                                       track_ssrc=relayed))
    return result


def route_source(conference: Conference, publisher_id: str, track_ssrc: int, receiver_daemon: str) -> tuple[str, int]:
    """The endpoint and SSRC a route of the publisher's track starts from on the receiver's
    daemon: the publisher's own endpoint, or the link end that relays the track there."""
    publisher = conference.participants[publisher_id]
    if publisher.daemon_id == receiver_daemon:
        return publisher.endpoint_id, track_ssrc
    link = conference.links[frozenset((publisher.daemon_id, receiver_daemon))]
    return link.end(conference.conference_id, receiver_daemon), link.relayed[(publisher_id, track_ssrc)]


def forget(conference: Conference, gone: Participant) -> dict[tuple[str, frozenset[str]], list[int]]:
    """Drop the links' relayed copies of the tracks of a participant that is gone, and say
    where they were published: (daemon, link) -> the SSRCs its end of the link must remove
    (the end away from the participant's daemon publishes them)."""
    copies: dict[tuple[str, frozenset[str]], list[int]] = {}
    for pair, link in conference.links.items():
        for track in gone.tracks:
            relayed = link.relayed.pop((gone.participant_id, track.ssrc), None)
            if relayed is not None and gone.daemon_id in link.daemons:
                far = link.daemons[1 - link.side(gone.daemon_id)]
                copies.setdefault((far, pair), []).append(relayed)
    return copies


def _new_ssrc(taken: set[int]) -> int:
    while True:
        ssrc = secrets.randbits(32)
        if ssrc and ssrc not in taken:
            return ssrc
