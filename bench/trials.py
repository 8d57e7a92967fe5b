"""Trials and searches of the forwarding benchmark: one trial at an offered rate (repeated
while something other than the relay disturbs it), the search for the highest rate with
under 0.5 % loss, latency trials, and the check that receivers got really re-keyed packets.

A search is a plan: a generator that yields the (rate, duration) of its next trial and is sent
that trial's result. `Bench.run_plans` runs the plans of several relays side by side, one
trial of each in turn, so that the relays of one setting see the same moments of the machine.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from bench._loadgen import LoadGen, expected_payload
from bench.machine import core_busy_seconds, process_cpu_seconds, wait_for_quiet
from bench.relays import ProcessRelay, Relay
from bench.settings import LOSS_LIMIT, PUBLISHER_SSRC
from mediad.srtp import create_session

# Yields (offered rate, trial seconds or None for the default), is sent the trial's result.
Plan = Generator[tuple[float, float | None], dict[str, Any], Any]


@dataclass
class Bench:
    quick: bool
    duration: float
    burst: int
    load_cpu: int
    relay_cpu: int
    nice: int = 0
    ksoftirqd: int | None = None

    def trial(
        self,
        gen: LoadGen,
        relay: Relay,
        rate: float,
        *,
        burst: int | None = None,
        duration: float | None = None,
        tag: str = "",
    ) -> dict[str, Any]:
        """One trial, repeated (after waiting for the cores to calm down) while it is disturbed:
        another process on the relay's core, the load process stalled, or the relay lost its
        SRTP context. `tag` names the relay in what it prints (relays run side by side)."""
        attempts = 2 if self.quick else 3
        for attempt in range(attempts):
            if attempt:
                wait_for_quiet((self.load_cpu, self.relay_cpu), patience=5.0 if self.quick else 10.0, verbose=False)
            result = self._trial(gen, relay, rate, burst=burst, duration=duration)
            result["attempt"] = attempt
            if result["desync"]:
                print(
                    f"      {tag}(relay rejected {result['rejected']} packets: SRTP context lost, restarting it)",
                    flush=True,
                )
                relay.restart()
            elif not result["disturbed"]:
                return result
            if attempt < attempts - 1:
                why = (
                    "desync"
                    if result["desync"]
                    else (
                        f"load process behind by up to {result['max_lag_ms']:.0f} ms (longest send "
                        f"{result['max_send_call_ms']:.1f} ms, receive pass {result['max_receive_pass_ms']:.1f} ms), "
                        f"{result['load_core_other_pct']:.0f} % other load on its core"
                        if not result["generator_ok"]
                        else f"{result['other_load_pct']:.0f} % other load on the relay core"
                    )
                )
                print(f"      {tag}(retrying {rate:,.0f} pps: {why})", flush=True)
        return result

    def _trial(
        self, gen: LoadGen, relay: Relay, rate: float, *, burst: int | None, duration: float | None
    ) -> dict[str, Any]:
        capture = relay.fresh
        relay.before_trial(gen)
        gen.prepare(rate, duration or self.duration)
        rejected0 = relay.rejected()
        cpu0 = process_cpu_seconds(relay.pid)
        soft0 = process_cpu_seconds(self.ksoftirqd) if self.ksoftirqd else 0.0
        core0 = core_busy_seconds(self.relay_cpu)
        load0 = core_busy_seconds(self.load_cpu)
        self0 = process_cpu_seconds(os.getpid())
        t0 = time.monotonic()
        try:
            result = gen.run(burst=burst or self.burst, capture=capture)
        finally:
            relay.after_trial(gen)
        wall = time.monotonic() - t0
        cpu = process_cpu_seconds(relay.pid) - cpu0
        soft = (process_cpu_seconds(self.ksoftirqd) - soft0) if self.ksoftirqd else 0.0
        core1 = core_busy_seconds(self.relay_cpu)
        load1 = core_busy_seconds(self.load_cpu)
        own = process_cpu_seconds(os.getpid()) - self0
        rejected = relay.rejected() - rejected0
        fanout = len(result["received"])
        forwarded_in = sum(result["received"]) / fanout
        busy = (core1[0] - core0[0]) / max(1e-9, core1[1] - core0[1])
        result.update(
            wall_s=wall,
            relay_cpu_s=cpu,
            relay_cpu_pct=100.0 * cpu / wall,
            ksoftirqd_cpu_pct=100.0 * soft / wall,
            relay_core_busy_pct=100.0 * busy,
            other_load_pct=max(0.0, 100.0 * (busy - (cpu + soft) / wall)),
            load_core_other_pct=max(0.0, 100.0 * ((load1[0] - load0[0]) - own) / max(1e-9, load1[1] - load0[1])),
            relay_us_per_packet_in=1e6 * cpu / forwarded_in if forwarded_in else None,
            forwarded_in_pps=forwarded_in / (result["sent"] / rate) if result["sent"] else 0.0,
            rejected=rejected,
            desync=rejected > 0,
        )
        # Passed: under 0.5 % loss at the rate asked. A failure is "disturbed" (and repeated)
        # when something other than the relay may explain it: the load process stalled (a stall
        # turns the paced load into one large burst), its receivers overflowed, or other work
        # held the relay's core.
        result["generator_ok"] = (
            result["achieved_pps"] >= 0.97 * rate and result["receiver_overflows"] == 0 and result["max_lag_ms"] < 5.0
        )
        result["passed"] = (
            result["loss"] < LOSS_LIMIT
            and result["achieved_pps"] >= 0.97 * rate
            and result["send_errors"] == 0
            and not result["desync"]
        )
        result["disturbed"] = not result["passed"] and (
            not result["generator_ok"] or result["other_load_pct"] >= 20.0 or result["desync"]
        )
        if capture:
            result["verified"] = verify_samples(result.pop("samples"), relay, gen)
            relay.verified.append(result["verified"])
        return result

    # --- plans ---------------------------------------------------------------------------------

    def search(self, *, guess: float, ceiling: float, probe: bool, max_trials: int | None = None) -> Plan:
        """Highest offered rate (packets/s in) with loss under 0.5 %: an optional overload
        probe to estimate the capacity, then geometric steps and bisection."""
        count = 0
        max_trials = max_trials or (4 if self.quick else 7)
        lo, hi = 0.0, math.inf
        rate = guess
        if probe:
            first = yield ceiling, (0.4 if self.quick else 0.5)
            count += 1
            if first["passed"]:
                return ceiling
            hi = ceiling
            rate = min(ceiling * 0.9, max(2000.0, 0.9 * first["forwarded_in_pps"]))
        # Keep going past max_trials (a little) until something passed.
        inconclusive = 0
        while count < max_trials or (lo == 0.0 and count < max_trials + 3):
            result = yield rate, None
            count += 1
            if result["passed"]:
                lo = max(lo, rate)
            elif result["disturbed"] and inconclusive == 0:
                inconclusive += 1  # says nothing about the relay: once, try the same rate again
                continue
            else:
                hi = min(hi, rate)
            inconclusive = 0
            if lo >= ceiling:
                break
            if hi == math.inf:
                rate = min(ceiling, rate * 1.3)
            elif lo == 0.0:
                rate = rate * 0.75
            elif hi / lo <= (1.06 if self.quick else 1.04):
                break
            else:
                rate = math.sqrt(lo * hi)
        return lo

    def searches(self, repeats: int, **search: Any) -> Plan:
        """`repeats` searches one after the other; returns their maxima."""
        maxima = []
        for _ in range(repeats):
            maxima.append((yield from self.search(**search)))
        return maxima

    def at_rate(self, rate: float, repeats: int, duration: float | None = None) -> Plan:
        """`repeats` trials at one rate."""
        for _ in range(repeats):
            yield rate, duration

    def run_plans(
        self, gen: LoadGen, plans: list[tuple[Relay, Plan]], *, burst: int | None = None, note: bool = True
    ) -> list[tuple[Any, list[dict[str, Any]]]]:
        """Run the plans side by side, one trial of each relay in turn, until all are done:
        per plan, what it returned and its trials. With one plan: its trials in a row."""
        tagged = len(plans) > 1
        width = max(len(relay.name) for relay, _ in plans)
        tags = [f"{relay.name + ':':<{width + 1}} " if tagged else "" for relay, _ in plans]
        trials: list[list[dict[str, Any]]] = [[] for _ in plans]
        returned: list[Any] = [None] * len(plans)
        requests: dict[int, tuple[float, float | None]] = {}
        for i, (_, plan) in enumerate(plans):
            try:
                requests[i] = next(plan)
            except StopIteration as done:
                returned[i] = done.value
        while requests:
            for i in sorted(requests):
                relay, plan = plans[i]
                rate, duration = requests[i]
                result = self.trial(gen, relay, rate, burst=burst, duration=duration, tag=tags[i])
                trials[i].append(result)
                if note:
                    self._note(relay, result, tag=tags[i])
                try:
                    requests[i] = plan.send(result)
                except StopIteration as done:
                    returned[i] = done.value
                    del requests[i]
        return list(zip(returned, trials, strict=True))

    def find_max(
        self,
        gen: LoadGen,
        relay: Relay,
        *,
        guess: float,
        ceiling: float,
        probe: bool,
        burst: int | None = None,
        max_trials: int | None = None,
    ) -> tuple[float, list[dict[str, Any]]]:
        """One relay's search on its own: the highest rate and the trials."""
        plan = self.search(guess=guess, ceiling=ceiling, probe=probe, max_trials=max_trials)
        [(best, trials)] = self.run_plans(gen, [(relay, plan)], burst=burst)
        return best, trials

    def latency(
        self, gen: LoadGen, relay: Relay, rate: float, *, repeats: int, burst: int | None = None
    ) -> list[dict[str, Any]]:
        plan = self.at_rate(rate, repeats, duration=min(self.duration, 1.0))
        [(_, trials)] = self.run_plans(gen, [(relay, plan)], burst=burst, note=False)
        return trials

    def _note(self, relay: Relay, r: dict[str, Any], *, tag: str = "") -> None:
        flag = "pass" if r["passed"] else ("fail" if not r["disturbed"] else "fail, disturbed")
        line = (
            f"      {tag}{r['offered_pps']:>9,.0f} pps in: loss {100 * r['loss']:6.2f} %  {flag:<15}"
            f" fwd {r['forwarded_in_pps']:>9,.0f}"
            f" relay CPU {r['relay_cpu_pct']:5.1f} %  core {r['relay_core_busy_pct']:5.1f} %"
            f"  p50 {r.get('latency_p50_us', 0):8.0f} us"
        )
        print(line, flush=True)


