"""What the controller and the media daemon share as gRPC servers: health, reflection, the
status mapping, signals and the ordered shutdown (NOT_SERVING, then stop with grace)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from charter import logs
from charter.errors import StatusInterceptor
from charter.metrics import observe_rpc

log = logging.getLogger("charter.serving")

# Keepalive pings let both sides notice a dead peer on idle long-lived streams (WatchConference).
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class Server:
    """A grpc.aio server with grpc.health.v1, server reflection and StatusInterceptor."""

    def __init__(
        self,
        listen: str,
        service_names: Sequence[str],
        *,
        max_message_bytes: int = 4 << 20,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.listen = listen
        self.credentials = credentials
        """TLS of the port (None: plaintext)."""
        self.extra_ports: list[tuple[str, grpc.ServerCredentials | None]] = []
        self.service_names = list(service_names)
        self.health = health.aio.HealthServicer()
        # A larger request is refused (RESOURCE_EXHAUSTED) before it is read into memory.
        options = [*SERVER_OPTIONS, ("grpc.max_receive_message_length", max_message_bytes)]
        self.server = grpc.aio.server(interceptors=[*interceptors, StatusInterceptor(observe=observe_rpc)],
                                      options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0

    def add(self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> None:
        add_to_server(servicer, self.server)

    def also_listen(self, listen: str, credentials: grpc.ServerCredentials | None) -> None:
        """The same services on another port (before start)."""
        self.extra_ports.append((listen, credentials))

    async def start(self) -> int:
        self.port = self._add_port(self.listen, self.credentials)
        for listen, credentials in self.extra_ports:
            self._add_port(listen, credentials)
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def _add_port(self, listen: str, credentials: grpc.ServerCredentials | None) -> int:
        if credentials is None:
            port = self.server.add_insecure_port(listen)
        else:
            port = self.server.add_secure_port(listen, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        return port

    async def serve_health(self, listen: str) -> grpc.aio.Server:
        """Health alone, in plaintext, on another port: for load balancers' checks, which
        carry no client certificate (the main port may ask for one). Stop it with stop(grace)."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if server.add_insecure_port(listen) == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        return server

    async def stop_serving(self) -> None:
        """Tell load balancers to go elsewhere; calls in flight and new ones still work."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Refuse new calls and give those in flight `grace` seconds."""
        await self.server.stop(grace)


def stop_event() -> asyncio.Event:
    """Set on the first SIGTERM or SIGINT; a second one exits at once."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def on_signal(signum: int) -> None:
        if event.is_set():
            log.warning("second signal: exiting now", extra={"signal": signal.Signals(signum).name})
            raise SystemExit(1)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        event.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return event


async def wait_serving(address: str, timeout: float = 30.0,
                       credentials: grpc.ChannelCredentials | None = None) -> None:
    """Poll grpc.health.v1 at `address` (over TLS with `credentials`) until it answers
    SERVING; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    channel = (grpc.aio.secure_channel(address, credentials) if credentials is not None
               else grpc.aio.insecure_channel(address))
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        # types-grpcio-health-checking declares HealthStub without its methods.
        check: grpc.aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
        check = stub.Check  # type: ignore[attr-defined]
        while time.monotonic() < deadline:
            try:
                reply = await check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as error:
                last = error.code().name
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{address} did not report SERVING within {timeout:.0f} s (last: {last})")


def run(service: str, log_level: str, log_format: str, serve: Coroutine[Any, Any, None]) -> int:
    """Run a server process: its logs set up, `serve` on a uvloop event loop until it returns."""
    logs.setup(service, log_level, log_format)
    uvloop.run(serve)
    return 0


def main(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run_args: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """`python -m controller` / `python -m mediad`: the same flags as `charter controller|mediad`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run_args(parser.parse_args(argv))
