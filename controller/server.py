"""The controller process: ConferenceService and DaemonRegistry on one grpc.aio server, with
health, reflection, structured logs and an ordered shutdown on SIGTERM or SIGINT:
health NOT_SERVING -> watch streams end -> stop with grace -> conferences released on the
daemons (only with --store memory: that state would be lost anyway; a durable store keeps
them for the next start, and media flows on meanwhile) -> daemon channels closed."""
from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from prometheus_client import REGISTRY

from charter import pki, serving
from charter.addresses import MediaDestinations
from charter.metrics import serve_metrics
from charter.serving import Server, stop_event
from charter.tokens import ApiKeys
from charter.v1 import controller_pb2, controller_pb2_grpc
from controller import config as config_module
from controller.conferences import Conferences
from controller.config import ControllerConfig
from controller.daemons import MediaDaemonClients
from controller.events import EventHub
from controller.leases import Leases, LocalLeases, SharedLeases
from controller.limits import CallerLimits
from controller.metrics import ControllerCollector
from controller.redis_store import RedisStore
from controller.registry import Registry
from controller.service import ConferenceService, DaemonRegistryService
from controller.sqlite_store import SqliteStore, StoreError
from controller.store import ConferenceStore, MemoryStore

log = logging.getLogger("controller")

SERVICE_NAMES = [
    controller_pb2.DESCRIPTOR.services_by_name["ConferenceService"].full_name,
    controller_pb2.DESCRIPTOR.services_by_name["DaemonRegistry"].full_name,
]


def controller_identity(config: ControllerConfig) -> pki.Identity | None:
    """The controller's certificate (made, with Charter's CA if there is none, on first start)."""
    if config.tls == "none":
        log.warning("--tls none: anyone who reaches the registry may register a daemon")
        return None
    directory = Path(config.tls_dir)
    try:
        if pki.load(directory, pki.CONTROLLER) is None:
            pki.ensure_ca(directory)
        host = config.registry_listen.rpartition(":")[0] or "127.0.0.1"
        return pki.issue(directory, pki.CONTROLLER, [host])
    except (OSError, ValueError) as error:
        raise SystemExit(f"charter controller: cannot make or read its certificate in {directory}: {error}") from None


def open_api_keys(config: ControllerConfig) -> ApiKeys | None:
    if config.auth == "none":
        log.warning("--auth none: anyone who reaches the controller's port may create, join and end conferences")
        return None
    try:
        return ApiKeys(config.api_keys)
    except (OSError, ValueError) as error:
        raise SystemExit(f"charter controller: {error}") from None


async def open_store(config: ControllerConfig) -> ConferenceStore:
    if config.store == "memory":
        return MemoryStore()
    try:
        if config.store.startswith(("redis://", "rediss://", "unix://")):
            return await RedisStore.connect(config.store, config.store_key)
        return SqliteStore(config.store)
    except StoreError as error:
        raise SystemExit(f"charter controller: {error}") from None


async def serve(config: ControllerConfig) -> None:
    registry = Registry(config.lease_ttl)
    identity = controller_identity(config)
    daemons = MediaDaemonClients(config.daemon_timeout,
                                 pki.channel_credentials(identity) if identity is not None else None)
    store = await open_store(config)
    hub = EventHub()
    shared: list[asyncio.Task[None]] = []
    leases: Leases = LocalLeases(registry)
    if isinstance(store, RedisStore):
        # Events other controllers make reach this one's watchers (gaps are read back), and
        # the daemons' leases are Redis keys every controller mirrors.
        hub.fetch = store.events_after
        shared_leases = SharedLeases(store.redis, registry, config.store)
        await shared_leases.refresh()
        leases = shared_leases
        shared = [asyncio.create_task(store.relay(hub)), asyncio.create_task(shared_leases.run())]
    conferences = Conferences(store, registry, daemons, hub, limits=config.limits)
    if isinstance(leases, SharedLeases):
        conferences.refresh_leases = leases.refresh
    conferences.follow(registry)

    server = Server(config.listen, SERVICE_NAMES, max_message_bytes=config.limits.max_message_bytes)
    host, _, listen_port = config.listen.rpartition(":")
    api_keys = open_api_keys(config)
    service = ConferenceService(conferences, MediaDestinations.parse(config.receive_networks),
                                (host, int(listen_port)) if listen_port.isdigit() else None,
                                CallerLimits(config.limits), api_keys)
    server.add(controller_pb2_grpc.add_ConferenceServiceServicer_to_server, service)
    registry_service = DaemonRegistryService(registry, conferences, require_certificates=identity is not None,
                                             api_keys=api_keys, leases=leases)
    server.add(controller_pb2_grpc.add_DaemonRegistryServicer_to_server, registry_service)
    if identity is not None:
        # Daemons register here, over TLS, each with its own certificate of Charter's CA.
        server.also_listen(config.registry_listen, pki.server_credentials(identity))
    stop = stop_event()
    port = await server.start()
    metrics = None
    if config.metrics_listen:
        collector = ControllerCollector(conferences)
        REGISTRY.register(collector)
        metrics = await serve_metrics(config.metrics_listen, collector.refresh)
    sweeper = asyncio.create_task(registry.sweep())
    conferences.in_background(conferences.end_unused())
    if isinstance(store, RedisStore):
        conferences.in_background(conferences.reconcile_every(config.reconcile_seconds))
    if store.durable:
        # Conferences of daemons that died while this controller was down: no lease of theirs
        # will expire here, so they are moved once the others had a lease's time to register.
        conferences.in_background(conferences.adopt_orphans(after=config.lease_ttl + 1.0))
    log.info("controller serving", extra={"listen": config.listen, "port": port, "lease_ttl": config.lease_ttl,
                                          "store": config.store})

    await stop.wait()
    await server.stop_serving()
    await conferences.close_watches()
    await server.stop(config.grace)
    await registry_service.close()
    await conferences.close_background()
    await conferences.release_all()
    sweeper.cancel()
    await asyncio.gather(sweeper, return_exceptions=True)
    await daemons.close()
    for task in shared:
        task.cancel()
    await asyncio.gather(*shared, return_exceptions=True)
    store.close()
    if isinstance(store, RedisStore):
        await store.aclose()
    if metrics is not None:
        await metrics.cleanup()
    log.info("controller stopped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_module.from_args(args)
    return serving.run("controller", config.log_level, config.log_format, serve(config))


def main(argv: list[str] | None = None) -> int:
    return serving.main(
        "charter controller", "Charter's controller: the gRPC API of conferences", add_arguments, run, argv
    )
