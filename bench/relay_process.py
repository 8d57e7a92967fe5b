"""What every relay process of the benchmark shares: its configuration, its sockets, and the
line protocol it speaks with the runner on stdin/stdout.

A relay process is started as `python -m bench.<module> '<json config>'`. It binds its
sockets, prints one JSON line (its publisher address, its pid), then serves until stdin
closes or SIGTERM. A line "stats" on stdin is answered with one JSON line of counters.

Config: {"suite": str, "publisher": {"key": hex, "ssrc": int},
         "subscribers": [{"key": hex, "ssrc": int, "remote": [host, port]}, ...],
         "idle_endpoints": int, "cpu": int | null, "batch_size": int | null}
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SOCKET_BUFFER = 4 * 1024 * 1024  # net.core.rmem_max / wmem_max on this machine


@dataclass
class Subscriber:
    key: bytes
    ssrc: int
    remote: tuple[str, int]


@dataclass
class RelayConfig:
    suite: str
    publisher_key: bytes
    publisher_ssrc: int
    subscribers: list[Subscriber]
    idle_endpoints: int = 0
    cpu: int | None = None
    batch_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "suite": self.suite,
            "publisher": {"key": self.publisher_key.hex(), "ssrc": self.publisher_ssrc},
            "subscribers": [
                {"key": s.key.hex(), "ssrc": s.ssrc, "remote": list(s.remote)} for s in self.subscribers
            ],
            "idle_endpoints": self.idle_endpoints,
            "cpu": self.cpu,
            "batch_size": self.batch_size,
            "extra": self.extra,
        })

    @classmethod
    def from_json(cls, text: str) -> RelayConfig:
        raw = json.loads(text)
        return cls(
            suite=raw["suite"],
            publisher_key=bytes.fromhex(raw["publisher"]["key"]),
            publisher_ssrc=int(raw["publisher"]["ssrc"]),
            subscribers=[
                Subscriber(bytes.fromhex(s["key"]), int(s["ssrc"]), (s["remote"][0], int(s["remote"][1])))
                for s in raw["subscribers"]
            ],
            idle_endpoints=int(raw.get("idle_endpoints") or 0),
            cpu=raw.get("cpu"),
            batch_size=raw.get("batch_size"),
            extra=raw.get("extra") or {},
        )


def load_config() -> RelayConfig:
    """The config from argv[1]; pins the process to its core first."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {sys.argv[0]} '<json config>'")
    config = RelayConfig.from_json(sys.argv[1])
    if config.cpu is not None:
        os.sched_setaffinity(0, {config.cpu})
    return config


def udp_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def announce(publisher: tuple[str, int], **extra: Any) -> None:
    """The one line the runner waits for: the relay is ready."""
    reply({"publisher": list(publisher), "pid": os.getpid(), **extra})


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve_stdin(stats: Callable[[], dict[str, Any]], publisher: tuple[str, int], **extra: Any) -> None:
    """For a relay on an asyncio loop: announce it, then answer each "stats" line on stdin
    with `stats()` until stdin closes or SIGTERM."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line:
            stopped.set()
        elif line.strip() == "stats":
            reply(stats())

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    announce(publisher, **extra)
    await stopped.wait()
