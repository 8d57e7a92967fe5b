"""Test-side processes and ports: real controller and media daemon processes started as a
user starts them (`python -m controller`, `python -m mediad`) on free ports, ready once
grpc.health.v1 answers SERVING, stopped with SIGTERM and expected to exit 0; and the port
checks only tests need (blocks of ports free for a daemon, whether a port is bound).

Children start here with their output in a log file (start_logged) and stop through
charter.processes.stop (SIGTERM, then SIGKILL); a single free port is
charter.processes.free_port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charter import processes
from charter.endpoints import EndpointSpec
from charter.processes import free_port
from charter.tokens import ApiKeys, Grant
from charter.v1 import controller_pb2, controller_pb2_grpc, mediad_pb2_grpc
from controller.daemons import MediaDaemonClient
from waits import wait_until

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def port_free(port: int, kind: socket.SocketKind = socket.SOCK_DGRAM, ip: str = "127.0.0.1") -> bool:
    """True when `port` (UDP by default) can be bound on `ip` now."""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
        return True


def udp_port_free(port: int, ip: str = "127.0.0.1") -> bool:
    return port_free(port, socket.SOCK_DGRAM, ip)


def udp_port_bound(port: int) -> bool:
    """True when some socket of this machine is bound to UDP `port` (read from /proc, so
    that asking never holds the port a process is about to bind)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    local = line.split()[1]  # "0100007F:9C40"
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def free_block(count: int, kind: socket.SocketKind, low: int, high: int, align: int = 1) -> int:
    """The first of `count` consecutive ports free now in [low, high), the first a multiple of `align`."""
    for _ in range(200):
        first = random.randrange(low, high - count) // align * align
        if all(port_free(p, kind) for p in range(first, first + count)):
            return first
    name = "TCP" if kind == socket.SOCK_STREAM else "UDP"
    raise RuntimeError(f"no {count} consecutive free {name} ports in {low}-{high}")


def free_tcp_ports(count: int, low: int = 40000, high: int = 60000) -> int:
    """The first of `count` consecutive TCP ports free now."""
    return free_block(count, socket.SOCK_STREAM, low, high)


def free_udp_range(size: int, low: int = 20000, high: int = 32000) -> tuple[int, int]:
    """A block of `size` consecutive UDP ports free now, below the ephemeral range."""
    first = free_block(size, socket.SOCK_DGRAM, low, high, align=size)
    return first, first + size - 1


def start_logged(
    argv: Sequence[str], log_path: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A child with its stdout and stderr in `log_path` (and no stdin).

    Not charter.processes.start: its preexec_fn (die_with_parent) makes Popen fork() rather
    than vfork(), and fork() runs gRPC's fork handlers in this process, whose gRPC is live
    (channels to the servers under test); the child can then abort before it execs (seen:
    an ffmpeg sender exiting -6 with "epoll_wait error: Bad file descriptor" in its log)."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before serving")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{address} did not report SERVING within {timeout:.0f} s")


