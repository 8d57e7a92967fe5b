"""`charter up`: the embedded default. Starts the controller, N media daemons and the web
gateway (`charter web`, the page for browsers) on this machine as child processes (with
`--store redis`: a redis-server first, and `--controllers` controllers sharing it), waits
until each is ready (gRPC health SERVING; the gateway's /healthz), prints where they are,
starts again any that dies (after 0.5 s, doubling up to 30 s while it keeps dying within a
minute of its start), and on Ctrl-C or SIGTERM stops them in order: the gateway first (its browsers leave), then
the controller (its conferences stay in its SQLite file under --state-dir for the next
start), then the daemons; exits 0 when every child exited 0."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from charter import logs, pki, processes
from charter.config import default_state_dir, env
from charter.serving import stop_event, wait_serving
from charter.tokens import ApiKeys, Grant, call_metadata

log = logging.getLogger("cli.up")

STOP_TIMEOUT = 30.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STEADY = 60.0
"""A child that ran this long before it died is restarted at once again (its backoff resets)."""


@dataclass
class Child:
    name: str
    grpc_address: str
    argv: list[str]
    detail: str = ""
    http_health: str = ""
    """Ready when this URL answers 200 (the web gateway), instead of gRPC health at grpc_address."""
    tls_name: str = ""
    """Its certificate's name in the TLS directory when it serves mutual TLS (a daemon)."""
    redis_url: str = ""
    """Ready when Redis at this URL answers PING (the shared store), instead of gRPC health."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    """When a child that died is started again (monotonic); None while it runs."""

    def start(self) -> None:
        self.process = processes.start(self.argv)
        self.started_at = time.monotonic()

    def died(self, code: int) -> float:
        """It exited by itself: schedule its restart; the delay (doubling while it keeps
        dying young, from FIRST_BACKOFF to MAX_BACKOFF)."""
        now = time.monotonic()
        young = now - self.started_at < STEADY
        self.backoff = min(MAX_BACKOFF, self.backoff * 2) if young and self.backoff else FIRST_BACKOFF
        self.restart_at = now + self.backoff
        return self.backoff

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def exited(self) -> int | None:
        return self.process.poll() if self.process else 0

    async def stop(self, timeout: float) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code (0 for
        one that died and waits to be started again: its death was logged then)."""
        if self.process is None or self.restart_at is not None:
            return 0
        code = await processes.stop_async(self.process, timeout)
        if code == -signal.SIGKILL:
            log.error(f"{self.name} did not stop within {timeout:.0f} s: killed it")
        if code == -signal.SIGTERM:
            # Stopped as asked, while it was starting: before its shutdown handler was set up.
            return 0
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
    parser.add_argument("--registry-port", type=int, default=int(_env("REGISTRY_PORT", 0)),
                        help="port where the daemons register with the controller over mutual TLS; 0: the "
                        "controller's port + 1 [CHARTER_UP_REGISTRY_PORT, default %(default)s]")
    parser.add_argument("--mediad-port", type=int, default=int(_env("MEDIAD_PORT", 8443)),
                        help="gRPC port of the first media daemon; the next ones follow "
                        "[CHARTER_UP_MEDIAD_PORT, default %(default)s]")
    parser.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", 9464)),
                        help="Prometheus /metrics of the controller on this port, the daemons' on the next ones; "
                        "0: none [CHARTER_UP_METRICS_PORT, default %(default)s]")
    parser.add_argument("--web-port", type=int, default=int(_env("WEB_PORT", 8080)),
                        help="HTTP port of the web gateway (charter web, the conference page); 0: none "
                        "[CHARTER_UP_WEB_PORT, default %(default)s]")
    parser.add_argument("--ports", default=_env("PORTS", "16384-32767"),
                        help="UDP media ports, split evenly among the daemons [CHARTER_UP_PORTS, default %(default)s]")
    parser.add_argument("--store", choices=["sqlite", "redis"], default=_env("STORE", "sqlite"),
                        help="sqlite: the controller's conferences in STATE_DIR/controller.sqlite3; redis: in a "
                        "redis-server charter up starts (data in STATE_DIR/redis), shared by --controllers "
                        "[CHARTER_UP_STORE, default %(default)s]")
    parser.add_argument("--controllers", type=int, default=int(_env("CONTROLLERS", 1)),
                        help="controllers to run (more than one needs --store redis); the next ones listen on the "
                        "controller and registry ports + 2, + 4, ... [CHARTER_UP_CONTROLLERS, default %(default)s]")
    parser.add_argument("--redis-port", type=int, default=int(_env("REDIS_PORT", 6379)),
                        help="port of the redis-server of --store redis [CHARTER_UP_REDIS_PORT, default %(default)s]")
    parser.add_argument("--state-dir", default=_env("STATE_DIR", str(default_state_dir())),
                        help="where the controller keeps its conferences (controller.sqlite3), so that they "
                        "outlive a restart [CHARTER_UP_STATE_DIR, default %(default)s]")
    parser.add_argument("--auth", choices=["token", "none"], default=_env("AUTH", "token"),
                        help="token: the API needs a token (charter token; the conference page gets its own); "
                        "none: anyone who reaches the controller may call [CHARTER_UP_AUTH, default %(default)s]")
    parser.add_argument("--tls", choices=["mutual", "none"], default=_env("TLS", "mutual"),
                        help="mutual: the daemons and the controller's registry talk only to parts that hold a "
                        "certificate of Charter's own CA (made in STATE_DIR/tls on first start); none: plaintext "
                        "[CHARTER_UP_TLS, default %(default)s]")
    parser.add_argument("--receive-networks", default=_env("RECEIVE_NETWORKS", "127.0.0.0/8"),
                        help="networks participants may receive media in (the controller's --receive-networks) "
                        "[CHARTER_UP_RECEIVE_NETWORKS, default %(default)s: this machine]")
    parser.add_argument("--lease-ttl", type=float, default=float(_env("LEASE_TTL", 10.0)),
                        help="seconds of a media daemon's lease [CHARTER_UP_LEASE_TTL, default %(default)s]")
    parser.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), choices=["json", "text"],
                        help="log format of every process [CHARTER_UP_LOG_FORMAT, default %(default)s]")
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"],
                        help="[CHARTER_UP_LOG_LEVEL, default %(default)s]")


