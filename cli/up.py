"""`charter up`: the embedded default. Starts the controller and N media daemons on this
machine as child processes, waits until each reports SERVING, and on Ctrl-C or SIGTERM
stops them in order: the controller first (it ends the conferences, so the daemons release
every endpoint), then the daemons; exits 0 when every child exited 0."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from charter import logs, processes
from charter.config import env
from charter.serving import stop_event, wait_serving

log = logging.getLogger("cli.up")

STOP_TIMEOUT = 30.0


@dataclass
class Child:
    name: str
    grpc_address: str
    argv: list[str]
    detail: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.process = processes.start(self.argv)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def exited(self) -> int | None:
        return self.process.poll() if self.process else 0

    async def stop(self, timeout: float) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return 0
        code = await processes.stop_async(self.process, timeout)
        if code == -signal.SIGKILL:
            log.error(f"{self.name} did not stop within {timeout:.0f} s: killed it")
        return code


def _env(name: str, default: object) -> str:
    return env("CHARTER_UP_", name, default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--daemons", type=int, default=int(_env("DAEMONS", os.cpu_count() or 1)),
                        help="media daemons to run, one per core [CHARTER_UP_DAEMONS, default %(default)s]")
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                        help="address every server listens on [CHARTER_UP_HOST, default %(default)s]")
    parser.add_argument("--controller-port", type=int, default=int(_env("CONTROLLER_PORT", 50051)),
                        help="controller gRPC port [CHARTER_UP_CONTROLLER_PORT, default %(default)s]")
    parser.add_argument("--mediad-port", type=int, default=int(_env("MEDIAD_PORT", 8443)),
                        help="gRPC port of the first media daemon; the next ones follow "
                        "[CHARTER_UP_MEDIAD_PORT, default %(default)s]")
    parser.add_argument("--ports", default=_env("PORTS", "16384-32767"),
                        help="UDP media ports, split evenly among the daemons [CHARTER_UP_PORTS, default %(default)s]")
    parser.add_argument("--lease-ttl", type=float, default=float(_env("LEASE_TTL", 10.0)),
                        help="seconds of a media daemon's lease [CHARTER_UP_LEASE_TTL, default %(default)s]")
    parser.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), choices=["json", "text"],
                        help="log format of every process [CHARTER_UP_LOG_FORMAT, default %(default)s]")
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"],
                        help="[CHARTER_UP_LOG_LEVEL, default %(default)s]")


def plan(args: argparse.Namespace) -> tuple[Child, list[Child]]:
    """The processes to start, as a user would start them by hand."""
    if args.daemons < 1:
        raise SystemExit("--daemons must be at least 1")
    try:
        first, last = (int(p) for p in args.ports.split("-"))
    except ValueError:
        raise SystemExit(f"--ports {args.ports!r} is not a range such as 16384-32767") from None
    share = (last - first + 1) // args.daemons
    if share < 1:
        raise SystemExit(f"--ports {args.ports} has fewer ports than --daemons {args.daemons}")
    common = ["--log-format", args.log_format, "--log-level", args.log_level]
    controller_address = f"{args.host}:{args.controller_port}"
    controller = Child(
        "controller",
        controller_address,
        [
            sys.executable, "-m", "controller", "--listen", controller_address,
            "--lease-ttl", str(args.lease_ttl), *common,
        ],
    )
    daemons = []
    for i in range(args.daemons):
        address = f"{args.host}:{args.mediad_port + i}"
        ports = f"{first + i * share}-{first + (i + 1) * share - 1}"
        daemons.append(
            Child(
                f"mediad-{i}",
                address,
                [sys.executable, "-m", "mediad", "--listen", address, "--daemon-id", f"mediad-{i}",
                 "--controller", controller_address, "--media-ip", args.host, "--ports", ports, *common],
                detail=f"media {args.host}:{ports}",
            )
        )
    return controller, daemons


async def up(args: argparse.Namespace) -> int:
    controller, daemons = plan(args)
    children = [controller, *daemons]
    stop = stop_event()
    failed = False
    try:
        for child in children:
            child.start()
        for child in children:
            await _wait_ready(child, stop)
        if not stop.is_set():
            await _wait_registered(controller.grpc_address, [d.name for d in daemons], stop)
            _print_summary(controller, daemons)
        while not stop.is_set():
            for child in children:
                code = child.exited()
                if code is not None:
                    log.error(f"{child.name} exited with code {code}: stopping everything")
                    failed = True
                    stop.set()
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass
    except (TimeoutError, RuntimeError) as error:
        log.error(str(error))
        failed = True
    codes = [await controller.stop(STOP_TIMEOUT)]
    codes += await asyncio.gather(*(d.stop(STOP_TIMEOUT) for d in daemons))
    bad = [f"{c.name}={code}" for c, code in zip(children, codes, strict=True) if code != 0]
    if bad:
        log.error("not every process exited cleanly: " + ", ".join(bad))
    else:
        print("Charter stopped: every process exited cleanly.", flush=True)
    return 1 if failed or bad else 0


async def _wait_ready(child: Child, stop: asyncio.Event) -> None:
    ready = asyncio.create_task(wait_serving(child.grpc_address, timeout=30.0))
    while not ready.done():
        if stop.is_set():
            ready.cancel()
            return
        if child.exited() is not None:
            ready.cancel()
            raise RuntimeError(f"{child.name} exited with code {child.exited()} before serving")
        await asyncio.wait([ready], timeout=0.2)
    ready.result()


async def _wait_registered(controller: str, daemon_ids: list[str], stop: asyncio.Event, timeout: float = 30.0) -> None:
    """Until every daemon holds a lease: only then can conferences be placed on all of them."""
    import grpc

    from charter.v1 import controller_pb2, controller_pb2_grpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(controller) as channel:
        registry = controller_pb2_grpc.DaemonRegistryStub(channel)
        while not stop.is_set():
            reply = await registry.ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=5.0)
            if set(daemon_ids) <= {d.daemon.daemon_id for d in reply.daemons}:
                return
            if loop.time() > deadline:
                raise RuntimeError(f"media daemons did not register within {timeout:.0f} s")
            await asyncio.sleep(0.1)


def _print_summary(controller: Child, daemons: list[Child]) -> None:
    lines = ["", "Charter is up:", f"  {controller.name:<11} {controller.grpc_address:<16} pid {controller.pid}"]
    for d in daemons:
        lines.append(f"  {d.name:<11} {d.grpc_address:<16} pid {d.pid}  {d.detail}")
    lines += [
        "",
        f"  grpcurl -plaintext {controller.grpc_address} list",
        f"  grpcurl -plaintext -d '{{}}' {controller.grpc_address} charter.v1.ConferenceService/CreateConference",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def run(args: argparse.Namespace) -> int:
    logs.setup("charter-up", args.log_level, "text")
    return asyncio.run(up(args))
