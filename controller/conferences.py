"""Conferences and participants: placement, keys, SSRC assignment and the calls to the
conference's media daemon. State lives in a ConferenceStore; every change of a conference
happens under its lock and publishes its events before the lock is released."""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from charter.addresses import Address
from charter.endpoints import EndpointSpec, WebRtcTransport
from charter.errors import (
    AlreadyExists,
    CharterError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from charter.subscriptions import Subscription, SubscriptionSpec
from charter.suites import SrtpSuite, generate_key
from charter.tracks import Track
from charter.webrtc_sdp import (
    BrowserOffer,
    Route,
    Transport,
    check_answer,
    new_ice_credentials,
    render_answer,
    render_offer,
)
from controller import events, relays
from controller.daemons import DaemonClient, DaemonClients
from controller.limits import Limits
from controller.model import Conference, Participant, WebRtcSession
from controller.placement import Candidate, describe, least_loaded, place_participant
from controller.registry import DaemonRecord, Registry
from controller.store import ConferenceStore, endpoints_per_daemon

log = logging.getLogger("controller.conferences")


@dataclass(frozen=True)
class JoinSpec:
    conference_id: str
    participant_id: str
    """Empty: generated."""
    display_name: str
    tracks: tuple[Track, ...]
    receive_address: Address | None
    suite: SrtpSuite
    send_key: bytes | None
    """None: generated."""
    offer: BrowserOffer | None = None
    """A browser's SDP offer: a WebRTC participant (its tracks are the offer's)."""
    region: str = ""
    """Where it is: placed on a daemon of that region first ("" for unsaid)."""


def new_ssrc(taken: set[int]) -> int:
    """A random non-zero 32-bit SSRC (RFC 3550 section 8.1) not in `taken`."""
    while True:
        ssrc = secrets.randbits(32)
        if ssrc and ssrc not in taken:
            return ssrc


def new_subscription(receiver: BrowserOffer | None, publisher_id: str, track: Track, taken: set[int]) -> Subscription:
    """`track` as a receiver gets it, with SSRCs not in `taken` (which gets them). A browser
    (`receiver`, its offer) gets its own payload type, and an RTX stream for video where it
    offered RTX for the codec."""
    ssrc = new_ssrc(taken)
    taken.add(ssrc)
    if receiver is None:
        return Subscription(publisher_id, track, ssrc)
    payload_type, rtx_payload_type = receiver.receiving(track)
    if not rtx_payload_type or track.kind != "video":
        return Subscription(publisher_id, track, ssrc, payload_type)
    rtx_ssrc = new_ssrc(taken)
    taken.add(rtx_ssrc)
    return Subscription(publisher_id, track, ssrc, payload_type, rtx_ssrc, rtx_payload_type)


def endpoint_id(conference_id: str, participant_id: str) -> str:
    # '/' cannot occur in ids, so this is unique per daemon.
    return f"{conference_id}/{participant_id}"


class Conferences:
    def __init__(
        self,
        store: ConferenceStore,
        registry: Registry,
        daemons: DaemonClients,
        hub: events.EventHub,
        clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.daemons = daemons
        self.hub = hub
        self._clock = clock
        self._background: set[asyncio.Task[object]] = set()
        self.limits = limits or Limits()
        self.refresh_leases: Callable[[], Awaitable[None]] | None = None
        """With leases shared by controllers: read them now (a daemon may have registered at
        another controller since this one last mirrored them)."""

    # --- conferences ---------------------------------------------------------------------

    async def create(self, conference_id: str, name: str, persistent: bool) -> Conference:
        if conference_id and await self.store.get(conference_id) is not None:
            raise AlreadyExists(f"conference {conference_id!r} already exists")
        record = await self._place()
        conference = Conference(
            conference_id=conference_id or f"conf-{secrets.token_hex(6)}",
            name=name,
            daemon_id=record.info.daemon_id,
            persistent=persistent,
            created_at=self._clock(),
        )
        if not await self.store.add(conference):
            raise AlreadyExists(f"conference {conference.conference_id!r} already exists")
        log.info(
            "conference created",
            extra={"conference_id": conference.conference_id, "daemon_id": conference.daemon_id},
        )
        return conference

    async def get(self, conference_id: str) -> Conference:
        conference = await self.store.get(conference_id)
        if conference is None:
            raise NotFound(f"conference {conference_id!r} not found")
        return conference

    async def page(self, page_size: int, page_token: str) -> tuple[list[Conference], str]:
        page = await self.store.page(after=page_token, limit=page_size + 1)
        if len(page) > page_size:
            return page[:page_size], page[page_size - 1].conference_id
        return page, ""

    async def end(self, conference_id: str, reason: str = "ended") -> int:
        async with self.store.lock(conference_id):
            conference = await self.get(conference_id)
            count = len(conference.participants)
            await self._end_locked(conference, reason)
            return count

    async def _end_locked(self, conference: Conference, reason: str) -> None:
        for daemon_id in sorted(conference.daemons()):
            client = self._client(daemon_id)
            if client is not None:
                # A live daemon that does not answer keeps the conference: nothing is lost, the
                # caller can try again. A daemon without a lease holds nothing we can reach.
                await client.release_conference(conference.conference_id)
        ended = self._number(conference, [events.ConferenceEnded(reason)])
        await self.store.delete(conference.conference_id, ended)
        self.hub.publish(conference.conference_id, ended)
        self.hub.end(conference.conference_id)
        log.info(
            "conference ended",
            extra={
                "conference_id": conference.conference_id,
                "reason": reason,
                "participants": len(conference.participants),
            },
        )

    # --- participants --------------------------------------------------------------------

    async def join(self, spec: JoinSpec) -> Participant:
        async with self.store.lock(spec.conference_id):
            conference = await self.get(spec.conference_id)
            participant_id = spec.participant_id or f"p-{secrets.token_hex(6)}"
            if participant_id in conference.participants:
                raise AlreadyExists(
                    f"participant {participant_id!r} is already in conference {conference.conference_id!r}"
                )
            most = self.limits.participants_per_conference
            if len(conference.participants) >= most:
                raise ResourceExhausted(f"conference {conference.conference_id!r} has {most} participants, the most "
                                        "a conference takes (the controller's --max-participants)")
            if len(spec.tracks) > self.limits.tracks_per_participant:
                raise ResourceExhausted(f"the participant publishes {len(spec.tracks)} tracks, more than the "
                                        f"{self.limits.tracks_per_participant} one may (the controller's "
                                        "--max-tracks)")
            published = {t.ssrc: p.participant_id for p in conference.participants.values() for t in p.tracks}
            for i, track in enumerate(spec.tracks):
                if track.ssrc in published:
                    # Two streams with one SSRC in a conference: receivers could not tell them apart.
                    raise AlreadyExists(f"tracks[{i}].ssrc: {track.ssrc} is published by participant "
                                        f"{published[track.ssrc]!r} of this conference; choose another (random) SSRC")
            record = await self._place_participant(conference, region=spec.region)
            client = self.daemons.get(record.info.daemon_id, record.info.grpc_address)

            suite = spec.suite
            offer = spec.offer
            # A browser's keys come from DTLS, so it has no SDES keys.
            send_key = b"" if offer else spec.send_key or generate_key(suite)
            receive_key = b"" if offer else generate_key(suite)
            ep_id = endpoint_id(conference.conference_id, participant_id)
            participant = Participant(
                conference_id=conference.conference_id,
                participant_id=participant_id,
                display_name=spec.display_name,
                tracks=spec.tracks,
                suite=suite,
                send_key=send_key,
                receive_key=receive_key,
                receive_address=spec.receive_address,
                daemon_id=record.info.daemon_id,
                endpoint_id=ep_id,
                media_address=(record.info.media_ip, 0),
                joined_at=self._clock(),
                region=spec.region,
            )
            await self._admit(conference, participant, client, record, offer)
            added: list[events.Body] = [events.ParticipantJoined.of(participant)]
            for track in participant.tracks:
                ssrcs = {
                    q.participant_id: q.subscriptions[(participant_id, track.ssrc)].ssrc
                    for q in conference.participants.values()
                    if q is not participant
                }
                added.append(events.TrackAdded(participant_id, track, ssrcs))
            for receiver in conference.participants.values():
                added += self._renegotiate(receiver)
            batch = self._number(conference, added)
            await self.store.put(conference, batch)
            self.hub.publish(conference.conference_id, batch)
            log.info(
                "participant joined",
                extra={
                    "conference_id": conference.conference_id,
                    "participant_id": participant_id,
                    "daemon_id": record.info.daemon_id,
                    "port": participant.media_address[1],
                    "tracks": len(participant.tracks),
                },
            )
            return participant

    async def _make_endpoint(
        self,
        client: DaemonClient,
        record: DaemonRecord,
        participant: Participant,
        routes: list[SubscriptionSpec],
        offer: BrowserOffer | None,
    ) -> None:
        """The participant's endpoint on the daemon of `record`, with its tracks and `routes`
        (one call: all together or nothing); sets its media address and, for a browser
        (`offer`), its session with Charter's answer."""
        ice_ufrag, ice_pwd = new_ice_credentials()
        endpoint = EndpointSpec(
            endpoint_id=participant.endpoint_id,
            conference_id=participant.conference_id,
            suite=participant.suite,
            rx_key=participant.send_key,
            tx_key=participant.receive_key,
            remote=participant.receive_address,
            tracks=participant.tracks,
            subscriptions=tuple(routes),
            webrtc=WebRtcTransport(ice_ufrag, ice_pwd, offer.ice_ufrag, offer.fingerprints) if offer else None,
        )
        # Replacing a leftover is safe: this runs under the conference's lock and no
        # participant owns the endpoint id.
        try:
            if offer is None:
                port = await client.create_endpoint(endpoint, replace=True)
            else:
                port, fingerprint = await client.create_webrtc_endpoint(endpoint, replace=True)
                transport = Transport(ice_ufrag, ice_pwd, fingerprint, (record.info.media_ip, port))
                participant.webrtc = WebRtcSession(offer, transport, render_answer(offer, transport))
        except Unavailable:
            # The daemon may have made it before the answer was lost: do not leave it.
            await self._delete_quietly(client, participant.endpoint_id)
            raise
        except asyncio.CancelledError:
            # The caller went away mid-call; the daemon may have made the endpoint anyway.
            await asyncio.shield(self._delete_quietly(client, participant.endpoint_id))
            raise
        participant.daemon_id = record.info.daemon_id
        participant.media_address = (record.info.media_ip, port)

    def _assign(
        self, conference: Conference, participant: Participant, offer: BrowserOffer | None
    ) -> tuple[list[SubscriptionSpec], list[tuple[str, Subscription]]]:
        """Subscriptions of the newcomer (`offer`: a browser's) to every other participant's
        tracks, and of every other participant to the newcomer's, each with an SSRC new to
        its receiver. The newcomer's own subscriptions are set on it; the others' are
        returned. A route to a WebRTC participant starts paused: it forwards once the
        participant has answered the offer that tells it of the route."""
        routes: list[SubscriptionSpec] = []
        taken = participant.own_ssrcs()
        for other in conference.participants.values():
            for track in other.tracks:
                subscription = new_subscription(offer, other.participant_id, track, taken)
                participant.subscriptions[(other.participant_id, track.ssrc)] = subscription
                routes.append(subscription.spec(other.endpoint_id, participant.endpoint_id, paused=offer is not None))
        others: list[tuple[str, Subscription]] = []
        for other in conference.participants.values():
            taken = other.own_ssrcs() | other.received_ssrcs()
            other_offer = other.webrtc.offer if other.webrtc is not None else None
            for track in participant.tracks:
                subscription = new_subscription(other_offer, participant.participant_id, track, taken)
                others.append((other.participant_id, subscription))
                routes.append(
                    subscription.spec(participant.endpoint_id, other.endpoint_id, paused=other_offer is not None)
                )
        return routes, others

    async def get_participant(self, conference_id: str, participant_id: str) -> Participant:
        conference = await self.get(conference_id)
        return self._participant(conference, participant_id)

    async def leave(self, conference_id: str, participant_id: str, reason: str = "left") -> bool:
        """Remove a participant; True when the conference ended with it. `reason`: "left"
        (it asked) or "gone" (its daemon closed its endpoint)."""
        async with self.store.lock(conference_id):
            conference = await self.get(conference_id)
            participant = self._participant(conference, participant_id)
            client = self._client(participant.daemon_id)
            if client is not None:
                # Closing the endpoint removes its tracks, their subscriptions and the
                # subscriptions sending to it, and releases its port.
                await client.delete_endpoint(participant.endpoint_id)
            del conference.participants[participant_id]
            await self._unlink(conference, participant)
            removed: list[events.Body] = []
            for track in participant.tracks:
                ssrcs = {}
                for other in conference.participants.values():
                    subscription = other.subscriptions.pop((participant_id, track.ssrc), None)
                    if subscription is not None:
                        ssrcs[other.participant_id] = subscription.ssrc
                removed.append(events.TrackRemoved(participant_id, track, ssrcs))
            removed.append(events.ParticipantLeft(participant_id, reason))
            for other in conference.participants.values():
                removed += self._renegotiate(other)
            batch = self._number(conference, removed)
            await self.store.put(conference, batch)
            self.hub.publish(conference_id, batch)
            log.info("participant left",
                     extra={"conference_id": conference_id, "participant_id": participant_id, "reason": reason})
            if not conference.participants and not conference.persistent:
                try:
                    await self._end_locked(conference, "empty")
                except CharterError as error:
                    # The participant has left either way: answer so, and keep the empty
                    # conference until an EndConference reaches its daemon.
                    log.warning(
                        "empty conference not ended", extra={"conference_id": conference_id, "reason": str(error)}
                    )
                    return False
                return True
            return False

    async def _unlink(self, conference: Conference, gone: Participant) -> None:
        """After `gone` left: close the links of a daemon none of the conference's participants
        is on any more, and remove the relayed copies of its tracks from the far ends of the
        others (before the conference is stored: their SSRCs are free again from then on)."""
        copies = relays.forget(conference, gone)
        hosting = {p.daemon_id for p in conference.participants.values()}
        for pair, link in list(conference.links.items()):
            if all(d in hosting for d in link.daemons):
                continue
            del conference.links[pair]
            for daemon_id in link.daemons:
                client = self._client(daemon_id)
                if client is None:
                    continue
                try:
                    await client.delete_endpoint(link.end(conference.conference_id, daemon_id))
                except CharterError as error:  # owned by nobody now: reconciliation deletes it
                    log.info("link end not closed", extra={"conference_id": conference.conference_id,
                                                           "daemon_id": daemon_id, "why": str(error)})
        await self._remove_copies(conference, copies)

    async def _remove_copies(self, conference: Conference,
                             copies: dict[tuple[str, frozenset[str]], list[int]]) -> None:
        """Remove relayed copies of a gone participant's tracks (relays.forget) from the ends
        of the conference's links that publish them, with the routes from them. A link that
        closed took them with its ends. A failure is only logged: the participant is gone
        either way, and the dead copy forwards nothing until its link end closes."""
        cid = conference.conference_id
        for (daemon_id, pair), ssrcs in copies.items():
            link = conference.links.get(pair)
            client = self._client(daemon_id)
            if link is None or client is None:
                continue
            try:
                await client.remove_tracks(link.end(cid, daemon_id), ssrcs)
            except CharterError as error:
                log.info("relayed tracks not removed from a link end", extra={
                    "conference_id": cid, "daemon_id": daemon_id, "ssrcs": ssrcs, "why": str(error)})

    # --- WebRTC offer/answer ------------------------------------------------------------

    async def answer(self, conference_id: str, participant_id: str, sdp: str, version: int) -> None:
        """A WebRTC participant's answer to Charter's offer `version`: the routes it
        describes start forwarding; changes made meanwhile go into the next offer."""
        async with self.store.lock(conference_id):
            conference = await self.get(conference_id)
            participant = self._participant(conference, participant_id)
            session = participant.webrtc
            if session is None:
                raise FailedPrecondition(
                    f"participant {participant_id!r} joined without an SDP offer: Charter makes it no offers to answer"
                )
            if session.outstanding is None or version != session.version:
                outstanding = f"offer {session.version} is" if session.outstanding is not None else "no offer is"
                raise FailedPrecondition(f"version {version} is not the offer awaiting an answer ({outstanding} "
                                         "outstanding): answer the newest session_offer of WatchConference")
            check_answer(sdp, session.offer, session.outstanding)
            resume = [
                SubscriptionSpec(*relays.route_source(conference, r.publisher_id, r.track.ssrc, participant.daemon_id),
                                 participant.endpoint_id, r.ssrc)
                for r in session.outstanding
                if r.active and (r.publisher_id, r.track.ssrc) in participant.subscriptions
            ]
            client = self._client(participant.daemon_id)
            if resume and client is not None:
                await client.update_subscriptions(resume)
            session.answered, session.outstanding = session.outstanding, None
            session.sdp = session.outstanding_sdp
            batch = self._number(conference, self._renegotiate(participant))
            await self.store.put(conference, batch)
            self.hub.publish(conference_id, batch)
            log.info("offer answered", extra={"conference_id": conference_id, "participant_id": participant_id,
                                              "version": version, "routes_resumed": len(resume)})

    def _renegotiate(self, participant: Participant) -> list[events.Body]:
        """A new offer for a WebRTC participant whose routes changed since its last answered
        one, unless an offer is outstanding (the change then waits for its answer)."""
        session = participant.webrtc
        if session is None:
            return []
        live = {(r.publisher_id, r.track.ssrc): i for i, r in enumerate(session.routes) if r.active}
        for key, subscription in participant.subscriptions.items():
            if key not in live:
                mid = f"r{len(session.routes)}"
                track = subscription.track
                payload_type = track.payload_type if subscription.payload_type is None else subscription.payload_type
                session.routes.append(Route(mid, subscription.publisher_id, track, subscription.ssrc, payload_type,
                                            subscription.rtx_ssrc, subscription.rtx_payload_type))
        for key, index in live.items():
            if key not in participant.subscriptions:
                session.routes[index] = dataclasses.replace(session.routes[index], active=False)
        if session.outstanding is not None or tuple(session.routes) == session.answered:
            return []
        session.version += 1
        session.outstanding = tuple(session.routes)
        session.outstanding_sdp = render_offer(session.offer, session.routes, session.transport, session.version + 1)
        return [events.SessionOffer(participant.participant_id, session.outstanding_sdp, session.version)]

    async def endpoints_closed(self, daemon_id: str, closed: list[tuple[str, str, str]]) -> None:
        """(conference id, endpoint id, why) of endpoints a daemon closed by itself: their
        participants are gone."""
        for conference_id, ep_id, why in closed:
            conference = await self.store.get(conference_id)
            if conference is None:
                continue
            owner = next((p for p in conference.participants.values()
                          if p.endpoint_id == ep_id and p.daemon_id == daemon_id), None)
            if owner is None:
                continue
            log.warning("participant gone: its daemon closed its endpoint",
                        extra={"conference_id": conference_id, "participant_id": owner.participant_id, "why": why})
            try:
                await self.leave(conference_id, owner.participant_id, reason="gone")
            except NotFound:
                pass  # it left meanwhile

    # --- events --------------------------------------------------------------------------

    async def watch(
        self, conference_id: str, participant_id: str, after_sequence: int = 0
    ) -> AsyncIterator[events.Event]:
        """The conference's events: with `after_sequence`, every event numbered after it (a
        stream that resumes: none lost, none twice), else its state now as initial events;
        then each change."""
        async with self.store.lock(conference_id):
            conference = await self.get(conference_id)
            if participant_id:
                self._participant(conference, participant_id)
            if after_sequence:
                if after_sequence > conference.sequence:
                    raise InvalidArgument("after_sequence", f"is {after_sequence}; the conference's last event is "
                                          f"{conference.sequence}")
                missed = await self.store.events_after(conference_id, after_sequence)
                if missed is None:
                    raise FailedPrecondition(f"the events of conference {conference_id!r} after {after_sequence} "
                                             "are no longer kept: watch again without after_sequence for its state")
                watcher = self.hub.watch(conference_id, participant_id, missed, last=after_sequence)
            else:
                watcher = self.hub.watch(conference_id, participant_id, self._snapshot(conference, participant_id),
                                         last=conference.sequence)
        try:
            async for event in watcher.events():
                yield event
        finally:
            self.hub.unwatch(watcher)

    def _snapshot(self, conference: Conference, participant_id: str) -> list[events.Event]:
        """The conference as it is, as initial events (numbered with its last event's)."""
        now = self._clock()
        initial: list[events.Event] = []
        for p in conference.participants.values():
            initial.append(events.Event(conference.sequence, now, events.ParticipantJoined.of(p), initial=True))
        for p in conference.participants.values():
            for track in p.tracks:
                ssrcs = {
                    q.participant_id: q.subscriptions[(p.participant_id, track.ssrc)].ssrc
                    for q in conference.participants.values()
                    if (p.participant_id, track.ssrc) in q.subscriptions
                }
                body = events.TrackAdded(p.participant_id, track, ssrcs)
                initial.append(events.Event(conference.sequence, now, body, initial=True))
        watching = conference.participants.get(participant_id)
        session = watching.webrtc if watching is not None else None
        if session is not None and session.outstanding is not None:
            offer = events.SessionOffer(participant_id, session.outstanding_sdp, session.version)
            initial.append(events.Event(conference.sequence, now, offer, initial=True))
        return initial

    # --- failover: conferences off a daemon that is gone -----------------------------------

    def follow(self, registry: Registry) -> None:
        """Move the conferences of every daemon the registry drops (lease expired, or it
        deregistered), in the background."""
        registry.on_drop.append(lambda record: self.in_background(self.move_off(record.info.daemon_id, "daemon lost")))

    def in_background(self, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` as a task this object owns (cancelled by `close_background`)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def close_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def reconcile_every(self, period: float) -> None:
        """Check every live daemon's endpoints against the store every `period` seconds
        (controllers sharing a store: one killed between making an endpoint and storing its
        participant left it behind; no registration of the daemon will tell)."""
        while True:
            await asyncio.sleep(period)
            for record in self.registry.live():
                try:
                    await self.reconcile(record.info.daemon_id)
                except CharterError as error:
                    log.warning("reconciliation failed", extra={"daemon_id": record.info.daemon_id,
                                                                "reason": str(error)})

    async def end_unused(self, period: float = 10.0) -> None:
        """End, every `period` seconds, the conferences nobody joined within the limit (an
        empty one that is not persistent: one whose last participant left has ended then)."""
        while True:
            await asyncio.sleep(period)
            await self.end_unused_now()

    async def end_unused_now(self) -> int:
        cutoff = self._clock() - self.limits.unused_conference_seconds
        ended = 0
        for conference in await self.store.page(limit=1 << 30):
            if not conference.participants and not conference.persistent and conference.created_at < cutoff:
                try:
                    async with self.store.lock(conference.conference_id):
                        current = await self.store.get(conference.conference_id)
                        if current is not None and not current.participants:
                            await self._end_locked(current, "unused")
                            ended += 1
                except CharterError as error:
                    log.warning("unused conference not ended", extra={"conference_id": conference.conference_id,
                                                                      "why": str(error)})
        return ended

    async def move_off(self, daemon_id: str, reason: str, *, only_if_room: bool = False) -> int:
        """Move every conference placed on `daemon_id` (its lease expired, or it drains) to a
        live daemon with room; how many moved. With `only_if_room` (a daemon that drains but
        still serves), a conference no other daemon has room for stays where it is."""
        moved = 0
        for conference in await self.store.page(limit=1 << 30):
            if daemon_id in conference.daemons():
                moved += await self.move(conference.conference_id, reason, away_from=daemon_id,
                                         only_if_room=only_if_room)
        return moved

    async def registered(self, daemon_id: str) -> None:
        """A daemon (re)registered: delete what it holds that nobody owns, re-create on a daemon
        the conferences it should hold but lost (it restarted), and place the conferences
        that wait for room."""
        client = self._client(daemon_id)
        if client is None:
            return
        held = await client.list_endpoints()
        if held:
            await self.reconcile(daemon_id)
        for conference in await self.store.page(limit=1 << 30):
            if any(endpoint not in held for endpoint in conference.endpoints_on(daemon_id)):
                await self.move(conference.conference_id, "daemon restarted", lost_on=daemon_id)
        await self.place_unplaced()

    async def adopt_orphans(self, after: float) -> int:
        """After a restart of this controller: `after` seconds on (a lease time: every live
        daemon has registered by then), move the conferences whose daemon did not come back
        (it died while this controller was down)."""
        await asyncio.sleep(after)
        moved = 0
        for daemon_id in sorted({d for c in await self.store.page(limit=1 << 30) for d in c.daemons()}):
            if self.registry.get(daemon_id) is None:
                moved += await self.move_off(daemon_id, "daemon lost")
        return moved

    async def place_unplaced(self) -> int:
        """Place the conferences that wait for a daemon with room (a daemon registered)."""
        placed = 0
        for conference in await self.store.page(limit=1 << 30):
            if not conference.daemon_id:
                placed += await self.move(conference.conference_id, "placed again")
        return placed

    async def move(
        self, conference_id: str, reason: str, *, away_from: str = "", lost_on: str = "", only_if_room: bool = False
    ) -> bool:
        """Re-create the conference on a live daemon with room (never `away_from`): every
        participant, in the order they joined, gets a new endpoint there with new keys and
        the routes to and from the others with new SSRCs, and is told so (ParticipantMoved,
        with its new session on its own watch streams). Where no daemon has room, the
        conference is kept, unplaced, and its watchers told (ConferenceUnplaced). False when
        it did not move. `lost_on`: the daemon that should hold it and lost it (it may take
        it again)."""
        async with self.store.lock(conference_id):
            conference = await self.store.get(conference_id)
            expected = away_from or lost_on
            if conference is None or (expected and expected not in conference.daemons()):
                return False  # ended, or moved meanwhile
            # Readers take no lock (GetParticipant, watch snapshots): a move is made on a copy,
            # stored whole once done, so that none sees a participant missing halfway.
            conference = copy.deepcopy(conference)
            if expected and await self._move_part(conference, expected, reason, excluded=away_from):
                return True  # the conference is on other daemons too: only its part there moved
            old_daemon = conference.daemon_id
            old_daemons, old_links = conference.daemons(), conference.links
            live = {d: c for d, c in (await self.candidates()).items() if d != away_from}
            chosen = least_loaded([c for c, _ in live.values()], endpoints_needed=max(1, len(conference.participants)))
            if chosen is None and only_if_room:
                return False
            if chosen is None:
                why = f"no media daemon has room ({describe([c for c, _ in live.values()]) or 'none is registered'})"
                if conference.daemon_id:
                    conference.daemon_id = ""
                    batch = self._number(conference, [events.ConferenceUnplaced(why)])
                    await self.store.put(conference, batch)
                    self.hub.publish(conference_id, batch)
                    log.error("conference unplaced: its daemon is gone and no daemon has room",
                              extra={"conference_id": conference_id, "daemon_id": old_daemon, "why": why})
                return False
            record = live[chosen.daemon_id][1]
            client = self.daemons.get(record.info.daemon_id, record.info.grpc_address)
            participants = list(conference.participants.values())
            before = copy.deepcopy(conference.participants)
            conference.participants = {}
            conference.links = {}  # all of it on one daemon again
            conference.daemon_id = record.info.daemon_id
            made: list[str] = []
            try:
                for participant in participants:
                    await self._move_participant(conference, participant, client, record)
                    made.append(participant.endpoint_id)
            except CharterError as error:
                # Nothing half-made stays: the conference keeps waiting on its old daemon (a
                # registration or the next expiry tries again).
                for endpoint in made:
                    await self._delete_quietly(client, endpoint)
                conference.daemon_id = old_daemon
                conference.participants = before
                conference.links = old_links
                log.error("conference not moved", extra={"conference_id": conference_id, "to": chosen.daemon_id,
                                                         "why": str(error)})
                return False
            bodies: list[events.Body] = [
                events.ParticipantMoved(copy.deepcopy(p), reason) for p in conference.participants.values()
            ]
            for participant in conference.participants.values():
                bodies += self._renegotiate(participant)
            batch = self._number(conference, bodies)
            await self.store.put(conference, batch)
            self.hub.publish(conference_id, batch)
            log.warning("conference moved", extra={"conference_id": conference_id, "from": old_daemon or "nowhere",
                                                   "to": record.info.daemon_id, "reason": reason,
                                                   "participants": len(participants)})
        for daemon_id in sorted(old_daemons):
            old = self._client(daemon_id)
            if old is None:
                continue
            try:
                if daemon_id == record.info.daemon_id:
                    # The conference is here again: only the ends of its old links go.
                    for link in old_links.values():
                        if daemon_id in link.daemons:
                            await old.delete_endpoint(link.end(conference_id, daemon_id))
                elif daemon_id != lost_on:
                    # A daemon that drains, or came back: its copies of the endpoints go.
                    await old.release_conference(conference_id)
            except CharterError as error:
                log.info("moved conference not released on its old daemon (reconciled when it registers)",
                         extra={"conference_id": conference_id, "daemon_id": daemon_id, "why": str(error)})
        return True

    async def _move_part(self, conference: Conference, lost: str, reason: str, *, excluded: str) -> bool:
        """When a conference spread over daemons loses one (`lost`), only the participants
        that were on it move: each is placed again as a join would place it (never on
        `excluded`), with new keys and routes, and told so (ParticipantMoved); the others keep
        their endpoints, keys and routes, and learn the moved ones' tracks anew (TrackRemoved,
        TrackAdded). False, changing nothing, when the conference is on that daemon only, or a
        part of it cannot be moved (then the whole conference moves)."""
        cid = conference.conference_id
        stay = [p for p in conference.participants.values() if p.daemon_id != lost]
        moving = [p for p in conference.participants.values() if p.daemon_id == lost]
        if not stay or any(self.registry.get(p.daemon_id) is None for p in stay):
            return False
        before = copy.deepcopy(conference)
        moved_ids = {p.participant_id for p in moving}
        removed: list[events.Body] = []
        copies: dict[tuple[str, frozenset[str]], list[int]] = {}
        for gone in moving:
            del conference.participants[gone.participant_id]
            for track in gone.tracks:
                ssrcs = {}
                for other in stay:
                    subscription = other.subscriptions.pop((gone.participant_id, track.ssrc), None)
                    if subscription is not None:
                        ssrcs[other.participant_id] = subscription.ssrc
                removed.append(events.TrackRemoved(gone.participant_id, track, ssrcs))
            for key, relayed in relays.forget(conference, gone).items():
                copies.setdefault(key, []).extend(relayed)
        dropped = {pair: link for pair, link in conference.links.items() if lost in link.daemons}
        for pair in dropped:
            del conference.links[pair]
        # Copies on links that stay go before the moved are admitted again (a new relayed SSRC
        # must not meet an old copy); those on the links of `lost` closed with them.
        await self._remove_copies(conference, copies)
        if conference.daemon_id == lost:
            conference.daemon_id = stay[0].daemon_id
        made: list[tuple[str, str]] = []
        try:
            for link in dropped.values():  # the ends of its links on the daemons that stay
                far = link.daemons[1] if link.daemons[0] == lost else link.daemons[0]
                await self._client_of(conference, far).delete_endpoint(link.end(cid, far))
            for participant in moving:
                record = await self._place_participant(conference, excluded=excluded, stored=before,
                                                       region=participant.region)
                client = self.daemons.get(record.info.daemon_id, record.info.grpc_address)
                await self._move_participant(conference, participant, client, record)
                made.append((record.info.daemon_id, participant.endpoint_id))
        except CharterError as error:
            for daemon_id, endpoint in made:
                client_of = self._client(daemon_id)
                if client_of is not None:
                    await self._delete_quietly(client_of, endpoint)
            conference.__dict__.update(before.__dict__)
            log.warning("part of a conference not moved: moving all of it",
                        extra={"conference_id": cid, "daemon_id": lost, "why": str(error)})
            return False
        bodies: list[events.Body] = [*removed]
        for participant in moving:
            bodies.append(events.ParticipantMoved(copy.deepcopy(participant), reason))
        for participant in moving:
            for track in participant.tracks:
                ssrcs = {q.participant_id: q.subscriptions[(participant.participant_id, track.ssrc)].ssrc
                         for q in conference.participants.values()
                         if q.participant_id not in moved_ids and (participant.participant_id, track.ssrc)
                         in q.subscriptions}
                bodies.append(events.TrackAdded(participant.participant_id, track, ssrcs))
        for participant in conference.participants.values():
            bodies += self._renegotiate(participant)
        batch = self._number(conference, bodies)
        await self.store.put(conference, batch)
        self.hub.publish(cid, batch)
        held = self._client(lost)
        if held is not None:  # a daemon that drains, or came back: what it held of this goes
            try:
                if any(p.daemon_id == lost for p in moving):
                    for link in dropped.values():
                        await held.delete_endpoint(link.end(cid, lost))
                else:
                    await held.release_conference(cid)
            except CharterError as error:
                log.info("moved part not released on its old daemon (reconciled when it registers)",
                         extra={"conference_id": cid, "daemon_id": lost, "why": str(error)})
        log.warning("part of a conference moved", extra={
            "conference_id": cid, "from": lost, "participants": len(moving),
            "to": sorted({p.daemon_id for p in moving})})
        return True

    async def _move_participant(
        self, conference: Conference, participant: Participant, client: DaemonClient, record: DaemonRecord
    ) -> None:
        """Re-join `participant` into `conference` on the daemon of `record`: new keys, new
        routes with the participants in it (through relay links to those on other daemons)."""
        session = participant.webrtc
        offer = session.offer if session is not None else None
        if offer is None:
            participant.send_key = generate_key(participant.suite)
            participant.receive_key = generate_key(participant.suite)
        participant.subscriptions = {}
        participant.webrtc = None
        participant.daemon_id = record.info.daemon_id
        await self._admit(conference, participant, client, record, offer)

    async def _admit(self, conference: Conference, participant: Participant, client: DaemonClient,
                     record: DaemonRecord, offer: BrowserOffer | None) -> None:
        """Make `participant`'s endpoint on the daemon of `record`, with its routes to and from
        everyone in `conference` (through relay links to those on other daemons), then add it
        and the others' new subscriptions to the conference: one step of a join or a move."""
        routes, others = self._assign(conference, participant, offer)
        relayed = await self._make_relays(conference, participant, routes)
        await self._make_endpoint(client, record, participant, relayed.on_newcomer, offer)
        conference.links = relayed.links
        conference.participants[participant.participant_id] = participant
        for receiver_id, subscription in others:
            receiver = conference.participants[receiver_id]
            receiver.subscriptions[(subscription.publisher_id, subscription.track.ssrc)] = subscription

    # --- reconciliation ------------------------------------------------------------------

    async def reconcile(self, daemon_id: str) -> int:
        """Delete the endpoints a daemon holds that no participant owns any more (their
        conference ended or they left while the daemon had no lease). Each conference is
        checked under its lock, so a join in flight is never mistaken for a leftover."""
        client = self._client(daemon_id)
        if client is None:
            return 0
        deleted = 0
        conference_ids = sorted(set((await client.list_endpoints()).values()))
        for conference_id in conference_ids:
            async with self.store.lock(conference_id):
                conference = await self.store.get(conference_id)
                owned = conference.endpoints_on(daemon_id) if conference is not None else set()
                for held in await client.list_endpoints(conference_id):
                    if held not in owned:
                        deleted += await client.delete_endpoint(held)
        if deleted:
            log.info("leftover endpoints deleted", extra={"daemon_id": daemon_id, "endpoints": deleted})
        return deleted

    # --- shutdown ------------------------------------------------------------------------

    async def close_watches(self) -> None:
        """End every watch stream (first step of a shutdown). With a store that does not
        outlive this process the conferences end with it, and watchers are told so."""
        if not self.store.durable:
            for conference_id in await self.store.ids():
                conference = await self.store.get(conference_id)
                if conference is not None:
                    self.hub.publish(conference_id, self._number(conference, [events.ConferenceEnded("shutdown")]))
        self.hub.end_all()

    async def release_all(self) -> None:
        """End every conference so that the daemons release their endpoints (last step of a
        shutdown with a store that does not outlive this process)."""
        if self.store.durable:
            return
        for conference_id in await self.store.ids():
            try:
                await self.end(conference_id, reason="shutdown")
            except CharterError as error:
                log.warning(
                    "conference not released at shutdown",
                    extra={"conference_id": conference_id, "reason": str(error)},
                )

    # --- helpers -------------------------------------------------------------------------

    async def candidates(self) -> dict[str, tuple[Candidate, DaemonRecord]]:
        """Every live daemon as placement sees it, with its record, from one read of the leases."""
        usage = await self.store.daemon_usage()
        result = {}
        for record in self.registry.live():
            used = usage.get(record.info.daemon_id)
            candidate = Candidate(
                daemon_id=record.info.daemon_id,
                capacity=record.info.capacity,
                endpoints=used.endpoints if used else 0,
                conferences=used.conferences if used else 0,
                draining=record.load.draining,
                max_conferences=self.limits.conferences_per_daemon,
                region=record.info.region,
            )
            result[candidate.daemon_id] = (candidate, record)
        return result

    async def _place(self) -> DaemonRecord:
        live = await self.candidates()
        if not live:
            raise Unavailable("no media daemon is registered: start one (charter mediad) and let it register")
        candidates = [candidate for candidate, _ in live.values()]
        chosen = least_loaded(candidates)
        if chosen is None:
            raise ResourceExhausted(f"no media daemon has room for a new conference ({describe(candidates)})")
        # The record of the same read: a lease that ends meanwhile cannot make it vanish.
        return live[chosen.daemon_id][1]

    async def _place_participant(self, conference: Conference, *, excluded: str = "",
                                 stored: Conference | None = None, region: str = "") -> DaemonRecord:
        """The daemon of the conference's next participant (from `region`): one of that
        region first, then one it is on while it has room, else another, linked to them
        (placement.place_participant); never `excluded`.
        `stored`: the conference as the store still counts it, when `conference` is a copy
        being changed (a move): the daemons' usage counts it as it is now."""
        unknown = any(self.registry.get(d) is None for d in conference.daemons())
        if unknown and self.refresh_leases is not None:
            await self.refresh_leases()
        home = self._live_daemon(conference)
        for daemon_id in sorted(conference.daemons() - {home.info.daemon_id}):
            if self.registry.get(daemon_id) is None:
                raise Unavailable(f"media daemon {daemon_id} of conference {conference.conference_id!r} is gone: its "
                                  "participants are being moved to another daemon, try again in a moment")
        live = {d: c for d, c in (await self.candidates()).items() if d != excluded}
        if stored is not None:
            now, then = endpoints_per_daemon(conference), endpoints_per_daemon(stored)
            live = {d: (dataclasses.replace(c, endpoints=c.endpoints + now.get(d, 0) - then.get(d, 0)), record)
                    for d, (c, record) in live.items()}
        hosting: dict[str, int] = {}
        for participant in conference.participants.values():
            hosting[participant.daemon_id] = hosting.get(participant.daemon_id, 0) + 1
        chosen = place_participant(home.info.daemon_id, hosting, set(conference.links),
                                   [c for c, _ in live.values()], region)
        if chosen is None:
            await self._check_room(home, conference)  # says why the conference's own daemon cannot
            raise ResourceExhausted(f"no media daemon has room for another participant of conference "
                                    f"{conference.conference_id!r} ({describe([c for c, _ in live.values()])})")
        return live[chosen.daemon_id][1]

    async def _make_relays(self, conference: Conference, newcomer: Participant,
                           routes: list[SubscriptionSpec]) -> relays.RelayPlan:
        """Make what the join's routes need beyond the newcomer's endpoint: the relay links
        to the daemons of the conference the newcomer is not on, the relayed tracks on their
        ends, and the routes on the other daemons. The returned plan holds the routes made
        with the newcomer's endpoint and the links the conference has once it is made."""
        everyone = [*conference.participants.values(), newcomer]
        daemon_of = {p.endpoint_id: p.daemon_id for p in everyone}
        publisher_of = {p.endpoint_id: p.participant_id for p in everyone}
        tracks = {(p.participant_id, t.ssrc): t for p in everyone for t in p.tracks}
        for link in conference.links.values():
            for daemon_id in link.daemons:
                end = link.end(conference.conference_id, daemon_id)
                daemon_of[end] = daemon_id
        made = relays.plan(conference, newcomer.daemon_id, routes, daemon_of, publisher_of, tracks)
        cid = conference.conference_id
        for pair in made.new_links:
            link = made.links[pair]
            first, second = link.daemons
            records = {d: self._record_of(conference, d) for d in link.daemons}
            # The second end first (latching), then the first told its address, then the
            # second told the first's: both ends fixed (mediad: a latching endpoint takes a
            # fixed remote when asked again).
            port = await self._client_of(conference, second).create_endpoint(relays.end_spec(cid, link, second))
            link.addresses = (("", 0), (records[second].info.media_ip, port))
            port = await self._client_of(conference, first).create_endpoint(relays.end_spec(cid, link, first))
            link.addresses = ((records[first].info.media_ip, port), link.addresses[1])
            await self._client_of(conference, second).create_endpoint(relays.end_spec(cid, link, second))
        for (daemon_id, pair), added in made.end_tracks.items():
            spec = relays.end_spec(cid, made.links[pair], daemon_id, tracks=tuple(added))
            await self._client_of(conference, daemon_id).create_endpoint(spec)
        for daemon_id, specs in made.elsewhere.items():
            # Asking again for an end of a link on that daemon makes the routes (all or none).
            link = next(lk for lk in made.links.values() if daemon_id in lk.daemons)
            await self._client_of(conference, daemon_id).create_endpoint(
                relays.end_spec(cid, link, daemon_id, subscriptions=tuple(specs)))
        return made

    def _record_of(self, conference: Conference, daemon_id: str) -> DaemonRecord:
        record = self.registry.get(daemon_id)
        if record is None:
            raise Unavailable(f"media daemon {daemon_id} of conference {conference.conference_id!r} is gone: try "
                              "again in a moment")
        return record

    def _client_of(self, conference: Conference, daemon_id: str) -> DaemonClient:
        record = self._record_of(conference, daemon_id)
        return self.daemons.get(daemon_id, record.info.grpc_address)

    def _live_daemon(self, conference: Conference) -> DaemonRecord:
        if not conference.daemon_id:
            raise Unavailable(f"conference {conference.conference_id!r} waits for a media daemon with room "
                              "(its own is gone): try again when one has registered")
        record = self.registry.get(conference.daemon_id)
        if record is None:
            raise Unavailable(
                f"media daemon {conference.daemon_id} of conference {conference.conference_id!r} "
                "is gone: the conference is being moved to another daemon, try again in a moment"
            )
        return record

    async def _check_room(self, record: DaemonRecord, conference: Conference) -> None:
        if record.load.draining:
            raise Unavailable(
                f"media daemon {record.info.daemon_id} of conference {conference.conference_id!r} is draining "
                "and takes no new participants"
            )
        usage = (await self.store.daemon_usage()).get(record.info.daemon_id)
        used = usage.endpoints if usage else 0
        if used >= record.info.capacity:
            raise ResourceExhausted(
                f"media daemon {record.info.daemon_id} of conference {conference.conference_id!r} is full "
                f"({used} of {record.info.capacity} endpoints in use)"
            )

    def _client(self, daemon_id: str) -> DaemonClient | None:
        record = self.registry.get(daemon_id)
        if record is None:
            return None
        return self.daemons.get(daemon_id, record.info.grpc_address)

    def _participant(self, conference: Conference, participant_id: str) -> Participant:
        participant = conference.participants.get(participant_id)
        if participant is None:
            raise NotFound(f"participant {participant_id!r} is not in conference {conference.conference_id!r}")
        return participant

    async def _delete_quietly(self, client: DaemonClient, ep_id: str) -> None:
        try:
            await client.delete_endpoint(ep_id)
        except CharterError as error:
            log.warning(
                "endpoint of a failed join left on its daemon", extra={"endpoint_id": ep_id, "reason": str(error)}
            )

    def _number(self, conference: Conference, bodies: list[events.Body]) -> list[events.Event]:
        """Events with the conference's next sequence numbers (stored with the conference)."""
        now = self._clock()
        batch = []
        for body in bodies:
            conference.sequence += 1
            batch.append(events.Event(conference.sequence, now, body))
        return batch
