"""Media daemon settings: each flag has an environment variable (CHARTER_MEDIAD_*) as its
default."""
from __future__ import annotations

import argparse
import ipaddress
import re
import socket
from dataclasses import dataclass

from charter.config import add_server_arguments, default_state_dir, env
from mediad.proof import ReceiverProof

ENV_PREFIX = "CHARTER_MEDIAD_"


@dataclass(frozen=True)
class MediadConfig:
    listen: str = "127.0.0.1:8443"
    daemon_id: str = ""
    advertise: str = ""
    """gRPC address the controller reaches this daemon at; default: the listen address."""
    controller: str = "127.0.0.1:50051"
    """Empty: run alone, registered nowhere."""
    media_ip: str = "127.0.0.1"
    port_first: int = 16384
    port_last: int = 32767
    capacity: int = 0
    """Endpoints taken at most; 0: one per port of the range."""
    region: str = ""
    """Where it runs, for placement near participants (JoinRequest.region); empty: unnamed."""
    drain_timeout: float = 10.0
    metrics_listen: str = ""
    """host:port of /metrics (Prometheus); empty: none."""
    consent_timeout: float = 30.0
    """A WebRTC endpoint without an ICE check for this long is closed (RFC 7675: 30 s)."""
    publish_bitrate: int = 2_500_000
    """Bits per second a browser may send per video track (its REMB); 0: no REMB."""
    unproven_budget: int = 500
    """Packets a receiver is sent before it proves it wants them (mediad/proof.py)."""
    trusted_receivers: str = "127.0.0.0/8"
    """Networks whose receivers need no proof; empty: none."""
    tls: str = "mutual"
    """"mutual": the API (listen) and the registration use TLS with certificates of Charter's
    CA, and the API answers the controller only; "none": plaintext, anyone who reaches it."""
    tls_dir: str = ""
    """ca.pem, DAEMON_ID.pem and DAEMON_ID-key.pem."""
    health_listen: str = ""
    """host:port of grpc.health.v1 in plaintext (load balancers carry no client certificate)."""
    grace: float = 5.0
    log_level: str = "info"
    log_format: str = "json"

    @property
    def proof(self) -> ReceiverProof:
        """Who must prove it wants the media, and what it gets until then."""
        return ReceiverProof.parse(self.unproven_budget, self.trusted_receivers)


