"""Servicers of charter.v1.ConferenceService and charter.v1.DaemonRegistry: they check and
translate messages and call the domain; they hold no state."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from charter import pki, tokens
from charter.addresses import Address, MediaDestinations, parse_address
from charter.errors import CharterError, InvalidArgument, PermissionDenied, Unauthenticated
from charter.suites import SrtpSuite, decode_key
from charter.tracks import parse_tracks
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc
from charter.webrtc_sdp import parse_offer
from controller import events
from controller import messages as m
from controller.conferences import Conferences, JoinSpec
from controller.leases import Leases, LocalLeases
from controller.limits import CallerLimits, Limits, caller_of
from controller.registry import Registry
from controller.store import DaemonUsage

MAX_PAGE = 1000

log = logging.getLogger("controller.service")


class ConferenceService(controller_pb2_grpc.ConferenceServiceServicer):
    def __init__(
        self,
        conferences: Conferences,
        destinations: MediaDestinations | None = None,
        own_address: tuple[str, int] | None = None,
        caller_limits: CallerLimits | None = None,
        api_keys: tokens.ApiKeys | None = None,
    ) -> None:
        self.conferences = conferences
        self.destinations = destinations or MediaDestinations()
        self.own_address = own_address
        """The controller's gRPC address: never a place media may be sent to."""
        self.caller_limits = caller_limits or CallerLimits(Limits())
        self.api_keys = api_keys
        """The keys whose tokens are accepted; None: no token is asked for (--auth none)."""

    def _admit(
        self, context: ServicerContext[Any, Any], action: str, conference_id: str, participant_id: str = ""
    ) -> str:
        """The caller of this call (its token's holder with --auth token, else its address),
        if its token grants `action` on the conference (as the participant) and it is within
        its rate; else UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED saying why."""
        caller = caller_of(context.peer() or "")
        if self.api_keys is not None:
            grant = tokens.verify(tokens.bearer(context.invocation_metadata() or ()), self.api_keys.keys)
            grant.allows(action, conference_id, participant_id)
            caller = grant.holder
        self.caller_limits.admit(caller)
        return caller

    def _receive_address(self, request: pb.JoinRequest) -> Address | None:
        """Where the participant receives, if it says, and media may go there."""
        if not request.HasField("receive_address"):
            return None
        address = parse_address("receive_address", request.receive_address)
        services = [(host if host not in ("0.0.0.0", "") else "", port, port)
                    for host, port in ([self.own_address] if self.own_address else [])]
        for record in self.conferences.registry.live():
            host, _, port = record.info.grpc_address.rpartition(":")
            if port.isdigit():
                services.append((host, int(port), int(port)))
            services.append((record.info.media_ip, record.info.port_first, record.info.port_last))
        return self.destinations.check("receive_address", address, services)

    async def CreateConference(
        self, request: pb.CreateConferenceRequest, context: ServicerContext[pb.CreateConferenceRequest, pb.Conference]
    ) -> pb.Conference:
        caller = self._admit(context, "create", request.conference_id)
        created = self.caller_limits.created(caller)
        if len(created) >= self.caller_limits.limits.conferences_per_caller:
            for conference_id in list(created):  # those that ended since no longer count
                if await self.conferences.store.get(conference_id) is None:
                    created.discard(conference_id)
        self.caller_limits.check_conferences(caller)
        conference = await self.conferences.create(
            m.parse_id("conference_id", request.conference_id, required=False),
            m.parse_text("name", request.name),
            request.persistent,
        )
        created.add(conference.conference_id)
        return m.conference_to_proto(conference)

    async def GetConference(
        self, request: pb.GetConferenceRequest, context: ServicerContext[pb.GetConferenceRequest, pb.Conference]
    ) -> pb.Conference:
        self._admit(context, "read", request.conference_id)
        conference = await self.conferences.get(m.parse_id("conference_id", request.conference_id))
        return m.conference_to_proto(conference)

    async def ListConferences(
        self,
        request: pb.ListConferencesRequest,
        context: ServicerContext[pb.ListConferencesRequest, pb.ListConferencesResponse],
    ) -> pb.ListConferencesResponse:
        self._admit(context, "read", "*")
        if request.page_size > MAX_PAGE:
            raise InvalidArgument("page_size", f"is {request.page_size}; at most {MAX_PAGE}")
        token = m.parse_id("page_token", request.page_token, required=False)
        page, next_token = await self.conferences.page(request.page_size or 100, token)
        return pb.ListConferencesResponse(
            conferences=[m.conference_to_proto(c) for c in page], next_page_token=next_token
        )

    async def EndConference(
        self,
        request: pb.EndConferenceRequest,
        context: ServicerContext[pb.EndConferenceRequest, pb.EndConferenceResponse],
    ) -> pb.EndConferenceResponse:
        self._admit(context, "end", request.conference_id)
        removed = await self.conferences.end(m.parse_id("conference_id", request.conference_id))
        return pb.EndConferenceResponse(participants_removed=removed)

    async def Join(
        self, request: pb.JoinRequest, context: ServicerContext[pb.JoinRequest, pb.JoinResponse]
    ) -> pb.JoinResponse:
        self._admit(context, "join", request.conference_id, request.participant_id)
        if request.offer:
            return await self._join_browser(request)
        suite = SrtpSuite.from_number("suite", request.suite)
        spec = JoinSpec(
            conference_id=m.parse_id("conference_id", request.conference_id),
            participant_id=m.parse_id("participant_id", request.participant_id, required=False),
            display_name=m.parse_text("display_name", request.display_name),
            tracks=parse_tracks("tracks", request.tracks),
            receive_address=self._receive_address(request),
            suite=suite,
            send_key=decode_key("send_key", suite, request.send_key) if request.send_key else None,
            region=m.parse_id("region", request.region, required=False),
        )
        participant = await self.conferences.join(spec)
        return pb.JoinResponse(participant=m.participant_to_proto(participant))

    async def _join_browser(self, request: pb.JoinRequest) -> pb.JoinResponse:
        """A WebRTC participant: its tracks, keys and address come from its offer."""
        given = {"tracks": bool(request.tracks), "suite": bool(request.suite), "send_key": bool(request.send_key),
                 "receive_address": request.HasField("receive_address")}
        for name in (n for n, value in given.items() if value):
            raise InvalidArgument(name, "is left out of a join with an offer: the offer describes the browser's media")
        offer = parse_offer(request.offer)
        spec = JoinSpec(
            conference_id=m.parse_id("conference_id", request.conference_id),
            participant_id=m.parse_id("participant_id", request.participant_id, required=False),
            display_name=m.parse_text("display_name", request.display_name),
            tracks=offer.tracks(),
            receive_address=None,
            suite=SrtpSuite.AES_CM_128_HMAC_SHA1_80,
            send_key=None,
            offer=offer,
            region=m.parse_id("region", request.region, required=False),
        )
        participant = await self.conferences.join(spec)
        return pb.JoinResponse(participant=m.participant_to_proto(participant))

    async def Answer(
        self, request: pb.AnswerRequest, context: ServicerContext[pb.AnswerRequest, pb.AnswerResponse]
    ) -> pb.AnswerResponse:
        self._admit(context, "join", request.conference_id, request.participant_id)
        if not request.sdp:
            raise InvalidArgument("sdp", "is required: the SDP answer to the session_offer")
        if not request.version:
            raise InvalidArgument("version", "is required: SessionOffer.version of the offer answered")
        await self.conferences.answer(
            m.parse_id("conference_id", request.conference_id),
            m.parse_id("participant_id", request.participant_id),
            request.sdp,
            request.version,
        )
        return pb.AnswerResponse()

    async def GetParticipant(
        self, request: pb.GetParticipantRequest, context: ServicerContext[pb.GetParticipantRequest, pb.Participant]
    ) -> pb.Participant:
        self._admit(context, "join", request.conference_id, request.participant_id)
        participant = await self.conferences.get_participant(
            m.parse_id("conference_id", request.conference_id),
            m.parse_id("participant_id", request.participant_id),
        )
        return m.participant_to_proto(participant)

    async def Leave(
        self, request: pb.LeaveRequest, context: ServicerContext[pb.LeaveRequest, pb.LeaveResponse]
    ) -> pb.LeaveResponse:
        self._admit(context, "join", request.conference_id, request.participant_id)
        ended = await self.conferences.leave(
            m.parse_id("conference_id", request.conference_id),
            m.parse_id("participant_id", request.participant_id),
        )
        return pb.LeaveResponse(conference_ended=ended)

    async def WatchConference(
        self,
        request: pb.WatchConferenceRequest,
        context: ServicerContext[pb.WatchConferenceRequest, pb.ConferenceEvent],
    ) -> AsyncIterator[pb.ConferenceEvent]:
        caller = self._admit(context, "watch", request.conference_id, request.participant_id)
        conference_id = m.parse_id("conference_id", request.conference_id)
        watcher_id = m.parse_id("participant_id", request.participant_id, required=False)
        with self.caller_limits.watching(caller):
            async for event in self.conferences.watch(conference_id, watcher_id, request.after_sequence):
                body = event.body
                if isinstance(body, events.SessionOffer) and body.participant_id != watcher_id:
                    continue  # an offer is for its participant's eyes only
                yield m.event_to_proto(event, watcher_id)


