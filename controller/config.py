"""Controller settings: each flag has an environment variable (CHARTER_CONTROLLER_*) as its
default, so containers configure by environment and people by flags."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from charter.addresses import MediaDestinations
from charter.config import add_server_arguments, default_state_dir, env
from controller.limits import Limits

ENV_PREFIX = "CHARTER_CONTROLLER_"


@dataclass(frozen=True)
class ControllerConfig:
    listen: str = "127.0.0.1:50051"
    store: str = ""
    store_key: str = ""
    """With a Redis store: the file whose key seals SRTP keys in it (shared by its controllers)."""
    """A SQLite file of the conferences, or "memory" (lost when the controller stops)."""
    metrics_listen: str = ""
    """host:port of /metrics (Prometheus); empty: none."""
    limits: Limits = Limits()
    tls: str = "mutual"
    """"mutual": daemons register on registry_listen, and are called, over TLS with
    certificates of Charter's CA (tls_dir; made there when it has none); "none": plaintext."""
    tls_dir: str = ""
    registry_listen: str = "127.0.0.1:50052"
    auth: str = "token"
    """"token": ConferenceService calls need a token (charter token); "none": anyone may call."""
    api_keys: str = ""
    """The JSON file of API keys whose tokens are accepted (made on first start)."""
    receive_networks: str = "0.0.0.0/0"
    """Where participants may ask media to be sent (never multicast, broadcast, reserved, or
    Charter's own ports)."""
    lease_ttl: float = 10.0
    daemon_timeout: float = 5.0
    reconcile_seconds: float = 30.0
    """With a shared store: how often every daemon's endpoints are checked against it."""
    grace: float = 5.0
    log_level: str = "info"
    log_format: str = "json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ControllerConfig()
    p = ENV_PREFIX
    add_server_arguments(parser, p, listen=d.listen, grace=d.grace)
    parser.add_argument(
        "--store", default=env(p, "STORE", str(default_state_dir() / "controller.sqlite3")),
        help=f"where conferences live: a SQLite file (made on first start; its keys sealed under FILE.key "
        f"beside it), redis://HOST:PORT/DB shared by several controllers, or 'memory' to keep them only while "
        f"the controller runs [{p}STORE, default %(default)s]",
    )
    parser.add_argument(
        "--store-key", default=env(p, "STORE_KEY", str(default_state_dir() / "redis-store.key")),
        help=f"with --store redis://: the key file that seals SRTP keys in Redis (made on first start); every "
        f"controller of one Redis needs a copy of the same file [{p}STORE_KEY, default %(default)s]",
    )
    parser.add_argument(
        "--metrics-listen", default=env(p, "METRICS_LISTEN", d.metrics_listen),
        help=f"host:port to serve Prometheus metrics on (/metrics); empty: none [{p}METRICS_LISTEN]",
    )
    parser.add_argument("--tls", choices=["mutual", "none"], default=env(p, "TLS", d.tls),
                        help=f"mutual: daemons register (on --registry-listen) and are called over TLS with "
                        f"certificates of Charter's CA (--tls-dir); none: plaintext [{p}TLS, default %(default)s]")
    parser.add_argument("--tls-dir", default=env(p, "TLS_DIR", str(default_state_dir() / "tls")),
                        help=f"Charter's CA (made there on first start when it has none) and the controller's "
                        f"certificate [{p}TLS_DIR, default %(default)s]")
    parser.add_argument("--registry-listen", default=env(p, "REGISTRY_LISTEN", d.registry_listen),
                        help=f"host:port where daemons register over mutual TLS [{p}REGISTRY_LISTEN, "
                        "default %(default)s]")
    parser.add_argument("--auth", choices=["token", "none"], default=env(p, "AUTH", d.auth),
                        help=f"token: ConferenceService calls need 'authorization: Bearer <token>' (charter token); "
                        f"none: anyone who reaches the port may call [{p}AUTH, default %(default)s]")
    parser.add_argument("--api-keys", default=env(p, "API_KEYS", str(default_state_dir() / "api-keys.json")),
                        help=f"JSON file of the API keys whose tokens are accepted, made with one key on first start "
                        f"[{p}API_KEYS, default %(default)s]")
    limits = Limits()
    parser.add_argument("--max-calls-per-second", type=float,
                        default=float(env(p, "MAX_CALLS_PER_SECOND", limits.calls_per_second)),
                        help=f"calls one caller may make each second (bursts of twice that) [{p}MAX_CALLS_PER_SECOND, "
                        "default %(default)s]")
    parser.add_argument("--max-watches-per-caller", type=int,
                        default=int(env(p, "MAX_WATCHES_PER_CALLER", limits.watches_per_caller)),
                        help=f"watch streams one caller may keep open [{p}MAX_WATCHES_PER_CALLER, default %(default)s]")
    parser.add_argument("--max-participants", type=int,
                        default=int(env(p, "MAX_PARTICIPANTS", limits.participants_per_conference)),
                        help=f"participants one conference takes [{p}MAX_PARTICIPANTS, default %(default)s]")
    parser.add_argument("--max-tracks", type=int,
                        default=int(env(p, "MAX_TRACKS", limits.tracks_per_participant)),
                        help=f"tracks one participant publishes at most [{p}MAX_TRACKS, default %(default)s]")
    parser.add_argument("--max-conferences-per-caller", type=int,
                        default=int(env(p, "MAX_CONFERENCES_PER_CALLER", limits.conferences_per_caller)),
                        help=f"live conferences one caller (a token's holder) may have created "
                        f"[{p}MAX_CONFERENCES_PER_CALLER, default %(default)s]")
    parser.add_argument("--max-conferences-per-daemon", type=int,
                        default=int(env(p, "MAX_CONFERENCES_PER_DAEMON", limits.conferences_per_daemon)),
                        help=f"conferences placed on one media daemon at most "
                        f"[{p}MAX_CONFERENCES_PER_DAEMON, default %(default)s]")
    parser.add_argument("--unused-conference-seconds", type=float,
                        default=float(env(p, "UNUSED_CONFERENCE_SECONDS", limits.unused_conference_seconds)),
                        help=f"a conference nobody joins (and not persistent) ends after this long "
                        f"[{p}UNUSED_CONFERENCE_SECONDS, default %(default)s]")
    parser.add_argument(
        "--receive-networks", default=env(p, "RECEIVE_NETWORKS", d.receive_networks),
        help=f"networks a participant's receive_address may be in, comma-separated (unspecified, multicast, "
        f"broadcast and reserved addresses and Charter's own ports never) [{p}RECEIVE_NETWORKS, default %(default)s]",
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=float(env(p, "LEASE_TTL", d.lease_ttl)),
        help=f"seconds a media daemon's lease lasts without renewal [{p}LEASE_TTL, default %(default)s]",
    )
    parser.add_argument(
        "--reconcile-seconds", type=float, default=float(env(p, "RECONCILE_SECONDS", d.reconcile_seconds)),
        help=f"with --store redis://: seconds between checks of every daemon's endpoints against the store, which "
        f"delete what a controller killed mid-call left half-made [{p}RECONCILE_SECONDS, default %(default)s]",
    )
    parser.add_argument(
        "--daemon-timeout", type=float, default=float(env(p, "DAEMON_TIMEOUT", d.daemon_timeout)),
        help=f"seconds to wait for a media daemon's answer [{p}DAEMON_TIMEOUT, default %(default)s]",
    )