@dataclass
class Process:
    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; the exit code (killed after `timeout`: then an error)."""
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stalled (SIGSTOP) process hears SIGTERM too
        asked = time.monotonic()
        code = processes.stop(self.process, timeout)
        if code == -signal.SIGKILL and time.monotonic() - asked >= timeout:
            raise AssertionError(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM:\n{self.log()[-3000:]}")
        return code


def _start(name: str, argv: list[str], address: str, log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    process = start_logged([sys.executable, *argv], log_path, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    started = Process(name, address, process, log_path)
    try:
        wait_serving(address, process)
    except BaseException:
        process.kill()
        process.wait()
        raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')[-3000:]}") from None
    return started


def start_controller(
    log_dir: Path,
    *,
    lease_ttl: float = 10.0,
    port: int | None = None,
    store: str | None = None,
    options: Sequence[str] = (),
) -> Process:
    """A controller; its conferences in `store`, a SQLite file, or in memory (the default:
    stopping it ends its conferences and releases their endpoints). It asks for no token
    (--auth none) and speaks plaintext to its daemons (--tls none) unless `options` say
    otherwise: tests/test_auth.py tests tokens, tests/test_tls.py mutual TLS."""
    address = f"127.0.0.1:{port or free_port()}"
    store = store or "memory"
    return _start(
        "controller",
        ["-m", "controller", "--listen", address, "--store", store, "--lease-ttl", str(lease_ttl), "--grace", "2",
         "--auth", "none", "--tls", "none", "--api-keys", str(log_dir / "api-keys.json"), *options],
        address,
        log_dir,
    )


def start_mediad(
    log_dir: Path,
    controller: str,
    daemon_id: str,
    ports: tuple[int, int],
    *,
    capacity: int = 0,
    drain_timeout: float = 10.0,
    options: Sequence[str] = (),
) -> Process:
    address = f"127.0.0.1:{free_port()}"
    return _start(
        daemon_id,
        [
            "-m",
            "mediad",
            "--listen",
            address,
            "--daemon-id",
            daemon_id,
            "--controller",
            controller,
            "--media-ip",
            "127.0.0.1",
            "--ports",
            f"{ports[0]}-{ports[1]}",
            "--capacity",
            str(capacity),
            "--drain-timeout",
            str(drain_timeout),
            "--grace",
            "2",
            "--tls",
            "none",
            *options,
        ],
        address,
        log_dir,
    )


def conference_stub(p: Process) -> controller_pb2_grpc.ConferenceServiceStub:
    return controller_pb2_grpc.ConferenceServiceStub(p.channel)


def registry_stub(p: Process) -> controller_pb2_grpc.DaemonRegistryStub:
    return controller_pb2_grpc.DaemonRegistryStub(p.channel)


def mediad_stub(p: Process) -> mediad_pb2_grpc.MediaDaemonStub:
    return mediad_pb2_grpc.MediaDaemonStub(p.channel)


def operator_metadata(api_keys: Path) -> tuple[tuple[str, str], ...]:
    """A token to read everything (ListDaemons under --auth token), from the controller's
    API keys file; none while it has none."""
    if not api_keys.exists():
        return ()
    return (("authorization", "Bearer " + ApiKeys(api_keys).token(Grant("*", ("read",)), ttl=600)),)


def live_daemons(controller: Process) -> set[str]:
    reply = registry_stub(controller).ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=5,
                                                  metadata=operator_metadata(controller.log_path.parent /
                                                                             "api-keys.json"))
    return {d.daemon.daemon_id for d in reply.daemons}


@dataclass
class Cluster:
    controller: Process
    daemons: list[Process]
    port_ranges: dict[str, tuple[int, int]]

    def daemon(self, daemon_id: str) -> Process:
        return next(d for d in self.daemons if d.name == daemon_id)

    def all_ports(self) -> list[int]:
        return [p for first, last in self.port_ranges.values() for p in range(first, last + 1)]

    def stop(self) -> dict[str, int]:
        """Stop the controller first (it releases every conference), then the daemons."""
        codes = {self.controller.name: self.controller.stop()}
        for d in self.daemons:
            codes[d.name] = d.stop()
        return codes


@contextlib.contextmanager
def cluster(
    log_dir: Path,
    daemons: int = 2,
    *,
    ports_per_daemon: int = 20,
    lease_ttl: float = 10.0,
    capacity: int = 0,
    check_exit: bool = True,
    store: str | None = None,
    controller_options: Sequence[str] = (),
    mediad_options: Sequence[str] = (),
    drain_timeout: float = 10.0,
) -> Iterator[Cluster]:
    """A controller (its conferences in memory, or in the SQLite file `store`) and `daemons`
    media daemons, each daemon registered before this yields."""
    controller = start_controller(log_dir, lease_ttl=lease_ttl, store=store, options=controller_options)
    started: list[Process] = []
    ranges: dict[str, tuple[int, int]] = {}
    try:
        for i in range(daemons):
            daemon_id = f"mediad-{i}"
            ranges[daemon_id] = free_udp_range(ports_per_daemon)
            started.append(start_mediad(log_dir, controller.address, daemon_id, ranges[daemon_id], capacity=capacity,
                                        drain_timeout=drain_timeout, options=mediad_options))
        wait_until(lambda: live_daemons(controller) == set(ranges), what="every media daemon to register")
        result = Cluster(controller, started, ranges)
    except BaseException:
        for p in [controller, *started]:
            with contextlib.suppress(Exception):
                p.stop(5)
        raise
    try:
        yield result
    finally:
        codes = result.stop()
    if check_exit:
        logs = "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in [controller, *started] if codes[p.name] != 0)
        assert all(code == 0 for code in codes.values()), f"exit codes {codes}\n{logs}"


def create_endpoints(daemon: Process, *specs: EndpointSpec) -> list[int]:
    """Make endpoints on a real daemon as a controller would (CreateEndpoint); their ports."""
    async def make() -> list[int]:
        client = MediaDaemonClient(daemon.name, daemon.address)
        try:
            return [await client.create_endpoint(spec) for spec in specs]
        finally:
            await client.close()

    return asyncio.run(make())
