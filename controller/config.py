"""Controller settings: each flag has an environment variable (CHARTER_CONTROLLER_*) as its
default, so containers configure by environment and people by flags."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

ENV_PREFIX = "CHARTER_CONTROLLER_"


@dataclass(frozen=True)
class ControllerConfig:
    listen: str = "127.0.0.1:50051"
    lease_ttl: float = 10.0
    daemon_timeout: float = 5.0
    grace: float = 5.0
    log_level: str = "info"
    log_format: str = "json"


def _env(name: str, default: object) -> str:
    return os.environ.get(ENV_PREFIX + name, str(default))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ControllerConfig()
    parser.add_argument(
        "--listen", default=_env("LISTEN", d.listen),
        help=f"gRPC address to listen on, host:port [{ENV_PREFIX}LISTEN, default %(default)s]",
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=float(_env("LEASE_TTL", d.lease_ttl)),
        help=f"seconds a media daemon's lease lasts without renewal [{ENV_PREFIX}LEASE_TTL, default %(default)s]",
    )
    parser.add_argument(
        "--daemon-timeout", type=float, default=float(_env("DAEMON_TIMEOUT", d.daemon_timeout)),
        help=f"seconds to wait for a media daemon's answer [{ENV_PREFIX}DAEMON_TIMEOUT, default %(default)s]",
    )
    parser.add_argument(
        "--grace", type=float, default=float(_env("GRACE", d.grace)),
        help=f"seconds calls in flight get at shutdown [{ENV_PREFIX}GRACE, default %(default)s]",
    )
    parser.add_argument(
        "--log-level", default=_env("LOG_LEVEL", d.log_level), choices=["debug", "info", "warning", "error"],
        help=f"[{ENV_PREFIX}LOG_LEVEL, default %(default)s]",
    )
    parser.add_argument(
        "--log-format", default=_env("LOG_FORMAT", d.log_format), choices=["json", "text"],
        help=f"[{ENV_PREFIX}LOG_FORMAT, default %(default)s]",
    )


def from_args(args: argparse.Namespace) -> ControllerConfig:
    if args.lease_ttl <= 0:
        raise SystemExit("--lease-ttl must be positive")
    return ControllerConfig(
        listen=args.listen,
        lease_ttl=args.lease_ttl,
        daemon_timeout=args.daemon_timeout,
        grace=args.grace,
        log_level=args.log_level,
        log_format=args.log_format,
    )
