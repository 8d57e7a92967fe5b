"""The forwarding benchmark's measurements: one relay's highest rate, latency and CPU at a
suite and fan-out (or several relays side by side, trial by trial), the direct generator ->
receiver path, and the cost per packet with 10,000 endpoints open."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench._loadgen import LoadGen
from bench.machine import wait_for_quiet
from bench.relays import BASELINE, Baseline, ProcessRelay, Relay, relay_config, start_relay
from bench.settings import CEILING, RTP_SIZE, SHORT_SUITE, SUITES
from bench.trials import Bench, Plan, latency_summary, strip, summarize
from charter.suites import generate_key


def measure_relay(
    bench: Bench,
    gen: LoadGen,
    kind: str,
    suite: str,
    fanout: int,
    direct_p50: float,
    *,
    guess: float | None,
    idle: int = 0,
    burst: int | None = None,
) -> dict[str, Any]:
    """One relay on its own."""
    [result] = measure_relays(bench, gen, [kind], suite, fanout, direct_p50, guess=guess, idle=idle, burst=burst)
    return result


def measure_relays(
    bench: Bench,
    gen: LoadGen,
    kinds: list[str],
    suite: str,
    fanout: int,
    direct_p50: float,
    *,
    guess: float | None,
    idle: int = 0,
    burst: int | None = None,
    baseline: Baseline | None = None,
) -> list[dict[str, Any]]:
    """Each relay's highest rate, then its latency at half that rate. With several relays
    they run side by side, one trial of each in turn, searches and latency trials alike."""
    names = [f"{BASELINE} ({baseline.rev})" if kind == BASELINE and baseline else kind for kind in kinds]
    label = f"{', '.join(names)}{f' + {idle} idle endpoints' if idle else ''} {SHORT_SUITE[suite]} 1:{fanout}"
    if burst and burst != bench.burst:
        label += f" (bursts of {burst})"
    if len(kinds) > 1:
        label += ", interleaved trial by trial"
    print(f"  {label}", flush=True)
    wait_for_quiet((bench.load_cpu, bench.relay_cpu))
    relays: list[Relay] = []
    try:
        for kind in kinds:
            relays.append(start_relay(kind, suite, gen, bench.relay_cpu, nice=bench.nice, idle=idle, baseline=baseline))
        plans: list[tuple[Relay, Plan]] = []
        for kind, relay in zip(kinds, relays, strict=True):
            # rtpengine does not degrade gracefully under overload: search it from below.
            plans.append(
                (
                    relay,
                    bench.searches(
                        1 if kind != "rtpengine" or bench.quick else 3,
                        guess=guess or 10_000,
                        ceiling=CEILING[fanout],
                        probe=kind != "rtpengine",
                        max_trials=(5 if bench.quick else 9) if kind == "rtpengine" else None,
                    ),
                )
            )
        searched = bench.run_plans(gen, plans, burst=burst)
        bests = [statistics.median(maxima) for maxima, _ in searched]
        lat_duration = min(bench.duration, 1.0)
        latencies = bench.run_plans(
            gen,
            [
                (relay, bench.at_rate(max(1000.0, best / 2), 1 if bench.quick else 3, duration=lat_duration))
                for relay, best in zip(relays, bests, strict=True)
            ],
            burst=burst,
            note=False,
        )
        stats = [relay.stats() for relay in relays]
        verified = [relay.verified for relay in relays]
    finally:
        for relay in relays:
            relay.close()
    results = []
    for i, kind in enumerate(kinds):
        maxima, trials = searched[i]
        result = relay_result(
            kind,
            suite,
            fanout,
            idle,
            burst or bench.burst,
            maxima,
            trials,
            latencies[i][1],
            direct_p50,
            stats[i],
            verified[i],
        )
        if kind == BASELINE and baseline:
            result["rev"] = baseline.rev
        lat, failures = result["latency"], result["verify_failures"]
        best = result["max_in_pps"]
        print(
            f"    {names[i] + ' ' if len(kinds) > 1 else ''}-> {best:,.0f} pps in / {best * fanout:,.0f} out; "
            f"at half rate p50 {lat['p50_us'] or 0:.0f} us, "
            f"p99 {lat['p99_us'] or 0:.0f} us; CPU at max {result['relay_cpu_pct_at_max'] or 0:.0f} %; "
            f"verified {result['verified_packets']} packets"
            f"{', FAILURES: ' + '; '.join(failures) if failures else ''}",
            flush=True,
        )
        results.append(result)
    return results


def relay_result(
    kind: str,
    suite: str,
    fanout: int,
    idle: int,
    burst: int,
    maxima: list[float],
    trials: list[dict[str, Any]],
    lat: list[dict[str, Any]],
    direct_p50: float,
    stats: dict[str, Any],
    verified: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the results file keeps of one relay at one setting."""
    best = statistics.median(maxima)
    at_max = [t for t in trials if t["passed"] and t["offered_pps"] == best] or [
        t for t in trials if t["passed"] and t["offered_pps"] == max(maxima)
    ]
    return {
        "relay": kind,
        "suite": suite,
        "fanout": fanout,
        "idle_endpoints": idle,
        "burst": burst,
        "max_in_pps": best,
        "max_out_pps": best * fanout,
        "maxima_in_pps": maxima,
        # Passed at the highest rate the load process offers: the relay's limit is higher.
        "at_load_ceiling": best >= CEILING[fanout],
        "relay_cpu_pct_at_max": at_max[0]["relay_cpu_pct"] if at_max else None,
        "relay_core_busy_pct_at_max": at_max[0]["relay_core_busy_pct"] if at_max else None,
        "relay_us_per_packet_in_at_max": at_max[0]["relay_us_per_packet_in"] if at_max else None,
        "latency": latency_summary(lat, direct_p50),
        "verified_packets": sum(v["decrypted_ok"] for v in verified),
        "verify_failures": [f for v in verified for f in v["failures"]],
        "relay_stats": stats,
        "trials": [strip(t) for t in trials],
        "latency_trials": [strip(t) for t in lat],
    }