@dataclass
class Plan:
    """The processes `charter up` starts, as a user would start them by hand."""

    redis: Child | None
    """The shared store's redis-server (--store redis), else None."""
    controllers: list[Child]
    daemons: list[Child]
    web: Child | None
    """The web gateway; None with --web-port 0."""

    @property
    def children(self) -> list[Child]:
        return [*([self.redis] if self.redis else []), *self.controllers, *self.daemons,
                *([self.web] if self.web else [])]


def plan(args: argparse.Namespace) -> Plan:
    if args.daemons < 1:
        raise SystemExit("--daemons must be at least 1")
    if args.controllers < 1 or (args.controllers > 1 and args.store != "redis"):
        raise SystemExit("--controllers must be at least 1, and more than 1 needs --store redis (they share it)")
    try:
        first, last = (int(p) for p in args.ports.split("-"))
    except ValueError:
        raise SystemExit(f"--ports {args.ports!r} is not a range such as 16384-32767") from None
    share = (last - first + 1) // args.daemons
    if share < 1:
        raise SystemExit(f"--ports {args.ports} has fewer ports than --daemons {args.daemons}")
    common = ["--log-format", args.log_format, "--log-level", args.log_level]
    tls_dir = str(tls_directory(args))
    state = Path(args.state_dir)
    redis = None
    store = [str(state / "controller.sqlite3")]
    if args.store == "redis":
        url = f"redis://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.redis_port}/0"
        redis = Child(
            "redis", "",
            [shutil.which("redis-server") or "redis-server", "--port", str(args.redis_port), "--bind", args.host,
             "--dir", str(state / "redis"), "--appendonly", "yes", "--save", "", "--protected-mode", "no",
             "--logfile", str(state / "redis" / "redis.log")],
            detail=url, redis_url=url,
        )
        store = [url, "--store-key", str(state / "redis-store.key")]
    controllers = []
    registries = []
    for i in range(args.controllers):
        address = f"{args.host}:{args.controller_port + 2 * i}"
        registry = f"{args.host}:{(args.registry_port or args.controller_port + 1) + 2 * i}"
        registries.append(registry if args.tls == "mutual" else address)
        controllers.append(Child(
            "controller" if args.controllers == 1 else f"controller-{i}",
            address,
            [
                sys.executable, "-m", "controller", "--listen", address,
                "--store", *store, "--receive-networks", args.receive_networks,
                "--auth", args.auth, "--api-keys", str(state / "api-keys.json"),
                "--tls", args.tls, "--tls-dir", tls_dir, "--registry-listen", registry,
                "--lease-ttl", str(args.lease_ttl), *metrics(args, i), *common,
            ],
            detail=f"daemons register on {registry} (mutual TLS)" if args.tls == "mutual" else "",
        ))
    daemons = []
    for i in range(args.daemons):
        address = f"{args.host}:{args.mediad_port + i}"
        ports = f"{first + i * share}-{first + (i + 1) * share - 1}"
        daemons.append(
            Child(
                f"mediad-{i}",
                address,
                # Stopping charter up stops the whole service: there is no other daemon for a
                # daemon's conferences to move to, and they stay in the controller's store.
                [sys.executable, "-m", "mediad", "--listen", address, "--daemon-id", f"mediad-{i}",
                 "--controller", ",".join(registries),
                 "--tls", args.tls, "--tls-dir", tls_dir, "--media-ip", args.host, "--ports", ports,
                 "--drain-timeout", "1", *metrics(args, args.controllers + i), *common],
                detail=f"media {args.host}:{ports}",
                tls_name=f"mediad-{i}" if args.tls == "mutual" else "",
            )
        )
    web = None
    if args.web_port:
        url = web_url(args.host, args.web_port)
        web = Child(
            "web",
            "",
            [sys.executable, "-m", "cli", "web", "--listen", f"{args.host}:{args.web_port}",
             "--controller", ",".join(c.grpc_address for c in controllers),
             "--api-keys", str(state / "api-keys.json"), *common],
            detail=url,
            http_health=url + "healthz",
        )
    return Plan(redis, controllers, daemons, web)


