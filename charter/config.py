"""Settings of the servers: every flag has an environment variable as its default
(PREFIX + NAME), so containers configure by environment and people by flags."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_FORMATS = ["json", "text"]


def env(prefix: str, name: str, default: object) -> str:
    """The environment variable `prefix + name`, or `default` as text."""
    return os.environ.get(prefix + name, str(default))


def add_server_arguments(parser: argparse.ArgumentParser, prefix: str, *, listen: str, grace: float) -> None:
    """The flags every gRPC server of Charter has: where it listens, its shutdown grace, its logs."""
    parser.add_argument("--listen", default=env(prefix, "LISTEN", listen),
                        help=f"gRPC address to listen on, host:port [{prefix}LISTEN, default %(default)s]")
    parser.add_argument("--grace", type=float, default=float(env(prefix, "GRACE", grace)),
                        help=f"seconds calls in flight get at shutdown [{prefix}GRACE, default %(default)s]")
    parser.add_argument("--log-level", default=env(prefix, "LOG_LEVEL", "info"), choices=LOG_LEVELS,
                        help=f"[{prefix}LOG_LEVEL, default %(default)s]")
    parser.add_argument("--log-format", default=env(prefix, "LOG_FORMAT", "json"), choices=LOG_FORMATS,
                        help=f"[{prefix}LOG_FORMAT, default %(default)s]")


def default_state_dir() -> Path:
    """Where Charter keeps its state by default: $XDG_STATE_HOME/charter (~/.local/state/charter)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "charter"