def parse_ports(text: str) -> tuple[int, int]:
    try:
        first_text, last_text = text.split("-")
        first, last = int(first_text), int(last_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port range such as 16384-32767") from None
    if not 0 < first <= last <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not within 1-65535")
    return first, last


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = MediadConfig()
    p = ENV_PREFIX
    add_server_arguments(parser, p, listen=d.listen, grace=d.grace)
    parser.add_argument("--daemon-id", default=env(p, "DAEMON_ID", d.daemon_id),
                        help=f"stable id of this daemon [{p}DAEMON_ID, default mediad-<hostname>-<grpc port>]")
    parser.add_argument("--advertise", default=env(p, "ADVERTISE", d.advertise),
                        help=f"gRPC host:port the controller calls [{p}ADVERTISE, default the listen address]")
    parser.add_argument("--controller", default=env(p, "CONTROLLER", d.controller),
                        help=f"controller to register with, host:port, or several controllers of one store, "
                        f"IP:port,IP:port (tried in turn); empty: none "
                        f"[{p}CONTROLLER, default %(default)s]")
    parser.add_argument("--media-ip", default=env(p, "MEDIA_IP", d.media_ip),
                        help=f"IPv4 address media ports bind to and are reached at [{p}MEDIA_IP, default %(default)s]")
    parser.add_argument("--ports", type=parse_ports, default=env(p, "PORTS", f"{d.port_first}-{d.port_last}"),
                        help=f"UDP port range of endpoints, first-last [{p}PORTS, default %(default)s]")
    parser.add_argument("--capacity", type=int, default=int(env(p, "CAPACITY", d.capacity)),
                        help=f"endpoints taken at most; 0: one per port [{p}CAPACITY, default %(default)s]")
    parser.add_argument("--region", default=env(p, "REGION", d.region),
                        help=f"where this daemon runs (a region, zone or site name): participants that join with "
                        f"this region are placed here first [{p}REGION, default: none]")
    parser.add_argument("--drain-timeout", type=float, default=float(env(p, "DRAIN_TIMEOUT", d.drain_timeout)),
                        help=f"seconds a shutdown waits for endpoints to be released "
                        f"[{p}DRAIN_TIMEOUT, default %(default)s]")
    parser.add_argument("--tls", choices=["mutual", "none"], default=env(p, "TLS", d.tls),
                        help=f"mutual: the API answers only the controller, and the daemon registers, over TLS with "
                        f"certificates of Charter's CA (--tls-dir); none: plaintext [{p}TLS, default %(default)s]")
    parser.add_argument("--tls-dir", default=env(p, "TLS_DIR", str(default_state_dir() / "tls")),
                        help=f"ca.pem and this daemon's certificate and key (DAEMON_ID.pem, DAEMON_ID-key.pem; "
                        f"charter cert makes them) [{p}TLS_DIR, default %(default)s]")
    parser.add_argument("--health-listen", default=env(p, "HEALTH_LISTEN", d.health_listen),
                        help=f"host:port of grpc.health.v1 in plaintext, for load balancers; empty: none "
                        f"[{p}HEALTH_LISTEN]")
    parser.add_argument("--metrics-listen", default=env(p, "METRICS_LISTEN", d.metrics_listen),
                        help=f"host:port to serve Prometheus metrics on (/metrics); empty: none [{p}METRICS_LISTEN]")
    parser.add_argument("--publish-bitrate", type=int,
                        default=int(env(p, "PUBLISH_BITRATE", d.publish_bitrate)),
                        help=f"bits/s a browser may send per video track, told to it as REMB; 0: none "
                        f"[{p}PUBLISH_BITRATE, default %(default)s]")
    parser.add_argument("--unproven-budget", type=int,
                        default=int(env(p, "UNPROVEN_BUDGET", d.unproven_budget)),
                        help=f"packets a receiver outside --trusted-receivers is sent until it proves it wants "
                        f"them, by sending a packet with its key from its address [{p}UNPROVEN_BUDGET, "
                        f"default %(default)s]")
    parser.add_argument("--trusted-receivers", default=env(p, "TRUSTED_RECEIVERS", d.trusted_receivers),
                        help=f"comma-separated networks whose receivers get media without that proof (recorders "
                        f"and tools that only listen); empty: none [{p}TRUSTED_RECEIVERS, default %(default)s]")
    parser.add_argument("--consent-timeout", type=float, default=float(env(p, "CONSENT_TIMEOUT", d.consent_timeout)),
                        help=f"seconds without an ICE check after which a browser's endpoint is closed "
                        f"(RFC 7675) [{p}CONSENT_TIMEOUT, default %(default)s]")


def from_args(args: argparse.Namespace) -> MediadConfig:
    ports = args.ports if isinstance(args.ports, tuple) else parse_ports(args.ports)
    try:
        if ipaddress.ip_address(args.media_ip).version != 4:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--media-ip {args.media_ip!r} is not an IPv4 address") from None
    if args.publish_bitrate < 0:
        raise SystemExit("--publish-bitrate must be 0 or more")
    if args.consent_timeout <= 0:
        raise SystemExit("--consent-timeout must be more than 0")
    if args.capacity < 0:
        raise SystemExit("--capacity must be 0 or more")
    if args.region and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.region):
        raise SystemExit(f"--region {args.region[:80]!r}: use 1-64 letters, digits, '.', '_' or '-'")
    try:
        ReceiverProof.parse(args.unproven_budget, args.trusted_receivers)
    except ValueError as error:
        raise SystemExit(f"--unproven-budget/--trusted-receivers: {error}") from None
    host, _, port = args.listen.rpartition(":")
    advertise = args.advertise or (f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}")
    daemon_id = args.daemon_id or f"mediad-{socket.gethostname()}-{port}"
    return MediadConfig(
        listen=args.listen,
        daemon_id=daemon_id,
        advertise=advertise,
        controller=args.controller,
        media_ip=args.media_ip,
        port_first=ports[0],
        port_last=ports[1],
        capacity=args.capacity,
        region=args.region,
        drain_timeout=args.drain_timeout,
        consent_timeout=args.consent_timeout,
        publish_bitrate=args.publish_bitrate,
        unproven_budget=args.unproven_budget,
        trusted_receivers=args.trusted_receivers,
        metrics_listen=args.metrics_listen,
        tls=args.tls,
        tls_dir=args.tls_dir,
        health_listen=args.health_listen,
        grace=args.grace,
        log_level=args.log_level,
        log_format=args.log_format,
    )
