"""Real controller and media daemon processes for tests, started as a user starts them
(`python -m controller`, `python -m mediad`) on free ports, ready once grpc.health.v1
answers SERVING, stopped with SIGTERM and expected to exit 0."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charter.v1 import controller_pb2, controller_pb2_grpc, mediad_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_ports(count: int, low: int = 40000, high: int = 60000) -> int:
    """The first of `count` consecutive TCP ports free now."""
    for _ in range(200):
        first = random.randrange(low, high - count)
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free TCP ports")


def udp_port_free(port: int, ip: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
        return True


def free_udp_range(size: int, low: int = 20000, high: int = 32000) -> tuple[int, int]:
    """A block of `size` consecutive UDP ports free now, below the ephemeral range."""
    for _ in range(200):
        first = random.randrange(low, high - size) // size * size
        if all(udp_port_free(p) for p in range(first, first + size)):
            return first, first + size - 1
    raise RuntimeError(f"no {size} consecutive free UDP ports in {low}-{high}")


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == health_pb2.HealthCheckResponse.SERVING:
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
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM:\n{self.log()[-3000:]}")


def _start(name: str, argv: list[str], address: str, log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    started = Process(name, address, process, log_path)
    try:
        wait_serving(address, process)
    except BaseException:
        process.kill()
        process.wait()
        raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')[-3000:]}") from None
    return started


def start_controller(log_dir: Path, *, lease_ttl: float = 10.0, port: int | None = None) -> Process:
    address = f"127.0.0.1:{port or free_tcp_port()}"
    return _start(
        "controller",
        ["-m", "controller", "--listen", address, "--lease-ttl", str(lease_ttl), "--grace", "2"],
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
) -> Process:
    address = f"127.0.0.1:{free_tcp_port()}"
    return _start(
        daemon_id,
        [
            "-m", "mediad", "--listen", address, "--daemon-id", daemon_id, "--controller", controller,
            "--media-ip", "127.0.0.1", "--ports", f"{ports[0]}-{ports[1]}", "--capacity", str(capacity),
            "--drain-timeout", str(drain_timeout), "--grace", "2",
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


def live_daemons(controller: Process) -> set[str]:
    reply = registry_stub(controller).ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=5)
    return {d.daemon.daemon_id for d in reply.daemons}


def wait_until(condition, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
) -> Iterator[Cluster]:
    """A controller and `daemons` media daemons, each daemon registered before this yields."""
    controller = start_controller(log_dir, lease_ttl=lease_ttl)
    started: list[Process] = []
    ranges: dict[str, tuple[int, int]] = {}
    try:
        for i in range(daemons):
            daemon_id = f"mediad-{i}"
            ranges[daemon_id] = free_udp_range(ports_per_daemon)
            started.append(start_mediad(log_dir, controller.address, daemon_id, ranges[daemon_id], capacity=capacity))
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