class DaemonRegistryService(controller_pb2_grpc.DaemonRegistryServicer):
    def __init__(self, registry: Registry, conferences: Conferences, *, require_certificates: bool = False,
                 api_keys: tokens.ApiKeys | None = None, leases: Leases | None = None) -> None:
        self.registry = registry
        self.leases = leases or LocalLeases(registry)
        """Where leases are kept: this registry, or Redis shared with other controllers."""
        self.conferences = conferences
        self.api_keys = api_keys
        """With --auth token, ListDaemons (where every daemon is, and its load) is for operators:
        a token that may read every conference, or a certificate of Charter's CA."""
        self.require_certificates = require_certificates
        """A daemon proves its id with its certificate (CN = daemon id, Charter's CA): a stranger
        cannot register, nor one daemon take over another's entry."""
        self._reconciling: set[asyncio.Task[None]] = set()
        self._draining: set[str] = set()
        """Daemons whose conferences were moved off since they began to drain."""

    async def Register(
        self, request: pb.RegisterRequest, context: ServicerContext[pb.RegisterRequest, pb.RegisterResponse]
    ) -> pb.RegisterResponse:
        if not request.HasField("daemon"):
            raise InvalidArgument("daemon", "is required")
        info = m.parse_daemon("daemon", request.daemon)
        self._check_identity(context, info.daemon_id)
        record = await self.leases.register(info, m.parse_load(request.load))
        # After answering: a daemon that comes back may hold endpoints whose conference ended
        # or moved meanwhile, or may have lost the endpoints of its conferences (it
        # restarted); conferences waiting for room may now have some.
        task = asyncio.create_task(self._reconcile(info.daemon_id))
        self._reconciling.add(task)
        task.add_done_callback(self._reconciling.discard)
        return pb.RegisterResponse(lease_id=record.lease_id, lease_ttl=m.duration(self.registry.lease_ttl))

    def _check_identity(self, context: ServicerContext[Any, Any], daemon_id: str) -> None:
        if not self.require_certificates:
            return
        name = pki.peer_name(context)
        if not name:
            raise Unauthenticated("a daemon registers over mutual TLS with its certificate of Charter's CA, on the "
                                  "controller's --registry-listen port")
        if name != daemon_id or name == pki.CONTROLLER:
            raise PermissionDenied(f"the certificate names {name!r}: it cannot act for daemon {daemon_id!r}")

    async def close(self) -> None:
        """Stop reconciliations still running (shutdown): a later registration redoes them."""
        for task in list(self._reconciling):
            task.cancel()
        await asyncio.gather(*self._reconciling, return_exceptions=True)

    async def _reconcile(self, daemon_id: str) -> None:
        try:
            await self.conferences.registered(daemon_id)
        except CharterError as error:
            log.warning("reconciliation failed", extra={"daemon_id": daemon_id, "reason": str(error)})

    async def KeepAlive(
        self, request: pb.KeepAliveRequest, context: ServicerContext[pb.KeepAliveRequest, pb.KeepAliveResponse]
    ) -> pb.KeepAliveResponse:
        daemon_id = m.parse_id("daemon_id", request.daemon_id)
        self._check_identity(context, daemon_id)
        if not request.lease_id:
            raise InvalidArgument("lease_id", "is required")
        load = m.parse_load(request.load)
        await self.leases.keep_alive(daemon_id, request.lease_id, load)
        if load.draining and daemon_id not in self._draining:
            # A daemon that drains (SIGTERM, or Drain) gets its conferences moved to others,
            # so that it can stop without cutting a call; those no other has room for stay.
            self._draining.add(daemon_id)
            self.conferences.in_background(self.conferences.move_off(daemon_id, "daemon draining", only_if_room=True))
        elif not load.draining:
            self._draining.discard(daemon_id)
        if request.closed_endpoints:
            closed = [(c.conference_id, c.endpoint_id, c.reason) for c in request.closed_endpoints]
            task = asyncio.create_task(self.conferences.endpoints_closed(daemon_id, closed))
            self._reconciling.add(task)
            task.add_done_callback(self._reconciling.discard)
        return pb.KeepAliveResponse(lease_ttl=m.duration(self.registry.lease_ttl))

    async def Deregister(
        self, request: pb.DeregisterRequest, context: ServicerContext[pb.DeregisterRequest, pb.DeregisterResponse]
    ) -> pb.DeregisterResponse:
        daemon_id = m.parse_id("daemon_id", request.daemon_id)
        self._check_identity(context, daemon_id)
        if not request.lease_id:
            raise InvalidArgument("lease_id", "is required")
        await self.leases.deregister(daemon_id, request.lease_id)
        return pb.DeregisterResponse()

    async def ListDaemons(
        self, request: pb.ListDaemonsRequest, context: ServicerContext[pb.ListDaemonsRequest, pb.ListDaemonsResponse]
    ) -> pb.ListDaemonsResponse:
        if self.api_keys is not None and not pki.peer_name(context):
            grant = tokens.verify(tokens.bearer(context.invocation_metadata() or ()), self.api_keys.keys)
            grant.allows("read", "*")
        store_usage = await self.conferences.store.daemon_usage()
        reply = pb.ListDaemonsResponse()
        for record in self.registry.live():
            used = store_usage.get(record.info.daemon_id, DaemonUsage())
            reply.daemons.add(
                daemon=m.daemon_to_proto(record.info),
                load=m.load_to_proto(record.load),
                conferences=used.conferences,
                endpoints_assigned=used.endpoints,
                lease_expires_at=m.timestamp(time.time() + record.expires_at - self.registry.clock()),
            )
        return reply
