"""The daemon's lease with the controller: register, renew at a third of the lease with the
current load, and register again whenever the controller no longer knows the lease (it
restarted, or the lease expired while this daemon was stalled)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from charter.controllers import controller_target
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc

log = logging.getLogger("mediad.registration")

CALL_TIMEOUT = 2.0
RETRY_MIN = 0.2
RETRY_MAX = 2.0


class Registration:
    def __init__(
        self,
        controller: str,
        daemon: pb.Daemon,
        load: Callable[[], pb.DaemonLoad],
        closed_endpoints: Callable[[], list[pb.ClosedEndpoint]] = list,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.controller = controller
        self.daemon = daemon
        self.load = load
        self.closed_endpoints = closed_endpoints
        """Endpoints the daemon closed by itself since the last call, told with the renewal."""
        self._unsent: list[pb.ClosedEndpoint] = []
        self.lease_id = ""
        self.registered = asyncio.Event()
        target, options = controller_target(controller, tls=credentials is not None)
        self._channel = (grpc.aio.secure_channel(target, credentials, options) if credentials is not None
                         else grpc.aio.insecure_channel(target, options))
        self._stub = controller_pb2_grpc.DaemonRegistryStub(self._channel)
        self._wake = asyncio.Event()
        self._stopped = False

    async def run(self) -> None:
        retry = RETRY_MIN
        while not self._stopped:
            try:
                reply = await self._stub.Register(
                    pb.RegisterRequest(daemon=self.daemon, load=self.load()), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.error(
                        "controller refused registration",
                        extra={"code": error.code().name, "details": error.details()},
                    )
                await self._pause(retry)
                retry = min(RETRY_MAX, retry * 2)
                continue
            retry = RETRY_MIN
            self.lease_id = reply.lease_id
            ttl = reply.lease_ttl.ToTimedelta().total_seconds()
            self.registered.set()
            log.info("registered with the controller", extra={"controller": self.controller, "lease_ttl": ttl})
            await self._renew(ttl)
            if self._stopped:
                return  # keep lease_id for deregister()
            self.registered.clear()
            self.lease_id = ""

    async def _renew(self, ttl: float) -> None:
        """Renew until the controller no longer knows the lease or it has surely expired."""
        expires = time.monotonic() + ttl
        while True:
            await self._pause(ttl / 3)
            if self._stopped:
                return
            self._unsent += self.closed_endpoints()
            try:
                reply = await self._stub.KeepAlive(
                    pb.KeepAliveRequest(daemon_id=self.daemon.daemon_id, lease_id=self.lease_id, load=self.load(),
                                        closed_endpoints=self._unsent),
                    timeout=min(CALL_TIMEOUT, ttl / 3),
                )
                self._unsent = []  # told; a failed renewal tells them again with the next
                ttl = reply.lease_ttl.ToTimedelta().total_seconds() or ttl
                expires = time.monotonic() + ttl
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "lease unknown to the controller: registering again", extra={"details": error.details()}
                    )
                    return
                if time.monotonic() >= expires:
                    log.warning(
                        "controller unreachable past the lease: registering again", extra={"code": error.code().name}
                    )
                    return

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by report_now() or stop()."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set.
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def stop(self) -> None:
        """End run() at its next step (also when a cancellation was lost)."""
        self._stopped = True
        self._wake.set()

    def report_now(self) -> None:
        """Send the load at once (a change placement must see, such as draining)."""
        self._wake.set()

    async def deregister(self) -> None:
        if not self.lease_id:
            return
        try:
            await self._stub.Deregister(
                pb.DeregisterRequest(daemon_id=self.daemon.daemon_id, lease_id=self.lease_id), timeout=CALL_TIMEOUT
            )
            log.info("deregistered from the controller")
        except grpc.aio.AioRpcError as error:
            # The controller may be gone first (charter up stops it first); the lease then
            # dies with it.
            log.info("not deregistered", extra={"code": error.code().name, "details": error.details()})

    async def close(self) -> None:
        await self._channel.close()
