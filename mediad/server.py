"""The media daemon process: the forwarding core and the MediaDaemon gRPC service on one
uvloop event loop, the lease with the controller, and an ordered shutdown on SIGTERM or SIGINT:
health NOT_SERVING -> draining (told to the controller at once) -> wait for the endpoints to
be released, at most --drain-timeout -> deregister -> stop with grace -> close endpoints."""
from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path

from prometheus_client import REGISTRY

from charter import pki, serving
from charter.metrics import serve_metrics
from charter.serving import Server, stop_event
from charter.v1 import controller_pb2 as pb
from charter.v1 import media_pb2, mediad_pb2, mediad_pb2_grpc
from mediad import _forward
from mediad import config as config_module
from mediad.config import MediadConfig
from mediad.media import Media
from mediad.metrics import MediadCollector
from mediad.ports import PortAllocator
from mediad.publisher_reports import PublisherReports
from mediad.registration import Registration
from mediad.service import MediaDaemonService

log = logging.getLogger("mediad")

SERVICE_NAME = mediad_pb2.DESCRIPTOR.services_by_name["MediaDaemon"].full_name


class LoadMeter:
    """The load reported with each lease renewal: counts now, packet rates since last time."""

    def __init__(self, media: Media) -> None:
        self.media = media
        self._last = (time.monotonic(), 0, 0)

    def __call__(self) -> pb.DaemonLoad:
        endpoints, tracks, subscriptions = self.media.counts()
        totals = self.media.forwarder.totals()
        now = time.monotonic()
        then, packets_in, packets_out = self._last
        elapsed = max(now - then, 1e-3)
        rate_in = max(0, totals.packets_in - packets_in) / elapsed
        rate_out = max(0, totals.packets_out - packets_out) / elapsed
        self._last = (now, totals.packets_in, totals.packets_out)
        return pb.DaemonLoad(
            endpoints=endpoints,
            tracks=tracks,
            subscriptions=subscriptions,
            packets_in_per_second=rate_in,
            packets_out_per_second=rate_out,
            draining=self.media.draining,
        )


async def serve(config: MediadConfig) -> None:
    # grpc.aio and uvloop get along (grpcio 1.85, uvloop 0.23): sequential unary calls to a
    # grpc.aio server measured 1.6k-2.2k/s on uvloop against 1.7k-1.9k/s on the default loop
    # on this 2-core machine, so gRPC costs nothing by sharing the loop the forwarding core
    # needs uvloop for (its socket readiness callbacks).
    forwarder = _forward.Forwarder(asyncio.get_running_loop())
    media = Media(forwarder, PortAllocator(config.media_ip, config.port_first, config.port_last), config.capacity,
                  consent_timeout=config.consent_timeout, proof=config.proof)
    consent = asyncio.create_task(media.webrtc.watch_consent())
    reports = asyncio.create_task(PublisherReports(media.rtcp, config.publish_bitrate).run(media.list_endpoints))
    identity = pki.require(Path(config.tls_dir), config.daemon_id) if config.tls == "mutual" else None
    server = Server(
        config.listen, [SERVICE_NAME],
        credentials=pki.server_credentials(identity) if identity is not None else None,
        # Only the controller drives a daemon (not another daemon, though its certificate is of the same CA).
        interceptors=[pki.PeerCheck(f"/{SERVICE_NAME}/", {pki.CONTROLLER})] if identity is not None else [],
    )
    server.add(mediad_pb2_grpc.add_MediaDaemonServicer_to_server, MediaDaemonService(media, config.media_ip))
    stop = stop_event()
    port = await server.start()
    health = await server.serve_health(config.health_listen) if config.health_listen else None
    metrics = None
    if config.metrics_listen:
        REGISTRY.register(MediadCollector(media))
        metrics = await serve_metrics(config.metrics_listen)
    log.info(
        "media daemon serving",
        extra={
            "daemon_id": config.daemon_id,
            "listen": config.listen,
            "port": port,
            "media_ip": config.media_ip,
            "ports": f"{config.port_first}-{config.port_last}",
            "capacity": media.capacity,
            "region": config.region,
        },
    )

    registration = None
    registering = None
    if config.controller:
        daemon = pb.Daemon(
            daemon_id=config.daemon_id,
            grpc_address=config.advertise,
            media_ip=config.media_ip,
            port_range=media_pb2.PortRange(first=config.port_first, last=config.port_last),
            capacity=media.capacity,
            region=config.region,
        )
        registration = Registration(config.controller, daemon, LoadMeter(media), media.take_closed_endpoints,
                                    pki.channel_credentials(identity) if identity is not None else None)
        media.on_closed = registration.report_now
        registering = asyncio.create_task(registration.run())

    await stop.wait()
    await server.stop_serving()
    media.drain()
    if registration is not None:
        registration.report_now()
    deadline = time.monotonic() + config.drain_timeout
    while media.counts()[0] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = media.counts()[0]
    if left:
        log.warning("drain timed out: closing endpoints still open", extra={"endpoints": left})
    if registration is not None and registering is not None:
        registration.stop()
        registering.cancel()
        await asyncio.gather(registering, return_exceptions=True)
        await registration.deregister()
        await registration.close()
    await server.stop(config.grace)
    if health is not None:
        await health.stop(0)
    consent.cancel()
    reports.cancel()
    if metrics is not None:
        await metrics.cleanup()
    media.close()
    log.info("media daemon stopped", extra={"daemon_id": config.daemon_id})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_module.from_args(args)
    return serving.run("mediad", config.log_level, config.log_format, serve(config))


def main(argv: list[str] | None = None) -> int:
    return serving.main("charter mediad", "Charter's media daemon: the SRTP forwarding unit", add_arguments, run, argv)