def guarded(results: dict[str, Any], measure: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run one measurement (of one relay, or of several side by side); a failure is reported
    and recorded, and the run goes on."""
    try:
        measured = measure(*args, **kwargs)
        results["relays"] += measured if isinstance(measured, list) else [measured]
    except Exception as exc:
        label = " ".join("+".join(a) if isinstance(a, list) else str(a) for a in args[2:5])
        print(f"    !! {label} failed: {exc!r}", flush=True)
        results["errors"].append(f"{label}: {exc!r}")


def measure_direct(bench: Bench, burst: int) -> dict[str, Any]:
    """The generator -> receiver path without a relay, measured the same way."""
    gen = LoadGen(1, rtp_size=RTP_SIZE)
    try:
        gen.set_target(*gen.receiver_addresses[0])
        gen.set_key(SUITES[0], generate_key(SUITES[0]))
        runs = []
        for _ in range(1 if bench.quick else 3):
            gen.prepare(20_000, 1.0)
            runs.append(gen.run(burst=burst))
    finally:
        gen.close()
    return {
        "burst": burst,
        "p50_us": statistics.median(r["latency_p50_us"] for r in runs),
        "p99_us": statistics.median(r["latency_p99_us"] for r in runs),
    }


def measure_scale(bench: Bench, gen: LoadGen, suite: str, endpoints: int, active_max: float | None) -> dict[str, Any]:
    """Per-packet cost of the Charter daemon with `endpoints` open against only the active ones,
    at the same offered rate, alternating the two daemons trial by trial."""
    fanout = len(gen.receiver_addresses)
    idle = endpoints - 1 - fanout
    print(
        f"  charter {SHORT_SUITE[suite]} 1:{fanout}: {endpoints:,} endpoints ({idle:,} idle) against {1 + fanout}",
        flush=True,
    )
    wait_for_quiet((bench.load_cpu, bench.relay_cpu))
    small = ProcessRelay("charter", relay_config(suite, gen, bench.relay_cpu), nice=bench.nice)
    big: ProcessRelay | None = None
    try:
        big = ProcessRelay("charter", relay_config(suite, gen, bench.relay_cpu, idle), nice=bench.nice, timeout=120)
        if big.info.get("endpoints") != endpoints:
            raise RuntimeError(f"the daemon opened {big.info.get('endpoints')} endpoints, not {endpoints}")
        # The two daemons share one set of receivers: each gets its own generator key/target
        # before its trials (set_key restarts the packet index, so the other's late packets
        # are never counted).
        if active_max is None:
            active_max, _ = bench.find_max(gen, small, guess=30_000, ceiling=CEILING[fanout], probe=True)
        rate = 0.6 * active_max
        costs: dict[str, list[float]] = {"active_only": [], "with_idle": []}
        runs: dict[str, list[dict[str, Any]]] = {"active_only": [], "with_idle": []}
        for _ in range(2 if bench.quick else 4):
            for name, relay in (("active_only", small), ("with_idle", big)):
                t = bench.trial(gen, relay, rate)
                bench._note(relay, t)
                runs[name].append(t)
                if t["relay_us_per_packet_in"]:
                    costs[name].append(t["relay_us_per_packet_in"])
        big_max, big_trials = (
            (None, [])
            if bench.quick
            else bench.find_max(gen, big, guess=active_max, ceiling=CEILING[fanout], probe=True)
        )
    finally:
        small.close()
        if big is not None:
            big.close()
    cost_small, cost_big = summarize(costs["active_only"]), summarize(costs["with_idle"])
    result = {
        "suite": suite,
        "fanout": fanout,
        "endpoints": endpoints,
        "idle_endpoints": idle,
        "rate_pps": rate,
        "us_per_packet_active_only": cost_small,
        "us_per_packet_with_idle": cost_big,
        "cost_ratio": (cost_small / cost_big) if cost_small and cost_big else None,
        "max_in_pps_active_only": active_max,
        "max_in_pps_with_idle": big_max,
        "max_ratio": big_max / active_max if active_max and big_max else None,
        "verified_packets": sum(v["decrypted_ok"] for r in (small, big) for v in r.verified),
        "verify_failures": [f for r in (small, big) for v in r.verified for f in v["failures"]],
        "trials": {name: [strip(t) for t in v] for name, v in runs.items()},
        "max_trials_with_idle": [strip(t) for t in big_trials],
    }
    print(
        f"    -> {cost_small or 0:.2f} us/packet with {1 + fanout} endpoints, {cost_big or 0:.2f} with {endpoints:,}: "
        f"ratio {result['cost_ratio'] or 0:.2f}; max {active_max:,.0f} vs {big_max or 0:,.0f} pps in",
        flush=True,
    )
    return result
