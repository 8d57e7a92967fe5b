"""The controller's client of the media daemons (the MediaDaemon service), one channel per
daemon. Failures come back as the controller's typed errors."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from charter.endpoints import DtlsFingerprint, EndpointSpec
from charter.errors import AlreadyExists, CharterError, Internal, NotFound, ResourceExhausted, Unavailable
from charter.subscriptions import SubscriptionSpec
from charter.v1 import mediad_pb2, mediad_pb2_grpc

log = logging.getLogger("controller.daemons")

CALL_TIMEOUT = 5.0


class DaemonClient(Protocol):
    """What the controller asks of one media daemon. Failures are the controller's typed
    errors (Unavailable when the daemon does not answer)."""

    daemon_id: str
    address: str

    async def create_endpoint(self, spec: EndpointSpec, *, replace: bool = False) -> int:
        """Make the endpoint with its tracks and routes (all or nothing); its UDP port.

        With `replace`, an endpoint of that id with other parameters (left over by an
        earlier attempt whose answer was lost) is deleted and made again; the caller knows
        that no participant owns it."""
        ...

    async def create_webrtc_endpoint(self, spec: EndpointSpec, *, replace: bool = False) -> tuple[int, DtlsFingerprint]:
        """As create_endpoint, for an endpoint with `spec.webrtc`: its UDP port and the
        daemon's DTLS certificate fingerprint (for the SDP answer)."""
        ...

    async def update_subscriptions(self, specs: Sequence[SubscriptionSpec]) -> int:
        """Pause or resume existing routes (all or none); how many changed."""
        ...

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        """Close it; False when it did not exist."""
        ...

    async def remove_tracks(self, endpoint_id: str, ssrcs: Sequence[int]) -> int:
        """Remove the endpoint's tracks with these SSRCs and the routes from them; how many it
        held (a retry removes 0). NotFound when the endpoint does not exist."""
        ...

    async def release_conference(self, conference_id: str) -> int:
        """Close every endpoint of the conference; how many there were."""
        ...

    async def list_endpoints(self, conference_id: str = "") -> dict[str, str]:
        """Endpoint id -> conference id of what the daemon holds (of one conference, or all)."""
        ...

    async def close(self) -> None: ...


class DaemonClients(Protocol):
    """One client per registered daemon."""

    def get(self, daemon_id: str, address: str) -> DaemonClient: ...
    async def close(self) -> None: ...


class MediaDaemonClient:
    """A DaemonClient over the daemon's gRPC service (charter.v1.MediaDaemon)."""

    def __init__(
        self, daemon_id: str, address: str, timeout: float = CALL_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.daemon_id = daemon_id
        self.address = address
        self.timeout = timeout
        self._channel = (grpc.aio.secure_channel(address, credentials) if credentials is not None
                         else grpc.aio.insecure_channel(address))
        self._stub = mediad_pb2_grpc.MediaDaemonStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def create_endpoint(self, spec: EndpointSpec, *, replace: bool = False) -> int:
        return int((await self._create(spec, replace)).local_address.port)

    async def create_webrtc_endpoint(self, spec: EndpointSpec, *, replace: bool = False) -> tuple[int, DtlsFingerprint]:
        reply = await self._create(spec, replace)
        fingerprint = reply.dtls_fingerprint
        if not fingerprint.value:
            raise Internal(f"media daemon {self.daemon_id} made no WebRTC endpoint (no DTLS fingerprint): upgrade it")
        return int(reply.local_address.port), DtlsFingerprint(fingerprint.algorithm, fingerprint.value)

    async def _create(self, spec: EndpointSpec, replace: bool) -> mediad_pb2.Endpoint:
        request = spec.to_proto()
        try:
            reply: mediad_pb2.Endpoint = await self._call("CreateEndpoint", request)
        except AlreadyExists:
            if not replace:
                raise
            await self.delete_endpoint(spec.endpoint_id)
            reply = await self._call("CreateEndpoint", request)
        return reply

    async def update_subscriptions(self, specs: Sequence[SubscriptionSpec]) -> int:
        request = mediad_pb2.UpdateSubscriptionsRequest(subscriptions=[s.to_proto() for s in specs])
        reply = await self._call("UpdateSubscriptions", request)
        return int(reply.changed)

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        request = mediad_pb2.DeleteEndpointRequest(endpoint_id=endpoint_id, allow_missing=True)
        reply = await self._call("DeleteEndpoint", request)
        return bool(reply.deleted)

    async def remove_tracks(self, endpoint_id: str, ssrcs: Sequence[int]) -> int:
        request = mediad_pb2.RemoveTracksRequest(endpoint_id=endpoint_id, ssrcs=ssrcs)
        reply = await self._call("RemoveTracks", request)
        return int(reply.removed)

    async def release_conference(self, conference_id: str) -> int:
        reply = await self._call("ReleaseConference", mediad_pb2.ReleaseConferenceRequest(conference_id=conference_id))
        return int(reply.endpoints_deleted)

    async def list_endpoints(self, conference_id: str = "") -> dict[str, str]:
        reply = await self._call("ListEndpoints", mediad_pb2.ListEndpointsRequest(conference_id=conference_id))
        return {e.endpoint_id: e.conference_id for e in reply.endpoints}

    async def _call(self, method: str, request: object) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise _translate(self.daemon_id, method, error) from None


def _translate(daemon_id: str, method: str, error: grpc.aio.AioRpcError) -> CharterError:
    code, details = error.code(), error.details() or ""
    log.warning(
        "media daemon call failed",
        extra={"daemon_id": daemon_id, "method": method, "code": code.name, "details": details},
    )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return Unavailable(f"media daemon {daemon_id} did not answer {method} ({code.name}): try again")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"media daemon {daemon_id} has no room: {details}")
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(f"media daemon {daemon_id}: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return Unavailable(f"media daemon {daemon_id} takes no new endpoints: {details}")
    if code == grpc.StatusCode.NOT_FOUND and method in ("UpdateSubscriptions", "RemoveTracks"):
        return NotFound(f"media daemon {daemon_id}: {details}")
    return Internal(f"media daemon {daemon_id} refused {method} ({code.name}): {details}")


class MediaDaemonClients:
    """DaemonClients over gRPC: one client per registered daemon, replaced when its address changes."""

    def __init__(self, timeout: float = CALL_TIMEOUT, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.timeout = timeout
        self.credentials = credentials
        """The controller's TLS identity towards the daemons (None: plaintext)."""
        self._clients: dict[str, MediaDaemonClient] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, daemon_id: str, address: str) -> MediaDaemonClient:
        client = self._clients.get(daemon_id)
        if client is None or client.address != address:
            if client is not None:
                task = asyncio.get_running_loop().create_task(client.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            client = MediaDaemonClient(daemon_id, address, self.timeout, self.credentials)
            self._clients[daemon_id] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        # Channels of replaced clients still closing: finish them before the loop stops.
        await asyncio.gather(*self._closing, return_exceptions=True)