def from_args(args: argparse.Namespace) -> ControllerConfig:
    if args.lease_ttl <= 0 or args.reconcile_seconds <= 0:
        raise SystemExit("--lease-ttl and --reconcile-seconds must be positive")
    if not args.store:
        raise SystemExit("--store needs a SQLite file, a redis:// URL or 'memory'")
    if args.max_calls_per_second <= 0 or args.max_watches_per_caller < 1 or args.max_participants < 2 \
            or args.unused_conference_seconds <= 0 or min(args.max_tracks, args.max_conferences_per_caller,
                                                          args.max_conferences_per_daemon) < 1:
        raise SystemExit("--max-calls-per-second and --unused-conference-seconds must be positive, "
                         "--max-watches-per-caller, --max-tracks and --max-conferences-per-* at least 1, "
                         "--max-participants at least 2")
    try:
        MediaDestinations.parse(args.receive_networks)
    except ValueError as error:
        raise SystemExit(f"--receive-networks {args.receive_networks!r}: {error}") from None
    return ControllerConfig(
        listen=args.listen,
        store=args.store,
        store_key=args.store_key,
        receive_networks=args.receive_networks,
        auth=args.auth,
        tls=args.tls,
        tls_dir=args.tls_dir,
        registry_listen=args.registry_listen,
        api_keys=args.api_keys,
        limits=Limits(calls_per_second=args.max_calls_per_second, watches_per_caller=args.max_watches_per_caller,
                      participants_per_conference=args.max_participants,
                      tracks_per_participant=args.max_tracks, conferences_per_caller=args.max_conferences_per_caller,
                      conferences_per_daemon=args.max_conferences_per_daemon,
                      unused_conference_seconds=args.unused_conference_seconds),
        metrics_listen=args.metrics_listen,
        lease_ttl=args.lease_ttl,
        daemon_timeout=args.daemon_timeout,
        reconcile_seconds=args.reconcile_seconds,
        grace=args.grace,
        log_level=args.log_level,
        log_format=args.log_format,
    )
