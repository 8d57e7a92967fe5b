"""The WebRTC benchmark: how fast one media daemon lets browsers in (ICE-lite + DTLS-SRTP
handshakes), and what a burst of handshakes costs the calls it already forwards.

A real `charter mediad --controller ''` runs pinned to one core (taskset); this process (the
gRPC client and the compiled SRTP load generator, bench/_loadgen.pyx) and the handshake client
process (bench/webrtc_browser.py) run on the other. WebRTC endpoints are made over gRPC as
the controller makes a browser's (MediaDaemon.CreateEndpoint with `webrtc`); per endpoint the
client does what a browser does: a STUN Binding request with USE-CANDIDATE, MESSAGE-INTEGRITY
and FINGERPRINT, then a DTLS 1.2 client handshake (use_srtp SRTP_AES128_CM_SHA1_80, a
self-signed certificate whose fingerprint the endpoint was given) until it can export the
SRTP keys.

1. Handshakes: one after the other (concurrency 1), then bursts of 50 started at once.
   Handshakes/s, median and p99 handshake time (first check sent -> keys exported), the
   daemon's CPU per handshake (/proc/PID/task/*/schedstat) and its own `dtls_longest_step_us`
   (GetStats: the longest its loop spent in one DTLS step, i.e. how long a handshake can hold
   up forwarding).
2. Forwarding during handshakes: an SDES publisher -> subscriber route on the same daemon
   carries a paced SRTP load (1200-byte packets, 50k pps by default); loss and latency in
   windows without handshakes, against windows in which 50 handshakes start at once.
   Target: under 0.5 % loss.
3. DTLS-SRTP keys: a WebRTC publisher and a WebRTC subscriber connect; SRTP protected with
   the keys the publisher's client exported reaches the subscriber's client, which decrypts
   it with the keys it exported (the keys the daemon installed are the exported ones); then
   the load runs through the DTLS-keyed publisher.

Rounds and windows that other work on the shared cores disturbed are repeated (within a
budget) and counted; bench/webrtc_measure.py says how.

Run from the repository root:  python -m bench.webrtc [--quick]
Writes bench/results/webrtc[-quick].json. The daemon is stopped at the end, also on errors,
Ctrl-C and SIGTERM; every load stops by itself.

The parts: bench/webrtc_browser.py (the browser side, and the client process),
bench/webrtc_peers.py (the daemon and client processes, the gRPC calls),
bench/webrtc_measure.py (the three parts); this module is the command line and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._loadgen import LoadGen  # noqa: E402 (after the path fix-up above)
from bench.machine import ksoftirqd_pid, wait_for_quiet  # noqa: E402
from bench.settings import RTP_SIZE  # noqa: E402
from bench.webrtc_measure import (  # noqa: E402
    CHECK_PACKETS,
    SUITE,
    TARGET_LOSS,
    RetryBudget,
    Route,
    Settings,
    dtls_keyed,
    forwarding_during_handshakes,
    handshakes,
    measure_direct,
    print_handshakes,
)
from bench.webrtc_peers import Browsers, Daemon  # noqa: E402


def guarded(results: dict[str, Any], name: str, part: Callable[[], Any]) -> Any:
    """One failed part must not lose the others' figures (Ctrl-C still ends the run)."""
    try:
        return part()
    except Exception as exc:
        print(f"    !! {name} failed: {exc!r}", flush=True)
        results["errors"].append(f"{name}: {exc!r}")
        return None