def tls_directory(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) / "tls"


def make_certificates(args: argparse.Namespace, daemons: list[Child]) -> pki.Identity | None:
    """Charter's CA and a certificate for the controller and each daemon, unless they are
    there already (--tls mutual); the controller's identity, which charter up uses itself to
    ask the daemons whether they are ready."""
    if args.tls != "mutual":
        return None
    directory = tls_directory(args)
    hosts = [args.host] if args.host not in ("0.0.0.0", "::", "") else []
    try:
        pki.ensure_ca(directory)
        for daemon in daemons:
            pki.issue(directory, daemon.tls_name, hosts)
        return pki.issue(directory, pki.CONTROLLER, hosts)
    except (OSError, ValueError) as error:
        raise SystemExit(f"charter up: cannot make the certificates in {directory}: {error}") from None


def metrics(args: argparse.Namespace, offset: int) -> list[str]:
    """The --metrics-listen of the child `offset` places after the controller (none: [])."""
    return ["--metrics-listen", f"{args.host}:{args.metrics_port + offset}"] if args.metrics_port else []


def web_url(host: str, port: int) -> str:
    """The page's URL (a wildcard listen address is reached on this machine as 127.0.0.1)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def up(args: argparse.Namespace) -> int:
    planned = plan(args)
    daemons, web = planned.daemons, planned.web
    # The API keys and the certificates exist before the processes that read them start.
    ApiKeys(Path(args.state_dir) / "api-keys.json")
    identity = make_certificates(args, daemons)
    credentials = pki.channel_credentials(identity) if identity is not None else None
    children = planned.children
    if planned.redis is not None:
        (Path(args.state_dir) / "redis").mkdir(parents=True, exist_ok=True)
    stop = stop_event()
    failed = False
    try:
        for child in children:
            child.start()
            if child is planned.redis:
                await _wait_ready(child, stop)  # the controllers connect to it as they start
        for child in children:
            if child is not web and child is not planned.redis:
                await _wait_ready(child, stop, credentials if child.tls_name else None)
        if not stop.is_set():
            for each in planned.controllers:
                await _wait_registered(each.grpc_address, [d.name for d in daemons], stop, operator_token(args))
            if web is not None:
                await _wait_ready(web, stop)
            shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
            _print_summary(planned, f"http://{shown}:{args.metrics_port}/metrics" if args.metrics_port else "", args)
        while not stop.is_set():
            # A child that dies is started again: the controller finds its conferences in its
            # store, a daemon registers again and gets its conferences back.
            now = time.monotonic()
            for child in children:
                if child.restart_at is None:
                    code = child.exited()
                    if code is not None:
                        delay = child.died(code)
                        log.error(f"{child.name} exited with code {code}: starting it again in {delay:.1f} s")
                elif now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    child.start()
                    log.warning(f"{child.name} started again", extra={"pid": child.pid, "restarts": child.restarts})
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass
    except (TimeoutError, RuntimeError) as error:
        log.error(str(error))
        failed = True
    # The gateway first (its browsers leave), the controllers, the daemons, the store last.
    order = [*([web] if web else []), *planned.controllers]
    codes = {c.name: await c.stop(STOP_TIMEOUT) for c in order}
    codes.update(zip([d.name for d in daemons], await asyncio.gather(*(d.stop(STOP_TIMEOUT) for d in daemons)),
                     strict=True))
    if planned.redis is not None:
        codes[planned.redis.name] = await planned.redis.stop(STOP_TIMEOUT)
    bad = [f"{c.name}={codes[c.name]}" for c in children if codes[c.name] != 0]
    if bad:
        log.error("not every process exited cleanly: " + ", ".join(bad))
    else:
        print("Charter stopped: every process exited cleanly.", flush=True)
    return 1 if failed or bad else 0


async def _wait_ready(child: Child, stop: asyncio.Event, credentials: grpc.ChannelCredentials | None = None) -> None:
    if child.redis_url:
        ready = asyncio.create_task(_wait_redis(child.redis_url, timeout=30.0))
    elif child.http_health:
        ready = asyncio.create_task(_wait_http(child.http_health, timeout=30.0))
    else:
        ready = asyncio.create_task(wait_serving(child.grpc_address, timeout=30.0, credentials=credentials))
    while not ready.done():
        if stop.is_set():
            ready.cancel()
            return
        if child.exited() is not None:
            ready.cancel()
            raise RuntimeError(f"{child.name} exited with code {child.exited()} before serving")
        await asyncio.wait([ready], timeout=0.2)
    ready.result()


async def _wait_http(url: str, timeout: float) -> None:
    """Poll `url` until it answers 200; TimeoutError otherwise."""
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while loop.time() < deadline:
            try:
                async with session.get(url) as reply:
                    if reply.status == 200:
                        return
                    last = f"HTTP {reply.status}: {await reply.text()}"
            except (aiohttp.ClientError, TimeoutError) as error:
                last = str(error) or type(error).__name__
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})")


async def _wait_redis(url: str, timeout: float) -> None:
    """Until Redis at `url` answers PING; TimeoutError otherwise."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        while True:
            try:
                await client.ping()
                return
            except RedisError as error:
                if loop.time() > deadline:
                    raise TimeoutError(f"Redis at {url} did not answer within {timeout:.0f} s ({error})") from None
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


