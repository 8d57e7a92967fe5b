"""Control-plane benchmark: join and leave rate and latency through the controller's gRPC API.

Starts the embedded default as a user would (`charter up` with 2 media daemons), creates
100 conferences, joins 1,000 participants (10 per conference, each publishing an audio and a
video track, so the 10th join of a conference routes 36 subscriptions) with a bounded number
of calls in flight, then makes every participant leave (the last one ends its conference).
Prints rate and latency percentiles and writes bench/results/control_plane.json.

    python bench/control_plane.py [--participants 1000] [--conferences 100] [--concurrency 1,2,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import uvloop

from charter.processes import free_port, stop
from charter.tokens import ACTIONS, ApiKeys, Grant, with_token
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, media_pb2

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "control_plane.json"
TARGET_JOIN_P99_MS = 20.0
TARGET_JOINS_PER_SECOND = 300.0


def free_port_block(count: int, kind: int, low: int, high: int) -> int:
    """The first of `count` consecutive ports in [low, high) that are free now: what `charter
    up` needs for its media daemons' gRPC ports and their UDP media range (one port:
    charter.processes.free_port)."""
    for _ in range(500):
        first = random.randrange(low, high - count)
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, kind)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no block of {count} free ports")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    ms = [x * 1000 for x in latencies]
    return {
        "count": len(ms),
        "seconds": round(elapsed, 3),
        "per_second": round(len(ms) / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


async def run_calls(calls: list, concurrency: int) -> tuple[list[float], float]:  # type: ignore[type-arg]
    """Run the coroutine factories in order with at most `concurrency` in flight."""
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()  # type: ignore[type-arg]
    for call in calls:
        queue.put_nowait(call)

    async def worker() -> None:
        while not queue.empty():
            call = queue.get_nowait()
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


async def bench(address: str, args: argparse.Namespace) -> list[dict[str, object]]:
    runs = []
    for concurrency in args.concurrency:
        runs.append(await bench_once(address, args, concurrency))
    return runs


async def bench_once(address: str | list[str], args: argparse.Namespace, concurrency: int) -> dict[str, object]:
    """One run through the controller at `address`, or spread over several controllers
    of one store (each join and leave goes to the next of them in turn)."""
    addresses = [address] if isinstance(address, str) else address
    # Every call carries a token, as a production client's does (its check is in the figures).
    token = ApiKeys(Path(args.state_dir) / "api-keys.json").token(Grant("*", ACTIONS), ttl=24 * 3600)
    channels = [grpc.aio.insecure_channel(a, interceptors=with_token(token)) for a in addresses]
    try:
        return await _bench_once([controller_pb2_grpc.ConferenceServiceStub(c) for c in channels],
                                 controller_pb2_grpc.DaemonRegistryStub(channels[0]), args, concurrency)
    finally:
        for channel in channels:
            await channel.close()


async def _bench_once(apis: list[controller_pb2_grpc.ConferenceServiceStub],
                      registry: controller_pb2_grpc.DaemonRegistryStub, args: argparse.Namespace,
                      concurrency: int) -> dict[str, object]:
    api = apis[0]
    turn = iter(range(1 << 62))

    def next_api() -> controller_pb2_grpc.ConferenceServiceStub:
        return apis[next(turn) % len(apis)]

    conferences = [
        (
            await api.CreateConference(
                pb.CreateConferenceRequest(conference_id=f"bench-{concurrency}-{i:03d}"), timeout=10
            )
        )
        for i in range(args.conferences)
    ]
    placed: dict[str, int] = {}
    for c in conferences:
        placed[c.daemon_id] = placed.get(c.daemon_id, 0) + 1

    # Joins go round-robin over the conferences, as many independent users would arrive.
    per_conference = args.participants // args.conferences
    joins = []
    ssrc = 1000
    for n in range(per_conference):
        for c in conferences:
            ssrc += 2
            request = pb.JoinRequest(
                conference_id=c.conference_id,
                participant_id=f"p{n:03d}",
                tracks=[
                    media_pb2.Track(
                        ssrc=ssrc,
                        kind=media_pb2.AUDIO,
                        codec="opus",
                        payload_type=111,
                        clock_rate=48000,
                        channels=2,
                    ),
                    media_pb2.Track(
                        ssrc=ssrc + 1, kind=media_pb2.VIDEO, codec="VP8", payload_type=96, clock_rate=90000
                    ),
                ],
            )
            joins.append(lambda r=request: next_api().Join(r, timeout=10))
    # A short warm-up (connections, first allocations) outside the figures.
    warm = await api.CreateConference(pb.CreateConferenceRequest(conference_id="warm-up"), timeout=10)
    for i in range(20):
        await api.Join(pb.JoinRequest(conference_id=warm.conference_id, participant_id=f"w{i}"), timeout=10)
    await api.EndConference(pb.EndConferenceRequest(conference_id=warm.conference_id), timeout=10)

    join_latencies, join_elapsed = await run_calls(joins, concurrency)
    daemons = await registry.ListDaemons(pb.ListDaemonsRequest(), timeout=10)
    endpoints = {d.daemon.daemon_id: d.endpoints_assigned for d in daemons.daemons}

    leaves = [
        functools.partial(
            lambda r: next_api().Leave(r, timeout=10),
            pb.LeaveRequest(conference_id=c.conference_id, participant_id=f"p{n:03d}"),
        )
        for n in range(per_conference)
        for c in conferences
    ]
    leave_latencies, leave_elapsed = await run_calls(leaves, concurrency)
    left = await api.ListConferences(pb.ListConferencesRequest(page_size=1000), timeout=10)
    if left.conferences:
        raise RuntimeError(f"{len(left.conferences)} conferences still live after every participant left")
    join = summary(join_latencies, join_elapsed)
    return {
        "concurrency": concurrency,
        "target_met": join["p99_ms"] <= TARGET_JOIN_P99_MS and join["per_second"] >= TARGET_JOINS_PER_SECOND,
        "conferences_per_daemon": placed,
        "endpoints_per_daemon_at_peak": endpoints,
        "join": join,
        "leave": summary(leave_latencies, leave_elapsed),
    }


def start_charter(args: argparse.Namespace, controllers: int = 1,
                  store: str = "sqlite") -> tuple[subprocess.Popen[bytes], str]:
    """`charter up` with args.daemons daemons and `controllers` controllers (more than one:
    on --store redis, a redis-server of its own; their addresses: the one returned, then
    every second port)."""
    args.state_dir = tempfile.mkdtemp(prefix="charter-bench-")
    controller_port = free_port_block(2 * controllers, socket.SOCK_STREAM, 40000, 60000)
    mediad_port = free_port_block(args.daemons, socket.SOCK_STREAM, 40000, 60000)
    ports_per_daemon = args.participants // args.daemons + 200
    first = free_port_block(ports_per_daemon * args.daemons, socket.SOCK_DGRAM, 16384, 32000)
    script = shutil.which("charter")
    command = [script] if script else [sys.executable, "-m", "cli"]
    argv = [
        *command,
        "up",
        "--daemons",
        str(args.daemons),
        "--controller-port",
        str(controller_port),
        "--registry-port",
        str(controller_port + 1),
        *(["--store", "redis", "--controllers", str(controllers), "--redis-port", str(free_port())]
          if controllers > 1 or store == "redis" else []),
        "--mediad-port",
        str(mediad_port),
        "--ports",
        f"{first}-{first + ports_per_daemon * args.daemons - 1}",
        "--state-dir",
        args.state_dir,
        "--web-port",
        "0",
        "--metrics-port",
        "0",
        "--log-level",
        "warning",
    ]
    up = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert up.stdout is not None
    deadline = time.monotonic() + 60
    for line in up.stdout:
        if b"Charter is up" in line:
            return up, f"127.0.0.1:{controller_port}"
        if time.monotonic() > deadline:
            break
    up.kill()
    raise RuntimeError("charter up did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--conferences", type=int, default=100)
    parser.add_argument("--daemons", type=int, default=2)
    parser.add_argument(
        "--concurrency",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[1, 2, 4, 8],
        help="calls in flight; a comma-separated list runs each level in turn (default 1,2,4,8)",
    )
    parser.add_argument("--controller", default="", help="use this running controller instead of starting charter up")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.controller:
        figures, code = uvloop.run(bench(args.controller, args)), 0
    else:
        up, address = start_charter(args)
        try:
            figures = uvloop.run(bench(address, args))
        finally:
            code = stop(up, 60)
    result = {
        "benchmark": "control_plane",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "setup": {
            "participants": args.participants,
            "conferences": args.conferences,
            "daemons": args.daemons,
            "tracks_per_participant": 2,
            "client": "one grpc.aio channel on uvloop, N calls in flight",
        },
        "target": {"join_p99_ms": TARGET_JOIN_P99_MS, "joins_per_second": TARGET_JOINS_PER_SECOND},
        "runs": figures,
        "clean_exit": code == 0,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"control plane: {args.participants} participants (2 tracks each) in {args.conferences} conferences "
        f"on {args.daemons} daemons; target join p99 <= {TARGET_JOIN_P99_MS:g} ms "
        f"and >= {TARGET_JOINS_PER_SECOND:g} joins/s"
    )
    for run in figures:
        for name in ("join", "leave"):
            s = run[name]
            assert isinstance(s, dict)
            met = ("target met" if run["target_met"] else "target NOT met") if name == "join" else ""
            print(
                f"  {run['concurrency']:>2} in flight  {name:<5} {s['per_second']:>7.1f}/s  "
                f"p50 {s['p50_ms']:>6.2f} ms  "
                f"p90 {s['p90_ms']:>6.2f} ms  p99 {s['p99_ms']:>6.2f} ms  max {s['max_ms']:>6.2f} ms  {met}"
            )
    print(
        f"  conferences per daemon {figures[-1]['conferences_per_daemon']}, "
        f"endpoints at peak {figures[-1]['endpoints_per_daemon_at_peak']}; charter up exited {code}"
    )
    print(f"  wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
