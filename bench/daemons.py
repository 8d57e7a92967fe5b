"""Forwarded packets per second with 1 and 2 media daemons, and with one conference cascaded
across 2 daemons: real processes, conferences made through the controller's API.

A controller (--store memory, --tls none, --auth none) and two `python -m mediad` daemons,
A pinned to core 1 and B to core 0 (taskset, nice -10), started as a user starts them. The
load (this process, bench/_loadgen.pyx run_together: one SRTP publisher per conference,
pre-protected 1200-byte AES-CM packets in paced bursts of 8, a receiver socket per
subscriber, every packet counted by its index) offers each setup its rate. The setups,
measured side by side in one run, one trial of each in turn:

- one daemon:   K conferences of 1 publisher + F subscribers, all on A; the load on core 0.
- two daemons:  K conferences, K/2 of them whole on A and K/2 whole on B. This machine has
                2 cores, so the load (unpinned) shares them with the daemons.
- 1:C on one daemon: a conference of 1 publisher + C subscribers, all on A; load on core 0.
- 1:C cascaded: the publisher and C/2 subscribers on A, C/2 subscribers on B: the controller
                spread it because A was full (A's --capacity). A forwards each packet once
                to its end of the relay link, B's end publishes it to B's subscribers. The
                load shares the cores.

The load runs at the daemons' niceness, sleeps while no burst is due (so it takes from a
shared core only what it needs), and when it waited for a core it lets its schedule slip
rather than send what is late in one burst: a trial whose load fell more than 3 % short of
its rate fails, as does one that loses 1 % or more.

Per setup: the highest offered rate (packets/s in, over all its publishers) with under 1 %
loss (a probe at a ceiling, then steps and bisection), searched `--repeats` times; the
figures at each search's highest rate, and their medians: packets/s in and out, each
process's CPU (/proc/PID/task/*/schedstat), daemon CPU per packet out, packets out per
daemon-CPU-second. Then the ratios (two daemons / one daemon, cascaded / one daemon) and
what limits each figure on this machine.

Run from the repository root:  python -m bench.daemons [--quick]
Writes bench/results/daemons[-quick].json."""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Children start after this process opened channels: gRPC says so at INFO.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._loadgen import LoadGen, expected_payload, run_together  # noqa: E402
from bench.control_plane import free_port_block  # noqa: E402
from bench.machine import core_busy_seconds, wait_for_quiet  # noqa: E402
from bench.trials import Bench, Plan  # noqa: E402
from bench.webrtc_peers import sched_seconds, udp_drops  # noqa: E402
from charter.processes import free_port, stop  # noqa: E402
from charter.v1 import controller_pb2 as pb  # noqa: E402
from charter.v1 import controller_pb2_grpc, media_pb2, mediad_pb2, mediad_pb2_grpc  # noqa: E402
from mediad.srtp import create_session  # noqa: E402

RESULTS = REPO / "bench" / "results"
SUITE = "AES_CM_128_HMAC_SHA1_80"
RTP_SIZE = 1200
BURST = 8
LOSS_LIMIT = 0.01
PUBLISHER = "pub"
FIRST_SSRC = 0x5EED0100
OTHER_WORK_LIMIT = 25.0
"""% of a core used by processes other than these: above it, a failed trial is repeated."""
PR_SET_TIMERSLACK = 29
CATCH_UP = 1e-3
"""The load, behind its schedule by more than this (s), lets it slip rather than send what is
late at once: waiting for a core it shares must not turn into a burst no publisher sends."""

# Offered input rates the searches probe first (packets/s in over all publishers of a setup).
CEILING = {"one": 160_000.0, "two": 200_000.0, "single": 110_000.0, "cascade": 110_000.0}


# --- processes -----------------------------------------------------------------------------


@dataclass
class Server:
    """A controller or media daemon process of this run."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log: Path
    cpu: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def start_server(name: str, argv: list[str], logs: Path, address: str, *, cpu: int | None, nice: int) -> Server:
    """`python ARGV` with its output in LOGS/NAME.log; it gets SIGTERM if this process dies
    (setpriv --pdeathsig: no preexec_fn, so no fork while gRPC is live), runs at `nice` and,
    with `cpu`, on that core only (every thread: taskset before exec). It stays in this
    session: with the kernel's autogroups, niceness orders only tasks of one session."""
    prefix = ["setpriv", "--pdeathsig", "TERM"]
    if nice:
        prefix += ["nice", "-n", str(nice)]
    if cpu is not None:
        prefix += ["taskset", "-c", str(cpu)]
    log = logs / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*prefix, sys.executable, *argv], cwd=REPO, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    server = Server(name, process, address, log, cpu)
    try:
        wait_serving(server)
    except BaseException:
        stop(process, 5)
        raise
    return server


def wait_serving(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.tail()}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)  # type: ignore[attr-defined]
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    raise TimeoutError(f"{server.name} did not serve within {timeout:.0f} s:\n{server.tail()}")


def start_controller(logs: Path) -> Server:
    address = f"127.0.0.1:{free_port()}"
    argv = ["-m", "controller", "--listen", address, "--store", "memory", "--auth", "none", "--tls", "none",
            "--api-keys", str(logs / "api-keys.json"), "--lease-ttl", "10", "--grace", "1", "--log-level", "warning"]
    return start_server("controller", argv, logs, address, cpu=None, nice=0)