def operator_token(args: argparse.Namespace) -> str:
    """A short-lived token to read every conference and the daemons ("" with --auth none)."""
    if args.auth != "token":
        return ""
    return ApiKeys(Path(args.state_dir) / "api-keys.json").token(Grant("*", ("read",)), ttl=120)


async def _wait_registered(controller: str, daemon_ids: list[str], stop: asyncio.Event, token: str = "",
                           timeout: float = 30.0) -> None:
    """Until every daemon holds a lease: only then can conferences be placed on all of them."""
    from charter.v1 import controller_pb2, controller_pb2_grpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(controller) as channel:
        registry = controller_pb2_grpc.DaemonRegistryStub(channel)
        while not stop.is_set():
            reply = await registry.ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=5.0,
                                               metadata=call_metadata(token))
            if set(daemon_ids) <= {d.daemon.daemon_id for d in reply.daemons}:
                return
            if loop.time() > deadline:
                raise RuntimeError(f"media daemons did not register within {timeout:.0f} s")
            await asyncio.sleep(0.1)


def _print_summary(planned: Plan, metrics_url: str = "", args: argparse.Namespace | None = None) -> None:
    controller, web = planned.controllers[0], planned.web
    lines = ["", "Charter is up:"]
    if planned.redis is not None:
        lines.append(f"  {'redis':<13} {'':<16} pid {planned.redis.pid}  {planned.redis.detail}".rstrip())
    for c in [*planned.controllers, *planned.daemons]:
        lines.append(f"  {c.name:<13} {c.grpc_address:<16} pid {c.pid}  {c.detail}".rstrip())
    if web is not None:
        lines.append(f"  {web.name:<13} {web.detail:<16} pid {web.pid}  the conference page (charter web)")
        lines += ["", f"  Join a conference from your browser: {web.detail}?conference=NAME"]
    if metrics_url:
        lines += ["", f"  Prometheus metrics: {metrics_url} (the controller; the other parts on the next ports)"]
    header = ""
    if args is not None and args.auth == "token":
        keys = Path(args.state_dir) / "api-keys.json"
        lines += ["", f'  A="authorization: Bearer $(charter token --api-keys {keys})"']
        header = ' -H "$A"'
    lines += [
        "",
        f"  grpcurl -plaintext {controller.grpc_address} list",
        f"  grpcurl -plaintext{header} -d '{{}}' {controller.grpc_address} "
        "charter.v1.ConferenceService/CreateConference",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def run(args: argparse.Namespace) -> int:
    logs.setup("charter-up", args.log_level, "text")
    return asyncio.run(up(args))
