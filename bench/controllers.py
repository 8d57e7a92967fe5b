"""Several controllers on one Redis: join and leave rate and join latency through 1, 2 and 4
controllers (each `charter up --store redis --controllers K`, 2 media daemons, in one run),
with the same calls in flight spread over the controllers in turn, and the CPU each kind of
process used during the joins: what limits the rate on this machine.

    python -m bench.controllers [--controllers 1,2,4] [--participants 1000] [--conferences 100] [--in-flight 8]

Writes bench/results/controllers.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from bench.control_plane import ROOT, bench_once, start_charter
from charter.processes import stop

RESULTS = ROOT / "bench" / "results" / "controllers.json"
TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found = []
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        found += [int(child), *descendants(int(child))]
    return found


def kind_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    text = b" ".join(argv).decode(errors="replace")
    for kind, mark in (("redis", "redis-server"), ("controller", "-m controller"), ("mediad", "-m mediad")):
        if mark in text:
            return kind
    return "other"


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far, by kind of process; this process is the client."""
    totals: dict[str, float] = {}
    for pid in [*pids, os.getpid()]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = "client" if pid == os.getpid() else kind_of(pid)
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return totals


def measure(args: argparse.Namespace, controllers: int) -> dict[str, object]:
    up, address = start_charter(args, controllers, store="redis")
    host, port = address.rsplit(":", 1)
    addresses = [f"{host}:{int(port) + 2 * i}" for i in range(controllers)]
    try:
        pids = descendants(up.pid)
        before = cpu_seconds(pids)
        started = time.perf_counter()
        run = uvloop.run(bench_once(addresses, args, args.in_flight))
        elapsed = time.perf_counter() - started
        after = cpu_seconds(pids)
    finally:
        code = stop(up, 60)
    run["controllers"] = controllers
    run["cpu_share"] = {k: round((after[k] - before.get(k, 0.0)) / elapsed, 2) for k in sorted(after)}
    run["clean_exit"] = code == 0
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controllers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--conferences", type=int, default=100)
    parser.add_argument("--daemons", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=8, help="calls in flight, spread over the controllers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = [measure(args, k) for k in args.controllers]
    base = runs[0]["join"]["per_second"]  # type: ignore[index]
    result = {
        "benchmark": "controllers",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count()},
        "setup": {"participants": args.participants, "conferences": args.conferences, "daemons": args.daemons,
                  "in_flight": args.in_flight, "store": "redis (charter up's own redis-server)"},
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"controllers on one Redis: {args.participants} joins (2 tracks each) in {args.conferences} conferences, "
          f"{args.in_flight} in flight spread over the controllers; CPU used per second of joining, by process kind")
    for run in runs:
        join, leave = run["join"], run["leave"]
        assert isinstance(join, dict) and isinstance(leave, dict)
        cpu = "  ".join(f"{k} {v:.2f}" for k, v in run["cpu_share"].items())  # type: ignore[attr-defined]
        print(f"  {run['controllers']} controller(s): join {join['per_second']:>7.1f}/s "
              f"(x{join['per_second'] / base:.2f})  p50 {join['p50_ms']:>6.2f} ms  p99 {join['p99_ms']:>6.2f} ms  "
              f"leave {leave['per_second']:>7.1f}/s   cpu: {cpu}")
    print(f"  wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if all(r["clean_exit"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
