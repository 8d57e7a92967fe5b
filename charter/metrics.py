"""Prometheus metrics of a Charter server (prometheus-client): the exposition served over HTTP
on the server's own event loop, and the latency of every RPC by method and status code.

Figures that live in the server's state (endpoints, packets, conferences) are not kept twice:
a server registers a collector that reads them when /metrics is scraped, on the event loop
that owns them (never from another thread), after an optional async `refresh`."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest

log = logging.getLogger("charter.metrics")

RPC_SECONDS = Histogram(
    "charter_rpc_seconds",
    "Time to answer a unary RPC, by method and status code",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    RPC_SECONDS.labels(method.rsplit("/", 1)[-1], code).observe(seconds)


async def serve_metrics(listen: str, refresh: Callable[[], Awaitable[None]] | None = None) -> web.AppRunner:
    """GET /metrics on `listen` (host:port); the runner to clean up at shutdown."""

    async def metrics(request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    try:
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    except (OSError, ValueError) as error:
        await runner.cleanup()
        raise SystemExit(f"cannot serve metrics on {listen}: {error}") from None
    log.info("metrics serving", extra={"listen": listen})
    return runner
