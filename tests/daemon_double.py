"""An in-memory media daemon for the controller's tests: `DaemonDouble` is a DaemonClient and
`DaemonDoubles` the DaemonClients of controller/daemons.py, with no socket, no process and no
gRPC. Behind the client methods is a model of the media daemon's domain (mediad/media.py
`Media`): idempotent CreateEndpoint, routes made all or nothing, ports from a range, capacity,
draining. tests/test_daemon_contract.py runs the same scenarios against this double and a real
`python -m mediad`, so the two cannot drift apart.

How it stays faithful to the real pair (MediaDaemonClient talking to mediad):
- requests are checked as the daemon checks them: CreateEndpoint goes through the proto and
  `parse_endpoint_spec`, ids through `check_id`;
- the daemon side raises what Media raises (NotFound, AlreadyExists, FailedPrecondition,
  ResourceExhausted, InvalidArgument) and the client side turns it into what the real client
  raises, through controller.daemons._translate itself: so NOT_FOUND and INVALID_ARGUMENT
  come back as Internal, FAILED_PRECONDITION (draining) as Unavailable, and the messages are
  the real ones;
- the client methods do what MediaDaemonClient's do (create with `replace` is CreateEndpoint,
  then on AlreadyExists DeleteEndpoint and CreateEndpoint again), one recorded call per RPC;
- every call yields to the event loop once, as a real call does, so a caller can be cancelled
  in it and other tasks run meanwhile.

Faults, by RPC method name ("CreateEndpoint", "DeleteEndpoint", "ReleaseConference",
"ListEndpoints", "UpdateSubscriptions", "RemoveTracks"):
- `fail(method)`: the daemon does not answer (Unavailable); with `done=True` it did the work
  and the answer was lost;
- `hold(method)`: the call waits (after the daemon did the work, by default) until the test
  releases it, or its caller is cancelled;
- `down = True`: nothing answers any call (the client of an address nobody listens at).
Every RPC is recorded in `calls` with its request and outcome.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from charter.endpoints import DtlsFingerprint, EndpointSpec, parse_endpoint_spec
from charter.errors import (
    AlreadyExists,
    CharterError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from charter.subscriptions import SubscriptionSpec, check_id
from charter.tracks import Track
from charter.v1 import mediad_pb2
from controller.daemons import _translate
from controller.registry import DaemonInfo, DaemonLoad

METHODS = ("CreateEndpoint", "DeleteEndpoint", "ReleaseConference", "ListEndpoints", "UpdateSubscriptions",
           "RemoveTracks")
DOUBLE_FINGERPRINT = DtlsFingerprint("sha-256", ":".join(["AB"] * 32))
"""The DTLS certificate fingerprint of every double (a real daemon makes a certificate at start)."""


@dataclass
class Call:
    """One RPC the controller made."""

    method: str
    request: Any
    """CreateEndpoint: the EndpointSpec as sent; DeleteEndpoint: the endpoint id;
    ReleaseConference and ListEndpoints: the conference id; RemoveTracks: (endpoint id,
    SSRCs)."""
    outcome: str = "pending"
    """"ok", "not answered", "answer lost", "cancelled", or the status code name of a refusal."""
    result: Any = None
    error: CharterError | None = None


@dataclass
class Fault:
    method: str
    times: int | None
    """Calls it still applies to; None: every one."""
    done: bool
    """The daemon did the work before the answer was lost."""
    code: grpc.StatusCode
    when: Callable[[Any], bool] | None
    hits: int = 0

    def matches(self, method: str, request: Any) -> bool:
        return (
            self.method == method
            and (self.times is None or self.hits < self.times)
            and (self.when is None or self.when(request))
        )


@dataclass
class Gate:
    """A held call: `entered` is set when a call reaches it; `release()` lets it answer."""

    method: str
    done: bool
    times: int | None
    """Calls it holds; None: every one."""
    when: Callable[[Any], bool] | None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    hits: int = 0

    def matches(self, method: str, request: Any) -> bool:
        return (
            self.method == method
            and (self.times is None or self.hits < self.times)
            and (self.when is None or self.when(request))
        )

    def release(self) -> None:
        self.released.set()


@dataclass
class HeldEndpoint:
    """An endpoint the daemon holds: the parameters it was made with, its port, its tracks."""

    spec: EndpointSpec
    """As parsed by the daemon, without tracks and routes (like _forward.Endpoint.description)."""
    port: int
    tracks: dict[int, Track] = field(default_factory=dict)
    """By SSRC, in the order they were added."""


class DaemonDouble:
    """One media daemon and the controller's client of it."""

    def __init__(
        self,
        daemon_id: str,
        address: str = "",
        *,
        ports: tuple[int, int] = (20000, 20099),
        capacity: int = 0,
        media_ip: str = "127.0.0.1",
        region: str = "",
    ) -> None:
        first, last = ports
        if not 0 < first <= last <= 65535:
            raise ValueError(f"port range {first}-{last} is not within 1-65535")
        self.daemon_id = daemon_id
        self.address = address or f"double.{daemon_id}:8443"
        self.media_ip = media_ip
        self.region = region
        self.port_first, self.port_last = first, last
        size = last - first + 1
        # As Media: the capacity is at most one endpoint per port; 0 means one per port.
        self.capacity = min(capacity, size) if capacity > 0 else size
        self.draining = False
        self.down = False
        self.closed = False
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.gates: list[Gate] = []
        self._free: collections.deque[int] = collections.deque(range(first, last + 1))
        self._used: set[int] = set()
        self._occupied: set[int] = set()
        """Ports some other process holds (the allocator skips them)."""
        self._endpoints: dict[str, HeldEndpoint] = {}
        self._routes: dict[tuple[str, int, str], SubscriptionSpec] = {}
        """By (track endpoint, track SSRC, receiving endpoint)."""

    # --- as the registry sees it ---------------------------------------------------------

    def info(self) -> DaemonInfo:
        """What the daemon registers with (its effective capacity, as mediad sends it)."""
        return DaemonInfo(self.daemon_id, self.address, self.media_ip, self.port_first, self.port_last, self.capacity,
                          self.region)

    def load(self) -> DaemonLoad:
        endpoints, tracks, subscriptions = self.counts()
        return DaemonLoad(endpoints=endpoints, tracks=tracks, subscriptions=subscriptions, draining=self.draining)

    # --- DaemonClient --------------------------------------------------------------------

    async def create_endpoint(self, spec: EndpointSpec, *, replace: bool = False) -> int:
        try:
            port = await self._call("CreateEndpoint", spec)
        except AlreadyExists:
            if not replace:
                raise
            await self.delete_endpoint(spec.endpoint_id)
            port = await self._call("CreateEndpoint", spec)
        return int(port)

    async def create_webrtc_endpoint(self, spec: EndpointSpec, *, replace: bool = False) -> tuple[int, DtlsFingerprint]:
        return await self.create_endpoint(spec, replace=replace), DOUBLE_FINGERPRINT

    async def update_subscriptions(self, specs: Sequence[SubscriptionSpec]) -> int:
        return int(await self._call("UpdateSubscriptions", tuple(specs)))

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        return bool(await self._call("DeleteEndpoint", endpoint_id))

    async def remove_tracks(self, endpoint_id: str, ssrcs: Sequence[int]) -> int:
        # The request message is built as the real client builds it (an SSRC out of uint32
        # fails here alike).
        request = mediad_pb2.RemoveTracksRequest(endpoint_id=endpoint_id, ssrcs=ssrcs)
        return int(await self._call("RemoveTracks", (request.endpoint_id, tuple(request.ssrcs))))

    async def release_conference(self, conference_id: str) -> int:
        return int(await self._call("ReleaseConference", conference_id))

    async def list_endpoints(self, conference_id: str = "") -> dict[str, str]:
        return dict(await self._call("ListEndpoints", conference_id))

    async def close(self) -> None:
        self.closed = True

    # --- faults --------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        times: int | None = 1,
        done: bool = False,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        when: Callable[[Any], bool] | None = None,
    ) -> Fault:
        """The next `times` calls of `method` (None: all) for which `when(request)` holds get
        no answer: `code` as the real client sees it (UNAVAILABLE, DEADLINE_EXCEEDED and
        CANCELLED are Unavailable). With `done`, the daemon did the work first."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {METHODS}")
        fault = Fault(method, times, done, code, when)
        self.faults.append(fault)
        return fault

    def hold(
        self,
        method: str,
        *,
        times: int | None = 1,
        done: bool = True,
        when: Callable[[Any], bool] | None = None,
    ) -> Gate:
        """The next `times` calls of `method` (None: all) for which `when(request)` holds wait
        at the returned gate until it is released (or their caller is cancelled); with `done`
        (the default) the daemon has done the work already."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {METHODS}")
        gate = Gate(method, done, times, when)
        self.gates.append(gate)
        return gate

    def heal(self) -> None:
        """No more faults; held calls are let go."""
        self.faults.clear()
        for gate in self.gates:
            gate.release()
        self.gates.clear()
        self.down = False

    # --- what the daemon holds -----------------------------------------------------------

    def endpoint_ids(self, conference_id: str = "") -> list[str]:
        return [
            k
            for k in sorted(self._endpoints)
            if not conference_id or self._endpoints[k].spec.conference_id == conference_id
        ]

    def endpoint(self, endpoint_id: str) -> HeldEndpoint | None:
        return self._endpoints.get(endpoint_id)

    @property
    def routes(self) -> set[SubscriptionSpec]:
        return set(self._routes.values())

    def routes_to(self, endpoint_id: str) -> set[SubscriptionSpec]:
        return {r for r in self._routes.values() if r.endpoint_id == endpoint_id}

    def routes_from(self, endpoint_id: str) -> set[SubscriptionSpec]:
        return {r for r in self._routes.values() if r.track_endpoint_id == endpoint_id}

    def counts(self) -> tuple[int, int, int]:
        """Endpoints, tracks and subscriptions (as Media.counts)."""
        return len(self._endpoints), sum(len(e.tracks) for e in self._endpoints.values()), len(self._routes)

    @property
    def ports_in_use(self) -> set[int]:
        return set(self._used)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def created_specs(self) -> list[EndpointSpec]:
        """The EndpointSpecs of the CreateEndpoint calls the daemon answered."""
        return [c.request for c in self.calls if c.method == "CreateEndpoint" and c.outcome == "ok"]

    # --- the daemon's own controls (not part of DaemonClient) ----------------------------

    def drain(self, resume: bool = False) -> None:
        """As the Drain RPC: no new endpoints (retries of existing ones still answer)."""
        self.draining = not resume

    def occupy(self, *ports: int) -> None:
        """Another process binds these ports: the allocator skips them."""
        self._occupied.update(ports)

    def seed(self, spec: EndpointSpec) -> int:
        """Make an endpoint as if CreateEndpoint had been called earlier (not recorded)."""
        return self._create(parse_endpoint_spec(spec.to_proto()))

    def restart(self) -> None:
        """The daemon process restarted: it holds nothing (the test registers it again)."""
        for endpoint_id in list(self._endpoints):
            self._delete(endpoint_id)
        self.draining = False

    # --- the RPC layer -------------------------------------------------------------------

    async def _call(self, method: str, request: Any) -> Any:
        call = Call(method, request)
        self.calls.append(call)
        if self.closed:
            call.outcome = "client closed"
            raise RuntimeError(f"the client of media daemon {self.daemon_id} is closed")
        fault = next((f for f in self.faults if f.matches(method, request)), None)
        if fault is not None:
            fault.hits += 1
        gate = next((g for g in self.gates if g.matches(method, request)), None)
        if gate is not None:
            gate.hits += 1
        try:
            # The request travels: other tasks run, and the caller may be cancelled here.
            await asyncio.sleep(0)
            if self.down or (fault is not None and not fault.done):
                call.outcome = "not answered"
                raise self._refusal(method, fault.code if fault is not None else grpc.StatusCode.UNAVAILABLE, "")
            if gate is not None and not gate.done:
                await self._wait(gate)
            try:
                result = self._serve(method, request)
            except CharterError as error:
                call.outcome = error.code.name
                raise self._refusal(method, error.code, str(error)) from None
            if fault is not None:
                call.outcome = "answer lost"
                raise self._refusal(method, fault.code, "")
            if gate is not None and gate.done:
                await self._wait(gate)
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise
        except CharterError as error:
            call.error = error
            raise
        call.outcome = "ok"
        call.result = result
        return result

    async def _wait(self, gate: Gate) -> None:
        gate.entered.set()
        await gate.released.wait()

    def _refusal(self, method: str, code: grpc.StatusCode, details: str) -> CharterError:
        """What MediaDaemonClient raises for a status: the real translation, not a copy."""
        error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
        return _translate(self.daemon_id, method, error)

    def _serve(self, method: str, request: Any) -> Any:
        if method == "CreateEndpoint":
            return self._create(parse_endpoint_spec(request.to_proto()))
        if method == "DeleteEndpoint":
            return self._delete(check_id("endpoint_id", request), allow_missing=True)
        if method == "ReleaseConference":
            conference_id = check_id("conference_id", request)
            ids = self.endpoint_ids(conference_id)
            for endpoint_id in ids:
                self._delete(endpoint_id, allow_missing=True)
            return len(ids)
        if method == "UpdateSubscriptions":
            return self._update(request)
        if method == "RemoveTracks":
            endpoint_id, ssrcs = request
            return self._remove_tracks(check_id("endpoint_id", endpoint_id), ssrcs)
        if method == "ListEndpoints":
            return {k: self._endpoints[k].spec.conference_id for k in self.endpoint_ids(request)}
        raise AssertionError(method)

    # --- the daemon's domain (mediad/media.py Media, step by step) -----------------------

    def _create(self, spec: EndpointSpec) -> int:
        endpoint = self._endpoints.get(spec.endpoint_id)
        if endpoint is not None:
            if endpoint.spec.fixes_remote(spec):
                endpoint.spec = dataclasses.replace(endpoint.spec, remote=spec.remote)
            elif not endpoint.spec.same_endpoint(spec):
                raise AlreadyExists(f"endpoint {spec.endpoint_id!r} exists with other parameters")
            for track in spec.tracks:
                self._add_track(endpoint, track)
            self._subscribe(spec.subscriptions)
            return endpoint.port
        if self.draining:
            raise FailedPrecondition("this media daemon is draining and takes no new endpoints")
        if len(self._endpoints) >= self.capacity:
            raise ResourceExhausted(f"this media daemon is full ({len(self._endpoints)} of {self.capacity} endpoints)")
        port = self._allocate()
        endpoint = HeldEndpoint(dataclasses.replace(spec, tracks=(), subscriptions=()), port)
        self._endpoints[spec.endpoint_id] = endpoint
        try:
            for track in spec.tracks:
                self._add_track(endpoint, track)
            self._subscribe(spec.subscriptions)
        except BaseException:
            self._delete(spec.endpoint_id)
            raise
        return port

    def _update(self, specs: tuple[SubscriptionSpec, ...]) -> int:
        """As Media.update_subscriptions: every route is found before any changes."""
        for i, spec in enumerate(specs):
            if spec.route not in self._routes:
                raise NotFound(f"subscriptions[{i}]: no route of track {spec.track_ssrc} of "
                               f"{spec.track_endpoint_id!r} to {spec.endpoint_id!r}")
        changed = 0
        for spec in specs:
            held = self._routes[spec.route]
            if held.paused != spec.paused:
                self._routes[spec.route] = dataclasses.replace(held, paused=spec.paused)
                changed += 1
        return changed

    def _remove_tracks(self, endpoint_id: str, ssrcs: tuple[int, ...]) -> int:
        """As Media.remove_tracks: the tracks held go with their routes; the others are skipped."""
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_id!r} not found")
        removed = 0
        for ssrc in dict.fromkeys(ssrcs):
            if endpoint.tracks.pop(ssrc, None) is None:
                continue
            removed += 1
            for key in [k for k in self._routes if k[0] == endpoint_id and k[1] == ssrc]:
                del self._routes[key]
        return removed

    def _delete(self, endpoint_id: str, allow_missing: bool = False) -> bool:
        endpoint = self._endpoints.pop(endpoint_id, None)
        if endpoint is None:
            if allow_missing:
                return False
            raise NotFound(f"endpoint {endpoint_id!r} not found")
        # Closing removes its tracks with their routes and the routes sending to it.
        for key in [k for k in self._routes if k[0] == endpoint_id or k[2] == endpoint_id]:
            del self._routes[key]
        if endpoint.port in self._used:
            self._used.discard(endpoint.port)
            self._free.append(endpoint.port)
        return True

    def _allocate(self) -> int:
        for _ in range(len(self._free)):
            port = self._free.popleft()
            if port in self._occupied:
                self._free.append(port)
                continue
            self._used.add(port)
            return port
        raise ResourceExhausted(
            f"no free UDP port in {self.media_ip}:{self.port_first}-{self.port_last} "
            f"({len(self._used)} in use by endpoints)"
        )

    def _add_track(self, endpoint: HeldEndpoint, track: Track) -> None:
        existing = endpoint.tracks.get(track.ssrc)
        if existing is not None:
            if existing != track:
                raise AlreadyExists(
                    f"endpoint {endpoint.spec.endpoint_id!r} has a track with SSRC {track.ssrc} and another description"
                )
            return
        endpoint.tracks[track.ssrc] = track

    def _subscribe(self, specs: tuple[SubscriptionSpec, ...]) -> int:
        """Every route that does not exist yet; all are checked before any is made."""
        plan: list[SubscriptionSpec] = []
        planned: set[tuple[str, int]] = set()
        for i, spec in enumerate(specs):
            field_name = f"subscriptions[{i}]"
            source = self._endpoints.get(spec.track_endpoint_id)
            if source is None:
                raise NotFound(f"{field_name}.track_endpoint_id: endpoint {spec.track_endpoint_id!r} not found")
            target = self._endpoints.get(spec.endpoint_id)
            if target is None:
                raise NotFound(f"{field_name}.endpoint_id: endpoint {spec.endpoint_id!r} not found")
            if source is target:
                raise InvalidArgument(f"{field_name}.endpoint_id", "an endpoint cannot receive its own track")
            if spec.track_ssrc not in source.tracks:
                raise NotFound(
                    f"{field_name}.track_ssrc: endpoint {spec.track_endpoint_id!r} "
                    f"has no track with SSRC {spec.track_ssrc}"
                )
            existing = self._routes.get((spec.track_endpoint_id, spec.track_ssrc, spec.endpoint_id))
            if existing is not None:
                if existing.ssrc != spec.ssrc:
                    raise AlreadyExists(
                        f"{field_name}: endpoint {spec.endpoint_id!r} "
                        f"already receives this track with SSRC {existing.ssrc}"
                    )
                continue
            # As Media.subscribe: the route's SSRC and its RTX stream's are new to the endpoint.
            sends = {"ssrc": spec.ssrc, "rtx_ssrc": spec.rtx_ssrc} if spec.rtx_ssrc else {"ssrc": spec.ssrc}
            taken = {ssrc for r in self.routes_to(spec.endpoint_id) for ssrc in (r.ssrc, r.rtx_ssrc) if ssrc}
            for name, ssrc in sends.items():
                if (spec.endpoint_id, ssrc) in planned or ssrc in taken:
                    raise AlreadyExists(
                        f"{field_name}.{name}: endpoint {spec.endpoint_id!r} already receives SSRC {ssrc}"
                    )
            planned.update((spec.endpoint_id, ssrc) for ssrc in sends.values())
            plan.append(spec)
        for spec in plan:
            self._routes[(spec.track_endpoint_id, spec.track_ssrc, spec.endpoint_id)] = spec
        return len(plan)


class DaemonDoubles:
    """DaemonClients over DaemonDoubles. `get` of a daemon nobody added answers like the client
    of an address nobody listens at: every call is Unavailable."""

    def __init__(self) -> None:
        self.daemons: dict[str, DaemonDouble] = {}
        self.closed = False

    def add(self, daemon_id: str, **options: Any) -> DaemonDouble:
        double = DaemonDouble(daemon_id, **options)
        self.daemons[daemon_id] = double
        return double

    def get(self, daemon_id: str, address: str) -> DaemonDouble:
        double = self.daemons.get(daemon_id)
        if double is None:
            double = DaemonDouble(daemon_id, address)
            double.down = True
            self.daemons[daemon_id] = double
        # The daemon may come back at another address: the real clients make a new channel,
        # the daemon's state is its own.
        double.address = address
        return double

    async def close(self) -> None:
        for double in self.daemons.values():
            await double.close()
        self.closed = True