def start_daemon(name: str, controller: Server, logs: Path, *, cpu: int, nice: int, capacity: int) -> Server:
    """A media daemon registered with `controller`; `capacity` endpoints at most (0: one per
    port of its range)."""
    ports = max(capacity, 48) + 8
    first = free_port_block(ports, socket.SOCK_DGRAM, 20000, 32000)
    address = f"127.0.0.1:{free_port()}"
    argv = ["-m", "mediad", "--listen", address, "--daemon-id", name, "--controller", controller.address,
            "--media-ip", "127.0.0.1", "--ports", f"{first}-{first + ports - 1}", "--capacity", str(capacity),
            "--tls", "none", "--drain-timeout", "2", "--grace", "1", "--log-level", "warning"]
    return start_server(name, argv, logs, address, cpu=cpu, nice=nice)


def wait_registered(registry: controller_pb2_grpc.DaemonRegistryStub, daemon_ids: set[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = registry.ListDaemons(pb.ListDaemonsRequest(), timeout=5)
        if {d.daemon.daemon_id for d in reply.daemons} >= daemon_ids:
            return
        time.sleep(0.1)
    raise RuntimeError(f"media daemons {sorted(daemon_ids)} did not register")


# --- conferences ---------------------------------------------------------------------------


@dataclass
class Conference:
    """One conference of the run: its publisher is a load generator, its subscribers the
    generator's receiver sockets (their receive addresses, given at Join)."""

    conference_id: str
    gen: LoadGen
    publisher: pb.Participant | None = None
    subscribers: list[pb.Participant] = field(default_factory=list)
    placement: dict[str, str] = field(default_factory=dict)
    """participant id -> the daemon serving it (GetParticipant)."""

    @property
    def fanout(self) -> int:
        return len(self.gen.receiver_addresses)

    @property
    def subscriber_daemons(self) -> list[str]:
        return [self.placement[s.participant_id] for s in self.subscribers]


def open_conference(api: controller_pb2_grpc.ConferenceServiceStub, conference_id: str, fanout: int,
                    ssrc: int) -> Conference:
    """A new conference and its publisher (one video track, the generator's SSRC)."""
    conference = Conference(conference_id, LoadGen(fanout, rtp_size=RTP_SIZE, ssrc=ssrc))
    api.CreateConference(pb.CreateConferenceRequest(conference_id=conference_id), timeout=10)
    request = pb.JoinRequest(conference_id=conference_id, participant_id=PUBLISHER,
                             suite=media_pb2.SrtpSuite.Value(SUITE))
    request.tracks.add(ssrc=ssrc, kind=media_pb2.VIDEO, codec="VP8", payload_type=96, clock_rate=90000)
    conference.publisher = api.Join(request, timeout=10).participant
    return conference


def join_subscribers(api: controller_pb2_grpc.ConferenceServiceStub, conference: Conference, count: int) -> None:
    """The next `count` subscribers, each receiving at its receiver socket of the generator."""
    for _ in range(count):
        index = len(conference.subscribers)
        ip, port = conference.gen.receiver_addresses[index]
        request = pb.JoinRequest(conference_id=conference.conference_id, participant_id=f"sub-{index}",
                                 suite=media_pb2.SrtpSuite.Value(SUITE))
        request.receive_address.ip, request.receive_address.port = ip, port
        conference.subscribers.append(api.Join(request, timeout=10).participant)


def settle(api: controller_pb2_grpc.ConferenceServiceStub, conference: Conference) -> None:
    """Read back every participant (its daemon, its subscriptions) and aim the generator at
    the publisher's media address with its key."""
    def get(participant_id: str) -> pb.Participant:
        return api.GetParticipant(pb.GetParticipantRequest(conference_id=conference.conference_id,
                                                           participant_id=participant_id), timeout=10)

    assert conference.publisher is not None
    conference.publisher = get(PUBLISHER)
    conference.subscribers = [get(s.participant_id) for s in conference.subscribers]
    conference.placement = {p.participant_id: p.daemon_id for p in [conference.publisher, *conference.subscribers]}
    address = conference.publisher.media_address
    conference.gen.set_target(address.ip, address.port)
    conference.gen.set_key(SUITE, base64.b64decode(conference.publisher.send_key))


def check_placement(conference: Conference, publisher: str, subscribers: list[str]) -> None:
    """The participants are on the daemons this run meant them to be on (else: RuntimeError)."""
    found = (conference.placement[PUBLISHER], conference.subscriber_daemons)
    if found != (publisher, subscribers):
        raise RuntimeError(f"conference {conference.conference_id}: placed publisher, subscribers = {found}, "
                           f"meant {(publisher, subscribers)}")


def verify(conference: Conference, samples: list[list[bytes]]) -> dict[str, Any]:
    """Decrypt the first packets each subscriber got with its own key and check payload and
    SSRC (the one the API assigned it): the daemons really re-keyed and forwarded them."""
    payload = expected_payload(RTP_SIZE)
    ok, failures = 0, []
    for subscriber, packets in zip(conference.subscribers, samples, strict=True):
        session = create_session(SUITE, base64.b64decode(subscriber.receive_key), inbound=True)
        ssrc = next(s.ssrc for s in subscriber.subscriptions if s.publisher_id == PUBLISHER)
        for packet in packets:
            try:
                plain = session.unprotect(packet)
            except Exception as exc:  # pylibsrtp.Error
                failures.append(f"{conference.conference_id}/{subscriber.participant_id}: {exc}")
                continue
            if plain[16:] != payload or int.from_bytes(plain[8:12], "big") != ssrc:
                failures.append(f"{conference.conference_id}/{subscriber.participant_id}: payload or SSRC differs")
            else:
                ok += 1
        if not packets:
            failures.append(f"{conference.conference_id}/{subscriber.participant_id}: nothing received")
    return {"decrypted_ok": ok, "failures": failures}


# --- setups --------------------------------------------------------------------------------


@dataclass
class Setup:
    """What one series of trials loads: conferences, the daemons they are on, the cores the
    load may use."""

    key: str
    label: str
    conferences: list[Conference]
    daemons: list[Server]
    load_cpus: set[int]
    ports: dict[int, str]
    """The daemons' receiving ports of this setup (publishers' endpoints, link ends) and what
    they are: where a daemon that cannot keep up drops."""
    verified: dict[str, Any] | None = None

    @property
    def fanout(self) -> int:
        return sum(c.fanout for c in self.conferences) // len(self.conferences)


@dataclass
class World:
    """Every process and conference of the run."""

    logs: Path
    servers: list[Server] = field(default_factory=list)
    conferences: list[Conference] = field(default_factory=list)
    channel: grpc.Channel | None = None

    def close(self) -> dict[str, int]:
        """The channel, the generators, then the controller (it releases every conference)
        and the daemons; their exit codes."""
        if self.channel is not None:
            self.channel.close()
        for conference in self.conferences:
            conference.gen.close()
        return {s.name: stop(s.process, 15) for s in self.servers}


def build(world: World, args: argparse.Namespace) -> list[Setup]:
    """Start the processes and make the conferences, so that each lands where its setup
    needs it: A alone first (its conferences, and the cascade's publisher and first half,
    fill A to its capacity but one endpoint, kept for the link's end), then B, which takes
    the cascade's second half (A is full: the conference spreads) and its own conferences."""
    k, fanout, cascade_fanout = args.conferences, args.fanout, args.cascade_fanout
    on_a = cascade_fanout // 2
    capacity_a = k * (1 + fanout) + (1 + cascade_fanout) + (1 + on_a) + 1
    controller = start_controller(world.logs)
    world.servers.append(controller)
    a = start_daemon("mediad-a", controller, world.logs, cpu=args.daemon_cpus[0], nice=args.nice,
                     capacity=capacity_a)
    world.servers.append(a)
    world.channel = grpc.insecure_channel(controller.address)
    api = controller_pb2_grpc.ConferenceServiceStub(world.channel)
    registry = controller_pb2_grpc.DaemonRegistryStub(world.channel)
    wait_registered(registry, {a.name})

    ssrcs = iter(range(FIRST_SSRC, FIRST_SSRC + 1000))

    def conference(conference_id: str, size: int, subscribers: int) -> Conference:
        made = open_conference(api, conference_id, size, next(ssrcs))
        world.conferences.append(made)
        join_subscribers(api, made, subscribers)
        return made

    spread = [conference(f"a-{i}", fanout, fanout) for i in range(k)]
    single = conference("single", cascade_fanout, cascade_fanout)
    cascade = conference("cascade", cascade_fanout, on_a)
    b = start_daemon("mediad-b", controller, world.logs, cpu=args.daemon_cpus[1], nice=args.nice, capacity=0)
    world.servers.append(b)
    wait_registered(registry, {a.name, b.name})
    join_subscribers(api, cascade, cascade_fanout - on_a)
    on_b = [conference(f"b-{i}", fanout, fanout) for i in range(k - k // 2)]
    for made in world.conferences:
        settle(api, made)
    for made in [*spread, single]:
        check_placement(made, a.name, [a.name] * made.fanout)
    for made in on_b:
        check_placement(made, b.name, [b.name] * made.fanout)
    check_placement(cascade, a.name, [a.name] * on_a + [b.name] * (cascade_fanout - on_a))

    link_port = link_end_port(b, cascade.conference_id)
    two = spread[: k // 2] + on_b
    load_alone = {args.load_cpu}
    both = {args.load_cpu, *args.daemon_cpus}
    return [
        Setup("one", f"1 daemon: {k} x 1:{fanout}", spread, [a], load_alone, publisher_ports(spread)),
        Setup("two", f"2 daemons: {k // 2}+{k - k // 2} x 1:{fanout}", two, [a, b], both, publisher_ports(two)),
        Setup("single", f"1:{cascade_fanout} on 1 daemon", [single], [a], load_alone, publisher_ports([single])),
        Setup("cascade", f"1:{cascade_fanout} cascaded ({on_a} on A, {cascade_fanout - on_a} on B)", [cascade],
              [a, b], both, publisher_ports([cascade]) | {link_port: f"{b.name} link end"}),
    ]


def publisher_ports(conferences: list[Conference]) -> dict[int, str]:
    return {c.publisher.media_address.port: f"{c.placement[PUBLISHER]} publisher of {c.conference_id}"
            for c in conferences if c.publisher is not None}


def link_end_port(daemon: Server, conference_id: str) -> int:
    """The UDP port of the conference's relay link end on `daemon` (it receives the relayed packets)."""
    with grpc.insecure_channel(daemon.address) as channel:
        endpoints = mediad_pb2_grpc.MediaDaemonStub(channel).ListEndpoints(
            mediad_pb2.ListEndpointsRequest(conference_id=conference_id), timeout=10).endpoints
    ends = [e.local_address.port for e in endpoints if "/~link~" in e.endpoint_id]
    if len(ends) != 1:
        raise RuntimeError(f"{daemon.name}: {len(ends)} link ends in {conference_id}, expected 1")
    return ends[0]


# --- trials --------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    """CPU seconds so far of each daemon, the controller and the load (this process)."""
    wait: dict[str, float]
    """Seconds each main thread was runnable but waited for a core."""
    cores: list[tuple[float, float]]
    drops: dict[int, int]


def snapshot(world: World, ports: dict[int, str]) -> Snapshot:
    pids = {s.name: s.pid for s in world.servers} | {"load": os.getpid()}
    sched = {name: sched_seconds(pid) for name, pid in pids.items()}
    return Snapshot(
        at=time.monotonic(),
        cpu={name: cpu for name, (cpu, _) in sched.items()},
        wait={name: wait for name, (_, wait) in sched.items()},
        cores=[core_busy_seconds(c) for c in range(os.cpu_count() or 1)],
        drops={port: udp_drops(port) or 0 for port in ports},
    )


def trial(world: World, setup: Setup, rate: float, duration: float, *, capture: bool) -> dict[str, Any]:
    """One trial: every conference of the setup at its share of `rate` for `duration` s."""
    for conference in setup.conferences:
        conference.gen.prepare(rate / len(setup.conferences), duration)
    os.sched_setaffinity(0, setup.load_cpus)
    before = snapshot(world, setup.ports)
    runs = run_together([c.gen for c in setup.conferences], burst=BURST, capture=capture, idle_sleep=True,
                        max_catch_up=CATCH_UP)
    after = snapshot(world, setup.ports)
    figures = trial_figures(setup, rate, runs, before, after)
    if capture:
        checks = [verify(c, run.pop("samples")) for c, run in zip(setup.conferences, runs, strict=True)]
        setup.verified = {"decrypted_ok": sum(c["decrypted_ok"] for c in checks),
                          "failures": [f for c in checks for f in c["failures"]][:5]}
    return figures


def trial_figures(setup: Setup, rate: float, runs: list[dict[str, Any]], before: Snapshot,
                  after: Snapshot) -> dict[str, Any]:
    wall = after.at - before.at
    # The time the sending took (more than planned if the schedule slipped).
    duration = max(runs[0]["duration_s"], *((r["sent"] - 1) / r["achieved_pps"] for r in runs if r["achieved_pps"]))
    sent = sum(r["sent"] for r in runs)
    delivered = sum(sum(r["received"]) for r in runs)
    expected = sum(r["sent"] * len(r["received"]) for r in runs)
    cpu = {name: after.cpu[name] - before.cpu[name] for name in after.cpu}
    wait = {name: after.wait[name] - before.wait[name] for name in after.wait}
    daemon_cpu = sum(cpu[d.name] for d in setup.daemons)
    busy = sum(a[0] - b[0] for a, b in zip(after.cores, before.cores, strict=True))
    other = max(0.0, busy - sum(cpu.values()))
    by_daemon: dict[str, int] = {}
    for conference, run in zip(setup.conferences, runs, strict=True):
        for daemon, count in zip(conference.subscriber_daemons, run["received"], strict=True):
            by_daemon[daemon] = by_daemon.get(daemon, 0) + count
    achieved = all(r["achieved_pps"] >= 0.97 * r["offered_pps"] for r in runs)
    send_errors = sum(r["send_errors"] for r in runs)
    loss = 1.0 - delivered / max(1, expected)
    return {
        "offered_in_pps": rate,
        "in_pps": sent / duration,
        "out_pps": delivered / duration,
        "forwarded_in_pps": delivered / setup.fanout / duration,  # what the search's probe reads
        "loss": loss,
        "delivered": delivered,
        "delivered_by_daemon": by_daemon,
        "wall_s": wall,
        # Over the sending (a trial that lost packets waits up to 0.3 s more for them, idle).
        "cpu_pct": {name: 100.0 * v / duration for name, v in cpu.items()},
        "waited_pct": {name: 100.0 * v / duration for name, v in wait.items()},
        # Each daemon's CPU over the packets its own subscribers got (a link's copies not counted).
        "daemon_us_per_packet_out": {d.name: 1e6 * cpu[d.name] / by_daemon[d.name] if by_daemon.get(d.name) else None
                                     for d in setup.daemons},
        "daemons_us_per_packet_out": 1e6 * daemon_cpu / delivered if delivered else None,
        "out_per_daemon_cpu_s": delivered / daemon_cpu if daemon_cpu > 0 else None,
        "cores_busy_pct": 100.0 * busy / wall,
        "other_work_pct": 100.0 * other / wall,
        "daemon_socket_drops": sum(after.drops[p] - before.drops[p] for p in after.drops),
        "daemon_socket_drops_at": {setup.ports[p]: after.drops[p] - before.drops[p] for p in after.drops
                                   if after.drops[p] > before.drops[p]},
        "receiver_overflows": sum(r["receiver_overflows"] for r in runs),
        "load_max_lag_ms": max(r["max_lag_ms"] for r in runs),
        "load_achieved": achieved,
        "send_errors": send_errors,
        "latency_p50_us": statistics.median(r["latency_p50_us"] for r in runs if "latency_p50_us" in r)
        if any("latency_p50_us" in r for r in runs) else None,
        "passed": loss < LOSS_LIMIT and achieved and send_errors == 0,
    }


def guarded_trial(world: World, setup: Setup, rate: float, duration: float, *, attempts: int,
                  patience: float) -> dict[str, Any]:
    """A trial, repeated (after waiting for the cores to calm down) while it fails with other
    processes using more than OTHER_WORK_LIMIT % of a core: that failure says nothing about
    the daemons."""
    for attempt in range(attempts):
        if attempt:
            wait_for_quiet(tuple(sorted(setup.load_cpus | {d.cpu for d in setup.daemons if d.cpu is not None})),
                           patience=patience, verbose=False)
        result = trial(world, setup, rate, duration, capture=setup.verified is None)
        result["attempt"] = attempt
        result["disturbed"] = not result["passed"] and result["other_work_pct"] >= OTHER_WORK_LIMIT
        if not result["disturbed"]:
            break
        print(f"      ({setup.key}: retrying {rate:,.0f} pps: {result['other_work_pct']:.0f} % of a core "
              "used by other processes)", flush=True)
    note(setup, result)
    return result


def note(setup: Setup, r: dict[str, Any]) -> None:
    flag = "pass" if r["passed"] else ("fail, disturbed" if r["disturbed"] else "fail")
    cpu = "  ".join(f"{d.name[-1].upper()} {r['cpu_pct'][d.name]:3.0f} %" for d in setup.daemons)
    print(f"      {setup.key:<8}{r['offered_in_pps']:>9,.0f} pps in: loss {100 * r['loss']:6.2f} %  {flag:<15} "
          f"out {r['out_pps']:>9,.0f}  CPU {cpu}  load {r['cpu_pct']['load']:3.0f} %  "
          f"other {r['other_work_pct']:3.0f} %{drops(r)}", flush=True)


def drops(r: dict[str, Any]) -> str:
    """Where a failed trial lost its packets, and how long the processes waited for a core."""
    if r["passed"]:
        return ""
    sites = [f"{n} at {where}" for where, n in r["daemon_socket_drops_at"].items()]
    if r["receiver_overflows"]:
        sites.append(f"{r['receiver_overflows']} at the load's receivers")
    waited = ", ".join(f"{name[-1].upper() if name != 'load' else name} {pct:.0f} %"
                       for name, pct in r["waited_pct"].items() if name != "controller" and pct >= 1)
    return f"\n          dropped: {'; '.join(sites) or 'none counted'}; waited for a core: {waited or '-'}"


# --- searches, side by side ----------------------------------------------------------------


def recorded(plan: Plan, trials: list[dict[str, Any]]) -> Plan:
    """`plan` as it is, keeping its trials."""
    request = next(plan)
    while True:
        result = yield request
        trials.append(result)
        try:
            request = plan.send(result)
        except StopIteration as done:
            return done.value


def searches(bench: Bench, repeats: int, ceiling: float) -> Plan:
    """`repeats` searches for the highest rate; returns each one's maximum and trials."""
    found = []
    for _ in range(repeats):
        trials: list[dict[str, Any]] = []
        best = yield from recorded(bench.search(guess=ceiling, ceiling=ceiling, probe=True), trials)
        found.append({"max_in_pps": best, "trials": trials})
    return found


def at_rate(rate: float, repeats: int) -> Plan:
    """`repeats` trials at one rate, each standing for a search (no search)."""
    found = []
    for _ in range(repeats):
        result = yield rate, None
        found.append({"max_in_pps": rate if result["passed"] else 0.0, "trials": [result], "fixed_rate": True})
    return found


def side_by_side(plans: dict[str, Plan], run: Callable[[str, float, float | None], dict[str, Any]]) -> dict[str, Any]:
    """Run the plans one trial of each in turn until all are done; what each returned."""
    pending: dict[str, tuple[float, float | None]] = {}
    returned: dict[str, Any] = {}
    for key, plan in plans.items():
        pending[key] = next(plan)
    while pending:
        for key in list(pending):
            rate, duration = pending[key]
            result = run(key, rate, duration)
            try:
                pending[key] = plans[key].send(result)
            except StopIteration as done:
                returned[key] = done.value
                del pending[key]
    return returned


# --- figures -------------------------------------------------------------------------------


def at_max(search: dict[str, Any]) -> dict[str, Any] | None:
    """The search's trial at its highest rate (the last one that passed there)."""
    trials: list[dict[str, Any]] = search["trials"]
    if search.get("fixed_rate"):
        return trials[0]
    passed = [t for t in trials if t["passed"] and t["offered_in_pps"] == search["max_in_pps"]]
    return passed[-1] if passed else None


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(setup: Setup, found: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the searches of the figures at each one's highest rate."""
    best = [t for t in (at_max(s) for s in found) if t is not None]
    names = [d.name for d in setup.daemons]

    def med(key: str, name: str = "") -> float | None:
        return median_of([t[key][name] if name else t[key] for t in best])

    return {
        "searches": len(found),
        "found": len(best),
        "max_in_pps_each": [s["max_in_pps"] for s in found],
        **{key: med(key) for key in ("in_pps", "out_pps", "loss", "daemons_us_per_packet_out", "out_per_daemon_cpu_s",
                                     "cores_busy_pct", "other_work_pct", "latency_p50_us")},
        "cpu_pct": {n: med("cpu_pct", n) for n in [*names, "load", "controller"]},
        "waited_pct": {n: med("waited_pct", n) for n in [*names, "load"]},
        "daemon_us_per_packet_out": {n: med("daemon_us_per_packet_out", n) for n in names},
        "above_max": where_lost(found),
    }


CULPRITS = {
    "daemon sockets": "the daemons' receiving sockets overflowed (a daemon busy, or waiting for its core)",
    "load behind": "the load fell behind its schedule (it waited for a core)",
    "load receivers": "the load's receivers overflowed",
    "other processes": "other processes took the cores",
    "unseen": "packets went missing where no counter saw them",
}


def culprit(t: dict[str, Any]) -> str:
    """Who failed a trial (a key of CULPRITS)."""
    if t["other_work_pct"] >= OTHER_WORK_LIMIT:
        return "other processes"
    lossy = t["loss"] >= LOSS_LIMIT
    if lossy and t["daemon_socket_drops"] and t["daemon_socket_drops"] >= t["receiver_overflows"]:
        return "daemon sockets"
    if lossy and t["receiver_overflows"]:
        return "load receivers"
    if not t["load_achieved"]:
        return "load behind"
    return "unseen"


def where_lost(found: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the failed trial just above each search's maximum: who failed it, and where the
    packets went missing (the daemons' receiving sockets, the load's receivers)."""
    above = []
    for search in found:
        failed = [t for t in search["trials"] if not t["passed"] and t["offered_in_pps"] > search["max_in_pps"]]
        if failed:
            above.append(min(failed, key=lambda t: t["offered_in_pps"]))
    culprits: dict[str, int] = {}
    for t in above:
        culprits[culprit(t)] = culprits.get(culprit(t), 0) + 1
    names = {n for t in above for n in t["waited_pct"]} - {"controller"}
    return {
        "trials": len(above),
        "culprits": culprits,
        "daemon_socket_drops": sum(t["daemon_socket_drops"] for t in above),
        "receiver_overflows": sum(t["receiver_overflows"] for t in above),
        "waited_pct": {n: median_of([t["waited_pct"].get(n) for t in above]) for n in sorted(names)},
    }


def limit(setup: dict[str, Any], cpus: int, fixed_rate: bool) -> str:
    """What holds a setup's figure (as in the results) on this machine: who failed the
    trials just above its maximum, and how busy the cores were at the maximum."""
    s = setup["summary"]
    cpu = s["cpu_pct"]
    names = list(setup["daemons"])
    daemons = ", ".join(f"{n} {cpu[n] or 0:.0f} %" for n in names)
    at_max = f"daemons {daemons}, load {cpu['load'] or 0:.0f} %"
    if any(core in setup["load_cpus"] for core in setup["daemons"].values()):
        used = sum(cpu[n] or 0 for n in names) + (cpu["load"] or 0)
        at_max = f"the {cpus} cores shared: {at_max}, {used:.0f} of {100 * cpus} %"
    else:
        at_max = f"each on its own core: {at_max}"
    at_max += f" (other processes {s['other_work_pct'] or 0:.0f} %)"
    above = s["above_max"]
    if fixed_rate or not above["trials"]:
        return f"{'fixed rate, not searched' if fixed_rate else 'nothing failed above the maximum'}; {at_max}"
    who = sorted(above["culprits"].items(), key=lambda item: -item[1])
    failed = "; ".join(f"{CULPRITS[key]} ({n} of {above['trials']})" for key, n in who)
    waited = ", ".join(f"{n} {above['waited_pct'].get(n) or 0:.0f} %" for n in [*names, "load"])
    return f"above the maximum, {failed}; waiting for a core there: {waited}. At the maximum, {at_max}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    one, two, single, cascade = (summary[k] for k in ("one", "two", "single", "cascade"))
    efficiency = ratio(two["out_per_daemon_cpu_s"], one["out_per_daemon_cpu_s"])
    return {
        "two_over_one_out_pps": ratio(two["out_pps"], one["out_pps"]),
        "two_over_one_per_daemon_cpu_s": efficiency,
        "two_over_one_with_a_core_each": 2 * efficiency if efficiency is not None else None,
        "cascade_over_single_out_pps": ratio(cascade["out_pps"], single["out_pps"]),
        "cascade_over_single_cpu_per_packet": ratio(cascade["daemons_us_per_packet_out"],
                                                    single["daemons_us_per_packet_out"]),
    }


# --- report --------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(results: dict[str, Any]) -> str:
    rows = [
        "| setup | daemons (core) | max in pps | max out pps | daemon CPU at max | load CPU | "
        "daemon CPU us / packet out: all (each daemon, its own subscribers) | out / daemon-CPU-s | searches |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for setup in results["setups"].values():
        s = setup["summary"]
        names = list(setup["daemons"])
        cores = " + ".join(f"{n[-1].upper()} ({setup['daemons'][n]})" for n in names)
        cpu = " + ".join(f"{fmt(s['cpu_pct'][n], '.0f')} %" for n in names)
        per = fmt(s["daemons_us_per_packet_out"], ".2f")
        if len(names) > 1:
            per += " (" + ", ".join(f"{n[-1].upper()} {fmt(s['daemon_us_per_packet_out'][n], '.2f')}"
                                    for n in names) + ")"
        each = ", ".join(f"{m:,.0f}" for m in s["max_in_pps_each"])
        rows.append(f"| {setup['label']} | {cores} | {fmt(s['in_pps'])} | {fmt(s['out_pps'])} | {cpu} | "
                    f"{fmt(s['cpu_pct']['load'], '.0f', ' %')} | {per} | {fmt(s['out_per_daemon_cpu_s'])} | "
                    f"{s['found']}/{s['searches']}: {each} |")
    return "\n".join(rows)


def ratio_lines(results: dict[str, Any]) -> list[str]:
    r = results["ratios"]
    return [
        f"2 daemons / 1 daemon, packets out per second as measured (load sharing the cores): "
        f"{fmt(r['two_over_one_out_pps'], '.2f')}",
        f"2 daemons / 1 daemon, packets out per daemon-CPU-second: {fmt(r['two_over_one_per_daemon_cpu_s'], '.2f')}"
        f"  -> with a core for each daemon (and one for the load): {fmt(r['two_over_one_with_a_core_each'], '.2f')}",
        f"cascaded / one daemon at the same fan-out, packets out per second: "
        f"{fmt(r['cascade_over_single_out_pps'], '.2f')}",
        f"cascaded / one daemon, daemon CPU per packet out (both daemons), each at its maximum: "
        f"{fmt(r['cascade_over_single_cpu_per_packet'], '.2f')}",
        *same_rate_lines(results.get("same_rate")),
    ]


def same_rate_lines(same: dict[str, Any] | None) -> list[str]:
    if not same:
        return []
    single, cascade = same["single"], same["cascade"]
    each = ", ".join(f"{n[-1].upper()} {fmt(v, '.2f')}" for n, v in cascade["daemon_us_per_packet_out"].items())
    return [
        f"cascaded / one daemon, daemon CPU per packet out at one rate ({same['in_pps']:,.0f} pps in): "
        f"{fmt(same['cascade_over_single_cpu_per_packet'], '.2f')} ({fmt(cascade['daemons_us_per_packet_out'], '.2f')}"
        f" us: {each}; against {fmt(single['daemons_us_per_packet_out'], '.2f')} us; loss "
        f"{fmt(cascade['loss'], '.2%')} and {fmt(single['loss'], '.2%')})",
    ]


def print_report(results: dict[str, Any]) -> None:
    params = results["params"]
    if params["at_rate"]:
        print(f"\nMedians of {params['repeats']} trials per setup at {params['at_rate']:,.0f} pps in (not searched). "
              "CPU: % of one core.\n")
    else:
        print(f"\nMedians of {params['repeats']} searches per setup (highest offered rate with under "
              f"{100 * LOSS_LIMIT:.0f} % loss; the figures at that rate). CPU: % of one core.\n")
    print(table(results))
    if "ratios" in results:
        print()
        for line in ratio_lines(results):
            print(line)
    print("\nWhat limits each figure:")
    for setup in results["setups"].values():
        print(f"  {setup['label']}: {setup['limit']}")


# --- the run -------------------------------------------------------------------------------


def measure(world: World, setups: list[Setup],
            args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Each setup's searches (or trials at --at-rate), side by side; then the cascade and its
    one-daemon baseline at one rate."""
    bench = Bench(quick=args.quick, duration=args.duration, burst=BURST, load_cpu=args.load_cpu,
                  relay_cpu=args.daemon_cpus[0])  # for its search plan only
    by_key = {s.key: s for s in setups}
    plans = {s.key: (at_rate(args.at_rate, args.repeats) if args.at_rate
                     else searches(bench, args.repeats, CEILING[s.key])) for s in setups}
    attempts, patience = (2, 3.0) if args.quick else (3, 8.0)

    def run(key: str, rate: float, duration: float | None) -> dict[str, Any]:
        return guarded_trial(world, by_key[key], rate, duration or args.duration, attempts=attempts,
                             patience=patience)

    wait_for_quiet(tuple(sorted({args.load_cpu, *args.daemon_cpus})), patience=5.0 if args.quick else 15.0)
    found = side_by_side(plans, run)
    if args.at_rate or not {"single", "cascade"} <= by_key.keys():
        return found, None
    return found, same_rate(by_key, found, run, args.repeats)


SAME_RATE_SHARE = 0.75
"""Of the lower of the two maxima: the rate of the cascade's comparison at equal load."""


def same_rate(by_key: dict[str, Setup], found: dict[str, Any],
              run: Callable[[str, float, float | None], dict[str, Any]], repeats: int) -> dict[str, Any] | None:
    """The cascade and its one-daemon baseline at one rate, trial by trial: their CPU per
    packet at equal load (at its maximum the baseline's daemon is busier than the cascade's,
    and a busier daemon reads larger batches, each packet cheaper)."""
    maxima = [summarize(by_key[k], found[k])["in_pps"] for k in ("single", "cascade")]
    if None in maxima:
        return None
    rate = SAME_RATE_SHARE * min(maxima)
    print(f"    the cascade and 1:{by_key['single'].fanout} on one daemon at one rate, {rate:,.0f} pps in", flush=True)
    trials = side_by_side({k: at_rate(rate, repeats) for k in ("single", "cascade")}, run)
    figures = {k: summarize(by_key[k], trials[k]) for k in trials}
    return {"in_pps": rate, **figures, "trials": trials,
            "cascade_over_single_cpu_per_packet": ratio(figures["cascade"]["daemons_us_per_packet_out"],
                                                        figures["single"]["daemons_us_per_packet_out"])}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter trials and searches (about 1-2 minutes)")
    parser.add_argument("--conferences", type=int, default=4, help="K: conferences of the 1- and 2-daemon setups")
    parser.add_argument("--fanout", type=int, default=3, help="F: subscribers per conference (default 3)")
    parser.add_argument("--cascade-fanout", type=int, default=4,
                        help="C: subscribers of the cascaded conference, half on each daemon (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="searches per setup (the medians are over them)")
    parser.add_argument("--duration", type=float, help="seconds per trial (1.5, quick 0.6)")
    parser.add_argument("--at-rate", type=float, metavar="PPS",
                        help="no search: every setup at this offered rate (packets/s in), --repeats trials")
    parser.add_argument("--setups", nargs="+", choices=list(CEILING), default=list(CEILING),
                        help="measure only these (the ratios need all four)")
    parser.add_argument("--daemon-cpus", type=int, nargs=2, default=[1, 0], metavar=("A", "B"))
    parser.add_argument("--load-cpu", type=int, default=0, help="the load's core while only daemon A works")
    parser.add_argument("--nice", type=int, default=-10, help="niceness of the daemons (default -10)")
    parser.add_argument("--load-nice", type=int,
                        help="niceness of the load (default: as the daemons; lower, it takes their cores from them "
                        "where it shares them, higher, it falls behind its schedule)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, metavar="JSON", help="measure nothing: print an earlier run's report")
    args = parser.parse_args(argv)
    args.duration = args.duration or (0.6 if args.quick else 1.5)
    args.load_nice = args.nice if args.load_nice is None else args.load_nice
    if args.conferences < 2 or args.fanout < 1 or args.cascade_fanout < 2 or args.repeats < 1:
        parser.error("--conferences and --cascade-fanout must be at least 2, --fanout and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.report:
        print_report(json.loads(args.report.read_text()))
        return 0
    # SIGTERM unwinds like Ctrl-C, through the finally that stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The load sleeps between bursts: a timer slack of 1 us (not 50) wakes it on time.
    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    started = time.monotonic()
    world = World(Path(tempfile.mkdtemp(prefix="charter-daemons-")))
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"suite": SUITE, "rtp_size": RTP_SIZE, "burst": BURST, "loss_limit": LOSS_LIMIT,
           "command": "python -m bench.daemons " + " ".join(argv if argv is not None else sys.argv[1:])},
    }
    codes: dict[str, int] = {}
    print(f"Media daemons: {args.conferences} conferences of 1:{args.fanout} on 1 and on 2 daemons, "
          f"1:{args.cascade_fanout} on 1 daemon and cascaded over 2 (logs in {world.logs})", flush=True)
    try:
        setups = [s for s in build(world, args) if s.key in args.setups]
        # After the children started (they would inherit it): this thread only, the load's loop.
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, args.load_nice)
        results["placement"] = {c.conference_id: c.placement for c in world.conferences}
        found, equal_load = measure(world, setups, args)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        codes = world.close()
    results["exit_codes"] = codes
    results["setups"] = {
        s.key: {"label": s.label, "daemons": {d.name: d.cpu for d in s.daemons}, "load_cpus": sorted(s.load_cpus),
                "summary": summarize(s, found[s.key]), "verified": s.verified, "searches": found[s.key]}
        for s in setups
    }
    for setup in results["setups"].values():
        setup["limit"] = limit(setup, os.cpu_count() or 1, bool(args.at_rate))
    if set(results["setups"]) == set(CEILING):
        results["ratios"] = ratios({k: v["summary"] for k, v in results["setups"].items()})
    results["same_rate"] = equal_load
    results["elapsed_s"] = time.monotonic() - started
    print_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"daemons{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1, default=list) + "\n")
    print(f"\nWrote {path} in {results['elapsed_s']:.0f} s")
    failures = [f for s in setups for f in (s.verified or {"failures": ["never verified"]})["failures"]]
    if failures:
        print("VERIFICATION FAILED: " + "; ".join(failures[:5]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
