"""Child processes and free ports: how `charter up`, the demo, the tests and the benchmarks
start servers and stop them in order (SIGTERM, then SIGKILL past a timeout)."""
from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import subprocess
from collections.abc import Sequence
from typing import IO

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen's preexec_fn: the child receives SIGTERM if its parent dies (Linux prctl
    PR_SET_PDEATHSIG), so no server outlives what started it."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start(
    argv: Sequence[str], *, output: IO[bytes] | int | None = None, new_session: bool = True
) -> subprocess.Popen[bytes]:
    """A child that dies with this process; in its own session by default, so a Ctrl-C on the
    terminal reaches the parent only, which then stops its children in order.

    The preexec_fn makes Python fork (not posix_spawn): start children before this process
    opens gRPC channels, whose fork handlers misbehave in a forked child."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        start_new_session=new_session,
        preexec_fn=die_with_parent,
    )


def stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (each server's ordered shutdown), then SIGKILL after `timeout`; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def stop_async(process: subprocess.Popen[bytes], timeout: float) -> int:
    """`stop` without blocking the event loop."""
    return await asyncio.to_thread(stop, process, timeout)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM, ip: str = "127.0.0.1") -> int:
    """A port the kernel picks as free now (TCP by default) on `ip`."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])