def pct(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def num(x: float | None, fmt: str = ",.0f", unit: str = "") -> str:
    return "-" if x is None else f"{x:{fmt}}{unit}"


def print_report(results: dict[str, Any]) -> None:
    p = results["params"]
    print(f"\nWebRTC on one media daemon (core {p['daemon_cpu']}; the load and the clients on core {p['load_cpu']}), "
          f"{results['started']}")
    hs = results.get("handshakes") or {}
    if hs.get("sequential") or hs.get("burst"):
        print("\n| handshakes (STUN check + DTLS 1.2, CM80 keys exported) | handshakes/s | median | p99 "
              "| daemon CPU / handshake | daemon busy | client CPU / handshake | failed | rounds disturbed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, name in (("sequential", "concurrency 1"), ("burst", "all at once")):
            r = hs.get(key)
            if not r:
                continue
            label = (f"{name} ({r['handshakes']}, one at a time)" if key == "sequential"
                     else f"{name} ({r['rounds']} bursts of {r['per_round']})")
            rows = [(label, r, f"{r['rounds_disturbed_and_repeated']} repeated, {r['rounds_still_disturbed']} kept")]
            if r["undisturbed"]:
                rows.append((f"{name}, undisturbed rounds only", r["undisturbed"], "0"))
            for text, x, disturbed in rows:
                cells = [text, num(x["per_second"]), num(x["p50_ms"], ".1f", " ms"), num(x["p99_ms"], ".1f", " ms"),
                         num(x["daemon_cpu_ms_per_handshake"], ".2f", " ms"), num(x["daemon_busy_pct"], ".0f", " %"),
                         num(x["client_cpu_ms_per_handshake"], ".2f", " ms"), str(x["failed"]), disturbed]
                print("| " + " | ".join(cells) + " |")
    steps = hs.get("longest_step_us")
    if steps:
        print("\nThe daemon's longest DTLS step (GetStats dtls_longest_step_us, a running maximum of wall time): "
              + ", ".join(f"{k} {v:,} us" for k, v in steps.items()))
    fwd = results.get("forwarding")
    if fwd:
        q, b = fwd["quiet"], fwd["handshakes"]
        print(f"\nForwarding {fwd['rate_pps']:,.0f} pps of {fwd['rtp_size']}-byte SRTP (an SDES publisher -> "
              f"subscriber route on the same daemon), windows of {fwd['window_s']:g} s; in every other window "
              f"{fwd['burst']} handshakes start at once {fwd['handshakes_at_s']:g} s in:")
        print("\n| window | windows | loss | lost | dropped at the daemon's socket | p99 | added p99 | worst p99 | max "
              "| daemon CPU | disturbed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        summaries = [("no handshakes", q), (f"{fwd['burst']} handshakes at once", b)]
        if q["still_disturbed"] or b["still_disturbed"]:
            summaries += [("no handshakes, undisturbed windows only", fwd["quiet_undisturbed"]),
                     (f"{fwd['burst']} handshakes at once, undisturbed windows only", fwd["handshakes_undisturbed"])]
        for name, x in summaries:
            cells = [name, str(x["windows"]), pct(x["loss"]), str(x["lost"]), str(x["publisher_socket_drops"]),
                     num(x["p99_us"], ".0f", " us"), num(x["added_p99_us"], ".0f", " us"),
                     num(x["worst_p99_us"], ".0f", " us"), num(x["max_us"] and x["max_us"] / 1e3, ".1f", " ms"),
                     num(x["daemon_cpu_pct"], ".0f", " %"), str(x["still_disturbed"])]
            print("| " + " | ".join(cells) + " |")
        ratio = ("the quiet windows lost nothing" if fwd["loss_ratio"] is None
                 else f"{fwd['loss_ratio']:.1f}x the quiet windows' loss")
        print(f"\nLoss while {fwd['burst']} handshakes arrive: {pct(b['loss'])} at {fwd['rate_pps']:,.0f} pps "
              f"(target < {100 * fwd['target_loss']:g} %: {'met' if fwd['passed'] else 'NOT met'}); {ratio} "
              f"({pct(q['loss'])}); p99 {num(fwd['p99_ratio'], '.1f', 'x')} the quiet windows'. The handshakes "
              f"took {num(b.get('handshakes_span_ms'), '.0f', ' ms')} (median): if every loss fell in them, "
              f"{pct(b.get('loss_during_handshakes'), 1)} of the packets sent meanwhile.")
        steps = hs.get("longest_step_us") or {}
        calm = fwd["handshakes_undisturbed"] if fwd["handshakes_undisturbed"]["windows"] else b
        if calm["max_us"] is not None and steps:
            print(f"Forwarding was held up for as long as {calm['max_us'] / 1e3:.1f} ms (the longest a packet waited, "
                  f"{'undisturbed windows' if calm is not b else 'all windows'}); the daemon's longest single "
                  f"DTLS step: {max(steps.values()) / 1e3:.1f} ms (wall time, any preemption included).")
        if q["still_disturbed"] or b["still_disturbed"]:
            print("(Disturbed windows: other work held the daemon's core or the load fell behind even after the "
                  "repeats; the undisturbed rows count every window and repeat that nothing disturbed.)")
    keyed = results.get("dtls_keys")
    if keyed:
        print(f"\nDTLS-SRTP keys: {keyed.get('decrypted_ok', 0)}/{keyed['sent']} packets through a WebRTC publisher "
              f"decrypted by the WebRTC subscriber with the keys both clients exported"
              + (f"; FAILURES {keyed['failures']}" if keyed.get("failures") else ""))
        load = keyed.get("load")
        if load:
            print(f"The load through the DTLS-keyed publisher: {load['achieved_pps']:,.0f} pps, loss "
                  f"{pct(load['loss'])}, added p99 {num(load['added_p99_us'], '.0f', ' us')}, "
                  f"{load['verified']['decrypted_ok']} packets decrypted at the receiver"
                  + (f" (disturbed: {', '.join(load['disturbed_by'])})" if load["disturbed"] else ""))
    daemon = results.get("daemon", {})
    if "webrtc" in daemon:
        print(f"\nThe daemon's counters: webrtc {daemon['webrtc']}; drops {daemon.get('drops') or 'none'}")
    log = daemon.get("log", {})
    if log:
        problems = log.get("problems", {})
        print(f"\nThe daemon's log: {log.get('lines')}"
              + ("; " + "; ".join(f"{m} (x{v['count']})" for m, v in problems.items()) if problems else "")
              + f"; exit code {daemon.get('exit_code')}")
    if results["errors"]:
        print("\nErrors: " + "; ".join(results["errors"]))


def verification_failures(results: dict[str, Any]) -> list[str]:
    failures = []
    keyed = results.get("dtls_keys") or {}
    if keyed.get("decrypted_ok", 0) < CHECK_PACKETS or keyed.get("failures"):
        failures.append(f"DTLS-SRTP keys: {keyed.get('decrypted_ok', 0)}/{CHECK_PACKETS} decrypted "
                        f"{keyed.get('failures', '')}")
    for part, verified in (("forwarding", (results.get("forwarding") or {}).get("verified")),
                           ("DTLS-keyed load", (keyed.get("load") or {}).get("verified"))):
        if verified is not None and (verified["failures"] or not verified["decrypted_ok"]):
            failures.append(f"{part}: {verified}")
    for key in ("sequential", "burst"):
        r = (results.get("handshakes") or {}).get(key)
        if r and r["failed"]:
            failures.append(f"handshakes ({key}): {r['failed']} failed: {r['errors']}")
    return failures


def measure(daemon: Daemon, browsers: Browsers, settings: Settings, results: dict[str, Any]) -> None:
    """The three parts, in order, on one daemon; a part that fails is noted in the errors."""
    direct_p50 = results["direct"]["p50_us"]
    results["daemon"] = {"argv": daemon.argv, "pid": daemon.pid}
    print(f"charter mediad (pid {daemon.pid}) on core {settings.daemon_cpu}, gRPC {daemon.listen}, "
          f"UDP {daemon.ports}; handshake client (pid {browsers.pid}) on core {settings.load_cpu}", flush=True)
    steps: dict[str, int] = {}
    hs: dict[str, Any] = {"longest_step_us": steps}
    results["handshakes"] = hs

    print("\n1. Handshakes", flush=True)
    wait_for_quiet(settings.cores, patience=settings.patience)
    hs["first"] = handshakes(daemon, browsers, settings, "first", count=1, concurrency=1, rounds=1)
    steps["first handshake"] = hs["first"]["dtls_longest_step_us"]
    sequential = guarded(results, "handshakes at concurrency 1", lambda: handshakes(
        daemon, browsers, settings, "seq", count=settings.burst, concurrency=1,
        rounds=max(1, round(settings.sequential / settings.burst))))
    if sequential:
        hs["sequential"] = sequential
        print_handshakes("concurrency 1", sequential)
        steps["after concurrency 1"] = sequential["dtls_longest_step_us"]
    wait_for_quiet(settings.cores, patience=settings.patience)
    burst = guarded(results, "handshakes all at once", lambda: handshakes(
        daemon, browsers, settings, "burst", count=settings.burst, concurrency=settings.burst, rounds=settings.rounds))
    if burst:
        hs["burst"] = burst
        print_handshakes(f"{settings.burst} at once", burst)
        steps[f"after {settings.burst} at once"] = burst["dtls_longest_step_us"]

    print(f"\n2. Forwarding {settings.rate:,.0f} pps while {settings.burst} handshakes arrive at once", flush=True)
    gen = LoadGen(1, rtp_size=RTP_SIZE)
    try:
        wait_for_quiet(settings.cores, patience=settings.patience)
        route: Route | None = guarded(results, "the SDES route", lambda: Route(daemon, gen))
        if route is not None:
            forwarding = guarded(results, "forwarding during handshakes", lambda: forwarding_during_handshakes(
                daemon, browsers, gen, route, settings, direct_p50))
            if forwarding:
                results["forwarding"] = forwarding
        steps["after the forwarding windows"] = daemon.webrtc_stats().get("dtls_longest_step_us", 0)

        print("\n3. DTLS-SRTP keys", flush=True)
        keyed = guarded(results, "DTLS-SRTP keys", lambda: dtls_keyed(
            daemon, gen, route if "forwarding" in results else None, settings, direct_p50))
        if keyed:
            results["dtls_keys"] = keyed
    finally:
        gen.close()
    stats = daemon.stats()
    results["daemon"].update(webrtc=dict(stats.webrtc), drops=dict(stats.totals.drops), rtcp=dict(stats.rtcp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer handshakes and windows (about 30 s)")
    parser.add_argument("--sequential", type=int,
                        help="handshakes one after the other, in rounds of --burst (400, quick 100)")
    parser.add_argument("--burst", type=int, default=50, help="handshakes started at once (default 50)")
    parser.add_argument("--rounds", type=int, help="bursts of part 1 (20, quick 5)")
    parser.add_argument("--rate", type=float, default=50_000, help="packets/s of the forwarding load (default 50k)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per forwarding window (default 1)")
    parser.add_argument("--lead", type=float, default=0.25, help="seconds into a window the handshakes start")
    parser.add_argument("--pairs", type=int, help="forwarding windows without and with handshakes (10, quick 3)")
    parser.add_argument("--retries", type=int,
                        help="repeats of a round or window that other work disturbed (2, quick 1)")
    parser.add_argument("--daemon-cpu", type=int, default=1)
    parser.add_argument("--load-cpu", type=int, default=0)
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness of the daemon, the load and the clients (default -10; 0 to leave it)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="the daemon's log level (default info, as deployed: two lines per handshake)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: print the report of an earlier run")
    args = parser.parse_args(argv)
    if args.report:
        print_report(json.loads(args.report.read_text()))
        return 0
    if args.lead >= args.window:
        parser.error("--lead must be shorter than --window")
    budget = 10.0 if args.quick else 60.0
    settings = Settings(
        quick=args.quick,
        sequential=args.sequential or (100 if args.quick else 400),
        burst=args.burst,
        rounds=args.rounds or (5 if args.quick else 20),
        rate=args.rate,
        window=args.window,
        lead=args.lead,
        pairs=args.pairs or (3 if args.quick else 10),
        retries=args.retries if args.retries is not None else (1 if args.quick else 2),
        budget=RetryBudget(budget),
        daemon_cpu=args.daemon_cpu,
        load_cpu=args.load_cpu,
        nice=args.nice,
        ksoftirqd=ksoftirqd_pid(args.daemon_cpu),
    )
    # SIGTERM unwinds like Ctrl-C, through the finally block that stops the daemon.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {settings.load_cpu})
    if settings.nice:
        os.setpriority(os.PRIO_PROCESS, 0, settings.nice)
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "params": {**{k: v for k, v in settings.__dict__.items() if k != "budget"}, "retry_budget_s": budget,
                   "suite": SUITE, "rtp_size": RTP_SIZE, "loss_limit": TARGET_LOSS,
                   "command": "python -m bench.webrtc " + " ".join(argv if argv is not None else sys.argv[1:])},
        "errors": [],
    }
    print("Direct generator -> receiver path (the latency baseline)", flush=True)
    results["direct"] = measure_direct(settings.rate, 1 if settings.quick else 3)
    print(f"  p50 {results['direct']['p50_us']:.1f} us, p99 {results['direct']['p99_us']:.1f} us", flush=True)

    daemon: Daemon | None = None
    browsers: Browsers | None = None
    try:
        # Both children before the first gRPC channel (fork), then the channel.
        daemon = Daemon(settings.daemon_cpu, nice=settings.nice, log_level=args.log_level)
        browsers = Browsers(settings.load_cpu, nice=settings.nice)
        daemon.connect()
        measure(daemon, browsers, settings, results)
    finally:
        if browsers is not None:
            browsers.close()
        if daemon is not None:
            code = daemon.close()
            results.setdefault("daemon", {}).update(exit_code=code, log=daemon.log_findings())
            daemon.remove_log()
    results["elapsed_s"] = time.monotonic() - started
    print_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("webrtc-quick.json" if settings.quick else "webrtc.json")
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nWrote {path} in {results['elapsed_s']:.0f} s")
    failures = verification_failures(results)
    if failures:
        print("VERIFICATION FAILED: " + "; ".join(failures))
        return 1
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
