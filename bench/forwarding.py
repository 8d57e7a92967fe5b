"""The forwarding benchmark: how many SRTP packets per second Charter's forwarding core
re-keys and fans out, against what this machine can do and what others do.

For 1200-byte RTP packets (SRTP adds the auth tag) at fan-out 1, 3 and 10, with
AES_CM_128_HMAC_SHA1_80 and AEAD_AES_128_GCM, each relay runs in its own process pinned to
one core while the load generator and receivers (one compiled process, this one) run on the
other:
- charter:   mediad._forward.Forwarder on uvloop (bench/charter_relay.py)
- reference: the same work in a plain compiled recvmmsg/sendmmsg loop (bench/_refrelay.pyx)
- python:    a uvloop forwarder calling pylibsrtp's Python API (bench/py_forwarder.py)
- rtpengine: rtpengine-daemon, userspace, re-keying, 1:1 only (bench/rtpengine_peer.py)
- charter@base, with --baseline DIR: the Charter relay of another checkout (an earlier commit,
  built in place), side by side with this one's, trial by trial, for a before/after ratio
Per relay and setting: the highest offered input rate with under 0.5 % loss (searched with
short trials), p50/p99 added latency at half that rate (minus the median latency of a
direct generator->receiver path) and the relay's CPU from /proc/PID/stat. Then the cost per
packet with 10,000 endpoints open on the Charter daemon against with only the active ones.

Run from the repository root:  python -m bench.forwarding [--quick]
Writes bench/results/forwarding[-quick].json and .png.

The parts: bench/settings.py (suites, fan-outs, ceilings, targets), bench/machine.py (/proc),
bench/relays.py (the relay processes and rtpengine), bench/trials.py (a trial, the search for
the highest rate), bench/measure.py (per relay and setting, the direct path, the endpoint
scale), bench/report.py (ratios, tables, the figure); this module is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._loadgen import LoadGen  # noqa: E402 (after the path fix-up above)
from bench.machine import ksoftirqd_pid  # noqa: E402
from bench.measure import guarded, measure_direct, measure_relay, measure_relays, measure_scale  # noqa: E402
from bench.relays import BASELINE, Baseline  # noqa: E402
from bench.report import markdown_table, plot, print_report, ratios  # noqa: E402
from bench.settings import FANOUTS, LOSS_LIMIT, RTP_SIZE, SUITES  # noqa: E402
from bench.trials import Bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one suite, shorter trials and searches (about a minute)")
    parser.add_argument("--suites", nargs="+", choices=SUITES)
    parser.add_argument("--fanouts", nargs="+", type=int, choices=FANOUTS)
    parser.add_argument(
        "--relays",
        nargs="+",
        default=["charter", "reference", "python", "rtpengine", "scale"],
        choices=["charter", "webrtc", "reference", "python", "rtpengine", "scale"],
        help="webrtc: Charter with endpoints keyed after a handshake and routes with the receiver's "
        "payload type and no header extensions, as for browsers (default: all but webrtc)",
    )
    parser.add_argument("--duration", type=float, help="seconds per trial (1.5, quick 0.8)")
    parser.add_argument("--burst", type=int, default=8, help="packets per sendmmsg burst of the load (default 8)")
    parser.add_argument("--endpoints", type=int, default=10_000, help="endpoints open in the scale test")
    parser.add_argument("--load-cpu", type=int, default=0)
    parser.add_argument("--relay-cpu", type=int, default=1)
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of the load process and the relays, so that other work on the "
        "shared cores disturbs the trials less (default -10; 0 to leave it)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the report of an earlier run and redraw its plot",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help=f"another checkout of this repository (an earlier commit, extensions built in place with "
        f"`python setup.py build_ext --inplace`): its Charter relay runs as {BASELINE} beside "
        f"this one's, trial by trial, and the ratios include charter / {BASELINE}",
    )
    args = parser.parse_args(argv)
    if args.report:
        earlier = json.loads(args.report.read_text())
        print_report(earlier)
        print("\n" + markdown_table(earlier))
        plot(earlier, args.report.with_suffix(".png"))
        return 0

    baseline: Baseline | None = None
    if args.baseline:
        try:
            baseline = Baseline.open(args.baseline)
        except ValueError as exc:
            parser.error(f"--baseline: {exc}")
    suites = tuple(args.suites or ((SUITES[0],) if args.quick else SUITES))
    fanouts = tuple(args.fanouts or FANOUTS)
    bench = Bench(
        quick=args.quick,
        duration=args.duration or (0.8 if args.quick else 1.5),
        burst=args.burst,
        load_cpu=args.load_cpu,
        relay_cpu=args.relay_cpu,
        nice=args.nice,
        ksoftirqd=ksoftirqd_pid(args.relay_cpu),
    )
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop every relay.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {args.load_cpu})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "params": {
            "suites": suites,
            "fanouts": fanouts,
            "rtp_size": RTP_SIZE,
            "loss_limit": LOSS_LIMIT,
            "trial_seconds": bench.duration,
            "burst": bench.burst,
            "quick": bench.quick,
            "load_cpu": bench.load_cpu,
            "relay_cpu": bench.relay_cpu,
            "nice": bench.nice,
            "command": "python -m bench.forwarding " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "relays": [],
        "errors": [],
    }
    if baseline:
        results["baseline"] = baseline.to_json()
    print("Direct generator -> receiver path (the latency baseline)", flush=True)
    results["direct"] = [measure_direct(bench, bench.burst)]
    if "rtpengine" in args.relays and bench.burst != 1:
        results["direct"].append(measure_direct(bench, 1))
    direct_p50 = {d["burst"]: d["p50_us"] for d in results["direct"]}
    print("  " + ", ".join(f"bursts of {d['burst']}: p50 {d['p50_us']:.1f} us" for d in results["direct"]))

    gens: dict[int, LoadGen] = {}
    try:
        for fanout in fanouts:
            gens[fanout] = LoadGen(fanout, rtp_size=RTP_SIZE)
        for suite in suites:
            print(f"\n{suite}", flush=True)
            for fanout in fanouts:
                kinds = [
                    kind
                    for kind in ("reference", "charter", "webrtc", "python")
                    if kind in args.relays and not (kind == "python" and bench.quick and fanout != 1)
                ]
                if baseline is None:
                    for kind in kinds:
                        guarded(
                            results,
                            measure_relay,
                            bench,
                            gens[fanout],
                            kind,
                            suite,
                            fanout,
                            direct_p50[bench.burst],
                            guess=None,
                        )
                else:
                    # The baseline's Charter beside this one's and the others, one trial of each in turn.
                    kinds.insert(kinds.index("charter") + 1 if "charter" in kinds else len(kinds), BASELINE)
                    guarded(
                        results,
                        measure_relays,
                        bench,
                        gens[fanout],
                        kinds,
                        suite,
                        fanout,
                        direct_p50[bench.burst],
                        guess=None,
                        baseline=baseline,
                    )
            if "rtpengine" in args.relays and 1 in fanouts:
                # rtpengine drops bursts: paced load, bursts of 1, and Charter under the same load.
                guarded(
                    results, measure_relay, bench, gens[1], "rtpengine", suite, 1, direct_p50[1], guess=15_000, burst=1
                )
                if "charter" in args.relays and bench.burst != 1:
                    guarded(
                        results, measure_relay, bench, gens[1], "charter", suite, 1, direct_p50[1], guess=None, burst=1
                    )
        if "scale" in args.relays:
            suite = suites[0]
            fanout = 3 if 3 in fanouts else fanouts[0]
            prior = next(
                (
                    r["max_in_pps"]
                    for r in results["relays"]
                    if r["relay"] == "charter"
                    and r["suite"] == suite
                    and r["fanout"] == fanout
                    and r["burst"] == bench.burst
                ),
                None,
            )
            print("\nEndpoint scale", flush=True)
            try:
                results["scale"] = measure_scale(bench, gens[fanout], suite, args.endpoints, prior)
            except Exception as exc:  # one failed part must not lose the others' figures
                print(f"    !! failed: {exc!r}", flush=True)
                results["errors"].append(f"scale: {exc!r}")
    finally:
        for gen in gens.values():
            gen.close()
    results["elapsed_s"] = time.monotonic() - started
    results["ratios"] = ratios(results)
    print_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "forwarding-quick" if bench.quick else "forwarding"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=list) + "\n")
    plot(results, args.out / f"{stem}.png")
    print(f"\nWrote {args.out / (stem + '.json')} and .png in {results['elapsed_s']:.0f} s")
    failures = [
        f
        for r in results["relays"] + ([results["scale"]] if results.get("scale") else [])
        for f in r["verify_failures"]
    ]
    if failures:
        print("VERIFICATION FAILED: " + "; ".join(failures[:5]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