def verify_samples(samples: list[list[bytes]], relay: Relay, gen: LoadGen) -> dict[str, Any]:
    """Decrypt the first packets each receiver got with that subscriber's key (pylibsrtp)
    and check payload and SSRC: the relay really re-keyed and forwarded the content."""
    suite = relay.config.suite if isinstance(relay, ProcessRelay) else relay.suite
    payload = expected_payload(gen.rtp_size)
    ok, failures = 0, []
    ssrcs = relay.subscriber_ssrcs
    for r, (packets, key) in enumerate(zip(samples, relay.subscriber_keys, strict=False)):
        session = create_session(suite, key, inbound=True)
        for packet in packets:
            try:
                plain = session.unprotect(packet)
            except Exception as exc:  # pylibsrtp.Error
                failures.append(f"receiver {r}: {exc}")
                continue
            want_ssrc = ssrcs[r] if ssrcs else PUBLISHER_SSRC
            if plain[16:] != payload:
                failures.append(f"receiver {r}: payload differs")
            elif int.from_bytes(plain[8:12], "big") != want_ssrc:
                failures.append(f"receiver {r}: SSRC {int.from_bytes(plain[8:12], 'big'):#x}, expected {want_ssrc:#x}")
            else:
                ok += 1
    return {"decrypted_ok": ok, "failures": failures[:5]}


def summarize(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def latency_summary(trials: list[dict[str, Any]], direct_p50: float) -> dict[str, Any]:
    p50 = summarize([t["latency_p50_us"] for t in trials if "latency_p50_us" in t])
    p99 = summarize([t["latency_p99_us"] for t in trials if "latency_p99_us" in t])
    return {
        "rate_pps": trials[0]["offered_pps"] if trials else None,
        "p50_us": p50,
        "p99_us": p99,
        "added_p50_us": None if p50 is None else p50 - direct_p50,
        "added_p99_us": None if p99 is None else p99 - direct_p50,
        "loss": summarize([t["loss"] for t in trials]),
        "relay_cpu_pct": summarize([t["relay_cpu_pct"] for t in trials]),
        "relay_us_per_packet_in": summarize(
            [t["relay_us_per_packet_in"] for t in trials if t["relay_us_per_packet_in"]]
        ),
    }


def strip(trial: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in trial.items() if k != "samples"}
