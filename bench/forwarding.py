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
Per relay and setting: the highest offered input rate with under 0.5 % loss (searched with
short trials), p50/p99 added latency at half that rate (minus the median latency of a
direct generator->receiver path) and the relay's CPU from /proc/PID/stat. Then the cost per
packet with 10,000 endpoints open on the Charter daemon against with only the active ones.

Run from the repository root:  python -m bench.forwarding [--quick]
Writes bench/results/forwarding[-quick].json and .png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._loadgen import LoadGen, expected_payload
from bench.relay_process import RelayConfig, Subscriber, die_with_parent
from bench.rtpengine_peer import Call, RtpEngine
from charter.suites import generate_key
from mediad.srtp import create_session

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM")
SHORT_SUITE = {"AES_CM_128_HMAC_SHA1_80": "AES-CM", "AEAD_AES_128_GCM": "GCM"}
FANOUTS = (1, 3, 10)
RTP_SIZE = 1200
LOSS_LIMIT = 0.005
PUBLISHER_SSRC = 0x5EED0001
RELAY_MODULES = {"charter": "bench.charter_relay", "reference": "bench.ref_relay", "python": "bench.py_forwarder"}
# Offered input rates the load process sustains (send + receive on one core), per fan-out.
CEILING = {1: 300_000, 3: 160_000, 10: 64_000}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets the issue sets.
TARGET_VS_REFERENCE = 0.9
TARGET_VS_RTPENGINE = 3.0
TARGET_P99_MS = 0.5
TARGET_SCALE = 0.85


# --- the machine --------------------------------------------------------------------------

def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy_seconds(cpu: int) -> tuple[float, float]:
    """(busy, total) seconds of one core since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return (sum(v[:8]) - idle) / CLK_TCK, sum(v[:8]) / CLK_TCK
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def ksoftirqd_pid(cpu: int) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == f"ksoftirqd/{cpu}":
                        return int(entry)
            except OSError:
                continue
    return None


def wait_for_quiet(cpus: tuple[int, ...], *, limit: float = 0.35, patience: float = 20.0,
                   verbose: bool = True) -> float:
    """Wait (up to `patience` s) until the cores are mostly idle; returns their busy share."""
    deadline = time.monotonic() + patience
    while True:
        before = [core_busy_seconds(c) for c in cpus]
        time.sleep(0.4)
        after = [core_busy_seconds(c) for c in cpus]
        busy = max((a[0] - b[0]) / max(1e-9, a[1] - b[1]) for a, b in zip(after, before))
        if busy <= limit or time.monotonic() > deadline:
            return busy
        if verbose:
            print(f"    (other work keeps the cores {busy:.0%} busy: waiting)", flush=True)


# --- relays under test ----------------------------------------------------------------------

class ProcessRelay:
    """A relay in its own process (bench/relay_process.py line protocol)."""

    def __init__(self, kind: str, config: RelayConfig, *, nice: int = 0, timeout: float = 60.0) -> None:
        self.kind = kind
        self.config = config
        self.nice = nice
        self.timeout = timeout
        self.restarts = 0
        self.verified: list[dict[str, Any]] = []
        self._start()

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            [sys.executable, "-m", RELAY_MODULES[self.kind], self.config.to_json()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env,
            preexec_fn=self._preexec,
        )
        try:
            info = json.loads(self._readline(self.timeout))
        except BaseException:
            self.close()
            raise
        self.pid: int = info["pid"]
        self.address: tuple[str, int] = (info["publisher"][0], int(info["publisher"][1]))
        self.info = info
        self._session: tuple[Any, ...] | None = None

    def _preexec(self) -> None:
        die_with_parent()
        if self.nice:
            os.nice(self.nice)

    def restart(self) -> None:
        """A relay whose inbound session lost the rollover counter (it missed more than
        2^15 packets in a row, e.g. while another process held its core) rejects every
        packet from then on: only a new session brings it back."""
        self.close()
        self.restarts += 1
        self._start()

    @property
    def fresh(self) -> bool:
        """No packet sent yet: its outbound streams are still in their first rollover, so a
        new pylibsrtp session can decrypt what the receivers captured."""
        return self._session is None

    def rejected(self) -> int:
        """Packets the relay refused (authentication, replay, ...); the generator never
        sends a bad one, so any is a lost SRTP context."""
        stats = self.stats()
        if "drops" in stats:
            return int(sum(stats["drops"].values()))
        return int(stats.get("dropped", 0))

    def _readline(self, timeout: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"{self.kind} relay gave no answer (exit code {self.process.poll()})")
        return line

    def before_trial(self, gen: LoadGen) -> None:
        # Several relays may share one generator: each resumes its own outbound session, so
        # its replay window and rollover counter see one continuous stream.
        gen.set_target(*self.address)
        if self._session is None:
            gen.set_key(self.config.suite, self.config.publisher_key, first_index=random.randrange(1000, 30000))
        else:
            gen.restore_session(self._session)

    def after_trial(self, gen: LoadGen) -> None:
        self._session = gen.save_session()

    @property
    def subscriber_keys(self) -> list[bytes]:
        return [s.key for s in self.config.subscribers]

    @property
    def subscriber_ssrcs(self) -> list[int] | None:
        return [s.ssrc for s in self.config.subscribers]

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return json.loads(self._readline(10.0))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                if self.process.stdin:
                    self.process.stdin.close()
                self.process.wait(10)
            except (subprocess.TimeoutExpired, OSError):
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()


class RtpEngineRelay:
    """rtpengine with a fresh re-keying call per trial: a run that overloads it can leave the
    call discarding, so no trial inherits another's state."""

    kind = "rtpengine"

    def __init__(self, suite: str, gen: LoadGen, cpu: int, nice: int = 0) -> None:
        self.suite = suite
        self.verified: list[dict[str, Any]] = []
        self.engine = RtpEngine(cpu=cpu, nice=nice)
        self.pid = self.engine.pid
        self.source = gen.source_address
        self.receiver = gen.receiver_addresses[0]
        self.call: Call | None = None

    def before_trial(self, gen: LoadGen) -> None:
        if self.call is not None:
            self.engine.delete(self.call)
        self.call = self.engine.call(self.suite, self.source, self.receiver)
        gen.set_target(*self.call.relay_address)
        gen.set_key(self.suite, self.call.publisher_key, first_index=random.randrange(1000, 30000))

    @property
    def subscriber_keys(self) -> list[bytes]:
        assert self.call is not None
        return [self.call.subscriber_key]

    @property
    def subscriber_ssrcs(self) -> list[int] | None:
        return None  # rtpengine keeps the publisher's SSRC

    def after_trial(self, gen: LoadGen) -> None:
        pass

    fresh = True  # a new call per trial

    def rejected(self) -> int:
        return 0

    def restart(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.engine.close()


Relay = ProcessRelay | RtpEngineRelay


# --- trials -----------------------------------------------------------------------------------

@dataclass
class Bench:
    quick: bool
    duration: float
    burst: int
    load_cpu: int
    relay_cpu: int
    nice: int = 0
    ksoftirqd: int | None = None

    def trial(self, gen: LoadGen, relay: Relay, rate: float, *, burst: int | None = None,
              duration: float | None = None) -> dict[str, Any]:
        """One trial, repeated (after waiting for the cores to calm down) while it is disturbed:
        another process on the relay's core, the load process stalled, or the relay lost its
        SRTP context."""
        attempts = 2 if self.quick else 3
        for attempt in range(attempts):
            if attempt:
                wait_for_quiet((self.load_cpu, self.relay_cpu), patience=5.0 if self.quick else 10.0, verbose=False)
            result = self._trial(gen, relay, rate, burst=burst, duration=duration)
            result["attempt"] = attempt
            if result["desync"]:
                print(f"      (relay rejected {result['rejected']} packets: SRTP context lost, restarting it)", flush=True)
                relay.restart()
            elif not result["disturbed"]:
                return result
            if attempt < attempts - 1:
                why = "desync" if result["desync"] else (
                    f"load process behind by up to {result['max_lag_ms']:.0f} ms (longest send "
                    f"{result['max_send_call_ms']:.1f} ms, receive pass {result['max_receive_pass_ms']:.1f} ms), "
                    f"{result['load_core_other_pct']:.0f} % other load on its core"
                    if not result["generator_ok"] else f"{result['other_load_pct']:.0f} % other load on the relay core")
                print(f"      (retrying {rate:,.0f} pps: {why})", flush=True)
        return result

    def _trial(self, gen: LoadGen, relay: Relay, rate: float, *, burst: int | None,
               duration: float | None) -> dict[str, Any]:
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
        result["generator_ok"] = (result["achieved_pps"] >= 0.97 * rate and result["receiver_overflows"] == 0
                                  and result["max_lag_ms"] < 5.0)
        result["passed"] = (result["loss"] < LOSS_LIMIT and result["achieved_pps"] >= 0.97 * rate
                            and result["send_errors"] == 0 and not result["desync"])
        result["disturbed"] = not result["passed"] and (
            not result["generator_ok"] or result["other_load_pct"] >= 20.0 or result["desync"])
        if capture:
            result["verified"] = verify_samples(result.pop("samples"), relay, gen)
            relay.verified.append(result["verified"])
        return result

    def find_max(self, gen: LoadGen, relay: Relay, *, guess: float, ceiling: float, probe: bool,
                 burst: int | None = None, max_trials: int | None = None) -> tuple[float, list[dict[str, Any]]]:
        """Highest offered rate (packets/s in) with loss under 0.5 %: an optional overload
        probe to estimate the capacity, then geometric steps and bisection."""
        trials: list[dict[str, Any]] = []
        max_trials = max_trials or (4 if self.quick else 7)
        lo, hi = 0.0, math.inf
        rate = guess
        if probe:
            first = self.trial(gen, relay, ceiling, burst=burst, duration=0.4 if self.quick else 0.5)
            trials.append(first)
            self._note(relay, first)
            if first["passed"]:
                return ceiling, trials
            hi = ceiling
            rate = min(ceiling * 0.9, max(2000.0, 0.9 * first["forwarded_in_pps"]))
        # Keep going past max_trials (a little) until something passed.
        inconclusive = 0
        while len(trials) < max_trials or (lo == 0.0 and len(trials) < max_trials + 3):
            result = self.trial(gen, relay, rate, burst=burst)
            trials.append(result)
            self._note(relay, result)
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
        return lo, trials

    def latency(self, gen: LoadGen, relay: Relay, rate: float, *, repeats: int,
                burst: int | None = None) -> list[dict[str, Any]]:
        return [self.trial(gen, relay, rate, burst=burst, duration=min(self.duration, 1.0)) for _ in range(repeats)]

    def _note(self, relay: Relay, r: dict[str, Any]) -> None:
        flag = "pass" if r["passed"] else ("fail" if not r["disturbed"] else "fail, disturbed")
        line = (f"      {r['offered_pps']:>9,.0f} pps in: loss {100 * r['loss']:6.2f} %  {flag:<15}"
                f" fwd {r['forwarded_in_pps']:>9,.0f}"
                f" relay CPU {r['relay_cpu_pct']:5.1f} %  core {r['relay_core_busy_pct']:5.1f} %"
                f"  p50 {r.get('latency_p50_us', 0):8.0f} us")
        print(line, flush=True)


def verify_samples(samples: list[list[bytes]], relay: Relay, gen: LoadGen) -> dict[str, Any]:
    """Decrypt the first packets each receiver got with that subscriber's key (pylibsrtp)
    and check payload and SSRC: the relay really re-keyed and forwarded the content."""
    suite = relay.config.suite if isinstance(relay, ProcessRelay) else relay.suite
    payload = expected_payload(gen.rtp_size)
    ok, failures = 0, []
    ssrcs = relay.subscriber_ssrcs
    for r, (packets, key) in enumerate(zip(samples, relay.subscriber_keys)):
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
        "relay_us_per_packet_in": summarize([t["relay_us_per_packet_in"] for t in trials if t["relay_us_per_packet_in"]]),
    }


def strip(trial: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in trial.items() if k != "samples"}


# --- the suites -------------------------------------------------------------------------------

def relay_config(kind: str, suite: str, gen: LoadGen, cpu: int, idle: int = 0) -> RelayConfig:
    subscribers = [
        Subscriber(generate_key(suite), 0x50000000 + i, addr) for i, addr in enumerate(gen.receiver_addresses)
    ]
    return RelayConfig(suite, generate_key(suite), PUBLISHER_SSRC, subscribers, idle_endpoints=idle, cpu=cpu)


def measure_relay(bench: Bench, gen: LoadGen, kind: str, suite: str, fanout: int, direct_p50: float,
                  *, guess: float | None, idle: int = 0, burst: int | None = None) -> dict[str, Any]:
    label = f"{kind}{' + %d idle endpoints' % idle if idle else ''} {SHORT_SUITE[suite]} 1:{fanout}"
    if burst and burst != bench.burst:
        label += f" (bursts of {burst})"
    print(f"  {label}", flush=True)
    wait_for_quiet((bench.load_cpu, bench.relay_cpu))
    relay: Relay
    if kind == "rtpengine":
        relay = RtpEngineRelay(suite, gen, bench.relay_cpu, bench.nice)
    else:
        relay = ProcessRelay(kind, relay_config(kind, suite, gen, bench.relay_cpu, idle), nice=bench.nice)
    try:
        repeats = 1 if kind != "rtpengine" or bench.quick else 3
        maxima, trials = [], []
        for _ in range(repeats):
            # rtpengine does not degrade gracefully under overload: search it from below.
            best, found = bench.find_max(
                gen, relay, guess=guess or 10_000, ceiling=CEILING[fanout], probe=kind != "rtpengine",
                burst=burst, max_trials=(5 if bench.quick else 9) if kind == "rtpengine" else None,
            )
            maxima.append(best)
            trials += found
        best = statistics.median(maxima)
        at_max = ([t for t in trials if t["passed"] and t["offered_pps"] == best]
                  or [t for t in trials if t["passed"] and t["offered_pps"] == max(maxima)])
        lat_rate = max(1000.0, best / 2)
        lat = bench.latency(gen, relay, lat_rate, repeats=1 if bench.quick else 3, burst=burst)
        stats = relay.stats()
        verified = relay.verified
    finally:
        relay.close()
    failures = [f for v in verified for f in v["failures"]]
    result = {
        "relay": kind, "suite": suite, "fanout": fanout, "idle_endpoints": idle,
        "burst": burst or bench.burst,
        "max_in_pps": best, "max_out_pps": best * fanout, "maxima_in_pps": maxima,
        # Passed at the highest rate the load process offers: the relay's limit is higher.
        "at_load_ceiling": best >= CEILING[fanout],
        "relay_cpu_pct_at_max": at_max[0]["relay_cpu_pct"] if at_max else None,
        "relay_core_busy_pct_at_max": at_max[0]["relay_core_busy_pct"] if at_max else None,
        "relay_us_per_packet_in_at_max": at_max[0]["relay_us_per_packet_in"] if at_max else None,
        "latency": latency_summary(lat, direct_p50),
        "verified_packets": sum(v["decrypted_ok"] for v in verified),
        "verify_failures": failures,
        "relay_stats": stats,
        "trials": [strip(t) for t in trials],
        "latency_trials": [strip(t) for t in lat],
    }
    l = result["latency"]
    print(f"    -> {best:,.0f} pps in / {best * fanout:,.0f} out; at half rate p50 {l['p50_us'] or 0:.0f} us, "
          f"p99 {l['p99_us'] or 0:.0f} us; CPU at max {result['relay_cpu_pct_at_max'] or 0:.0f} %; "
          f"verified {result['verified_packets']} packets{', FAILURES: ' + '; '.join(failures) if failures else ''}",
          flush=True)
    return result


def guarded(results: dict[str, Any], measure: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> None:
    """Run one relay's measurement; a failure is reported and recorded, and the run goes on."""
    try:
        results["relays"].append(measure(*args, **kwargs))
    except Exception as exc:
        label = " ".join(str(a) for a in args[2:5])
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
    return {"burst": burst, "p50_us": statistics.median(r["latency_p50_us"] for r in runs),
            "p99_us": statistics.median(r["latency_p99_us"] for r in runs)}


def measure_scale(bench: Bench, gen: LoadGen, suite: str, endpoints: int, active_max: float | None) -> dict[str, Any]:
    """Per-packet cost of the Charter daemon with `endpoints` open against only the active ones,
    at the same offered rate, alternating the two daemons trial by trial."""
    fanout = len(gen.receiver_addresses)
    idle = endpoints - 1 - fanout
    print(f"  charter {SHORT_SUITE[suite]} 1:{fanout}: {endpoints:,} endpoints ({idle:,} idle) against {1 + fanout}",
          flush=True)
    wait_for_quiet((bench.load_cpu, bench.relay_cpu))
    small = ProcessRelay("charter", relay_config("charter", suite, gen, bench.relay_cpu), nice=bench.nice)
    big: ProcessRelay | None = None
    try:
        big = ProcessRelay("charter", relay_config("charter", suite, gen, bench.relay_cpu, idle), nice=bench.nice,
                           timeout=120)
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
        big_max, big_trials = (None, []) if bench.quick else bench.find_max(
            gen, big, guess=active_max, ceiling=CEILING[fanout], probe=True)
    finally:
        small.close()
        if big is not None:
            big.close()
    cost_small, cost_big = summarize(costs["active_only"]), summarize(costs["with_idle"])
    result = {
        "suite": suite, "fanout": fanout, "endpoints": endpoints, "idle_endpoints": idle, "rate_pps": rate,
        "us_per_packet_active_only": cost_small, "us_per_packet_with_idle": cost_big,
        "cost_ratio": (cost_small / cost_big) if cost_small and cost_big else None,
        "max_in_pps_active_only": active_max, "max_in_pps_with_idle": big_max,
        "max_ratio": big_max / active_max if active_max and big_max else None,
        "verified_packets": sum(v["decrypted_ok"] for r in (small, big) for v in r.verified),
        "verify_failures": [f for r in (small, big) for v in r.verified for f in v["failures"]],
        "trials": {name: [strip(t) for t in v] for name, v in runs.items()},
        "max_trials_with_idle": [strip(t) for t in big_trials],
    }
    print(f"    -> {cost_small or 0:.2f} us/packet with {1 + fanout} endpoints, {cost_big or 0:.2f} with {endpoints:,}: "
          f"ratio {result['cost_ratio'] or 0:.2f}; max {active_max:,.0f} vs {big_max or 0:,.0f} pps in", flush=True)
    return result


# --- report -----------------------------------------------------------------------------------

def ratios(results: dict[str, Any]) -> dict[str, Any]:
    by = {(r["relay"], r["suite"], r["fanout"], r["burst"]): r for r in results["relays"]}
    burst = results["params"]["burst"]
    out: dict[str, Any] = {"charter_vs_reference": [], "charter_vs_python": [], "charter_vs_rtpengine": [],
                           "p99_added_latency_ms": []}
    for suite in results["params"]["suites"]:
        for fanout in results["params"]["fanouts"]:
            c = by.get(("charter", suite, fanout, burst))
            if not c:
                continue
            for other, key in (("reference", "charter_vs_reference"), ("python", "charter_vs_python")):
                o = by.get((other, suite, fanout, burst))
                if o and o["max_in_pps"]:
                    out[key].append({"suite": suite, "fanout": fanout, "ratio": c["max_in_pps"] / o["max_in_pps"],
                                     "load_limited": c["at_load_ceiling"] and o["at_load_ceiling"]})
            if c["latency"]["added_p99_us"] is not None:
                out["p99_added_latency_ms"].append({"suite": suite, "fanout": fanout,
                                                    "ms": c["latency"]["added_p99_us"] / 1000})
        e = by.get(("rtpengine", suite, 1, 1))
        if e and e["max_in_pps"]:
            for b in (1, burst):
                c = by.get(("charter", suite, 1, b))
                if c:
                    out["charter_vs_rtpengine"].append({"suite": suite, "charter_burst": b,
                                                        "ratio": c["max_in_pps"] / e["max_in_pps"]})
    if results.get("scale"):
        out["scale_cost_ratio"] = results["scale"]["cost_ratio"]
        out["scale_max_ratio"] = results["scale"]["max_ratio"]
    return out


def print_report(results: dict[str, Any]) -> None:
    print("\nHighest rate with < 0.5 % loss (packets/s), added latency at half that rate, relay CPU")
    header = f"{'relay':<10} {'suite':<7} {'fan':>4} {'burst':>5} {'in pps':>9} {'out pps':>9} {'CPU@max':>8} {'us/pkt':>7} {'p50 add':>8} {'p99 add':>8}"
    print(header)
    print("-" * len(header))
    for r in results["relays"]:
        lat = r["latency"]
        cpu = r["relay_cpu_pct_at_max"]
        upp = r["relay_us_per_packet_in_at_max"]
        ge = ">=" if r["at_load_ceiling"] else ""
        print(f"{r['relay']:<10} {SHORT_SUITE[r['suite']]:<7} {'1:%d' % r['fanout']:>4} {r['burst']:>5} "
              f"{ge + format(r['max_in_pps'], ',.0f'):>9} {ge + format(r['max_out_pps'], ',.0f'):>9} "
              f"{'%7.0f%%' % cpu if cpu is not None else '      -':>8} {'%7.2f' % upp if upp else '      -':>7} "
              f"{'%6.0fus' % lat['added_p50_us'] if lat['added_p50_us'] is not None else '-':>8} "
              f"{'%6.0fus' % lat['added_p99_us'] if lat['added_p99_us'] is not None else '-':>8}")
    d = results["direct"]
    print(">= : passed at the highest rate the load process offers (the relay's limit is higher)")
    for e in results["errors"]:
        print(f"ERROR {e}")
    print("direct path (no relay): " + ", ".join(f"bursts of {x['burst']}: p50 {x['p50_us']:.1f} us, p99 {x['p99_us']:.1f} us" for x in d))
    rt = results["ratios"]
    print("\nRatios (target)")
    for x in rt["charter_vs_reference"]:
        mark = "ok" if x["ratio"] >= TARGET_VS_REFERENCE else "BELOW"
        if x.get("load_limited"):
            mark += " (both at the load ceiling)"
        print(f"  Charter / reference relay  {SHORT_SUITE[x['suite']]:<7} 1:{x['fanout']:<3} {x['ratio']:5.2f}  (>= {TARGET_VS_REFERENCE})  {mark}")
    for x in rt["charter_vs_rtpengine"]:
        mark = "ok" if x["ratio"] >= TARGET_VS_RTPENGINE else "BELOW"
        print(f"  Charter / rtpengine        {SHORT_SUITE[x['suite']]:<7} 1:1  {x['ratio']:5.2f}  (>= {TARGET_VS_RTPENGINE}, Charter with bursts of {x['charter_burst']})  {mark}")
    for x in rt["charter_vs_python"]:
        print(f"  Charter / Python forwarder {SHORT_SUITE[x['suite']]:<7} 1:{x['fanout']:<3} {x['ratio']:5.2f}")
    for x in rt["p99_added_latency_ms"]:
        mark = "ok" if x["ms"] <= TARGET_P99_MS else "ABOVE"
        print(f"  Charter p99 added latency  {SHORT_SUITE[x['suite']]:<7} 1:{x['fanout']:<3} {x['ms']:5.3f} ms  (<= {TARGET_P99_MS} ms)  {mark}")
    if "scale_cost_ratio" in rt and rt["scale_cost_ratio"] is not None:
        s = results["scale"]
        mark = "ok" if rt["scale_cost_ratio"] >= TARGET_SCALE else "BELOW"
        print(f"  per-packet cost, {1 + s['fanout']} endpoints / {s['endpoints']:,} endpoints: {rt['scale_cost_ratio']:5.2f}  "
              f"(>= {TARGET_SCALE})  {mark}   [{s['us_per_packet_active_only']:.2f} vs {s['us_per_packet_with_idle']:.2f} us/packet; "
              f"max rate ratio {format(rt['scale_max_ratio'], '.2f') if rt['scale_max_ratio'] else 'not measured'}]")


def markdown_table(results: dict[str, Any]) -> str:
    """The table of bench/README.md."""
    lines = [
        "| relay | suite | fan-out | load | max in pps | max out pps | relay CPU at max | CPU us / packet in | added p50 / p99 at half rate |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["relays"]:
        ge = "≥ " if r["at_load_ceiling"] else ""
        lat = r["latency"]
        cpu = r["relay_cpu_pct_at_max"]
        upp = r["relay_us_per_packet_in_at_max"]
        lines.append(
            f"| {r['relay']} | {SHORT_SUITE[r['suite']]} | 1:{r['fanout']} | bursts of {r['burst']} "
            f"| {ge}{r['max_in_pps']:,.0f} | {ge}{r['max_out_pps']:,.0f} "
            f"| {f'{cpu:.0f} %' if cpu is not None else '-'} | {f'{upp:.2f}' if upp else '-'} "
            f"| {lat['added_p50_us']:.0f} / {lat['added_p99_us']:.0f} us |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = results["params"]
    burst = params["burst"]
    kinds = [k for k in ("charter", "reference", "python") if any(r["relay"] == k for r in results["relays"])]
    colors = {"charter": "#1f77b4", "reference": "#7f7f7f", "python": "#ff7f0e", "rtpengine": "#2ca02c"}
    groups = [(s, f) for s in params["suites"] for f in params["fanouts"]]
    by = {(r["relay"], r["suite"], r["fanout"], r["burst"]): r for r in results["relays"]}
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6))
    ax = axes[0]
    series = kinds + (["rtpengine"] if any(r["relay"] == "rtpengine" for r in results["relays"]) else [])
    width = 0.8 / max(1, len(series))
    for k, kind in enumerate(series):
        for g, (suite, fanout) in enumerate(groups):
            r = by.get((kind, suite, fanout, 1 if kind == "rtpengine" else burst))
            if not r:
                continue
            x = g + (k - (len(series) - 1) / 2) * width
            ax.bar([x], [r["max_out_pps"]], width, color=colors[kind], hatch="//" if r["at_load_ceiling"] else None,
                   label=(f"{kind} (bursts of 1)" if kind == "rtpengine" else kind) if g == 0 else None)
            if kind == "rtpengine":
                ax.text(x, r["max_out_pps"], f"{r['max_out_pps'] / 1000:.0f}k", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{SHORT_SUITE[s]}\n1:{f}" for s, f in groups])
    ax.set_title("Highest forwarded packets/s out (< 0.5 % loss)\nhatched: the load process's limit, not the relay's")
    ax.set_ylabel("packets/s")
    ax.legend(fontsize=8)
    width = 0.8 / max(1, len(kinds))
    ax = axes[1]
    for k, kind in enumerate(kinds):
        for g, (suite, fanout) in enumerate(groups):
            r = by.get((kind, suite, fanout, burst))
            if r and r["latency"]["added_p99_us"] is not None:
                x = g + (k - (len(kinds) - 1) / 2) * width
                ax.bar([x], [r["latency"]["added_p99_us"] / 1000], width, color=colors[kind],
                       alpha=0.45, label=f"{kind} p99" if g == 0 else None)
                ax.bar([x], [max(0.0, r["latency"]["added_p50_us"]) / 1000], width, color=colors[kind],
                       label=f"{kind} p50" if g == 0 else None)
    ax.axhline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1, label="p99 target")
    ax.set_xticks(range(len(groups)), [f"{SHORT_SUITE[s]}\n1:{f}" for s, f in groups])
    ax.set_title("Added latency at half the highest rate (p50 solid, p99 light)")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    rt = results["ratios"]
    labels, values, targets = [], [], []
    for x in rt["charter_vs_reference"]:
        labels.append(f"/ reference {SHORT_SUITE[x['suite']]} 1:{x['fanout']}")
        values.append(x["ratio"])
        targets.append(TARGET_VS_REFERENCE)
    for x in rt["charter_vs_rtpengine"]:
        if x["charter_burst"] == 1:
            labels.append(f"/ rtpengine {SHORT_SUITE[x['suite']]} 1:1")
            values.append(x["ratio"])
            targets.append(TARGET_VS_RTPENGINE)
    if rt.get("scale_cost_ratio"):
        labels.append(f"cost, {1 + results['scale']['fanout']} / {results['scale']['endpoints']:,} endpoints")
        values.append(rt["scale_cost_ratio"])
        targets.append(TARGET_SCALE)
    bars = ax.bar(range(len(values)), values, color=["#2ca02c" if v >= t else "#d62728" for v, t in zip(values, targets)])
    ax.scatter(range(len(targets)), targets, marker="_", s=500, color="black", zorder=5, label="target")
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=35, ha="right")
    ax.set_title("Charter's ratios against their targets")
    ax.legend(fontsize=8)
    fig.suptitle(f"Charter forwarding benchmark: {RTP_SIZE}-byte RTP, SRTP re-keyed per subscriber, "
                 f"relay on one core, bursts of {burst}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one suite, shorter trials and searches (about a minute)")
    parser.add_argument("--suites", nargs="+", choices=SUITES)
    parser.add_argument("--fanouts", nargs="+", type=int, choices=FANOUTS)
    parser.add_argument("--relays", nargs="+", default=["charter", "reference", "python", "rtpengine", "scale"],
                        choices=["charter", "reference", "python", "rtpengine", "scale"])
    parser.add_argument("--duration", type=float, help="seconds per trial (1.5, quick 0.8)")
    parser.add_argument("--burst", type=int, default=8, help="packets per sendmmsg burst of the load (default 8)")
    parser.add_argument("--endpoints", type=int, default=10_000, help="endpoints open in the scale test")
    parser.add_argument("--load-cpu", type=int, default=0)
    parser.add_argument("--relay-cpu", type=int, default=1)
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness of the load process and the relays, so that other work on the "
                             "shared cores disturbs the trials less (default -10; 0 to leave it)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: print the report of an earlier run and redraw its plot")
    args = parser.parse_args(argv)
    if args.report:
        earlier = json.loads(args.report.read_text())
        print_report(earlier)
        print("\n" + markdown_table(earlier))
        plot(earlier, args.report.with_suffix(".png"))
        return 0

    suites = tuple(args.suites or ((SUITES[0],) if args.quick else SUITES))
    fanouts = tuple(args.fanouts or FANOUTS)
    bench = Bench(quick=args.quick, duration=args.duration or (0.8 if args.quick else 1.5), burst=args.burst,
                  load_cpu=args.load_cpu, relay_cpu=args.relay_cpu, nice=args.nice,
                  ksoftirqd=ksoftirqd_pid(args.relay_cpu))
    # SIGTERM unwinds like Ctrl-C, through the finally blocks that stop every relay.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {args.load_cpu})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "params": {"suites": suites, "fanouts": fanouts, "rtp_size": RTP_SIZE, "loss_limit": LOSS_LIMIT,
                   "trial_seconds": bench.duration, "burst": bench.burst, "quick": bench.quick,
                   "load_cpu": bench.load_cpu, "relay_cpu": bench.relay_cpu, "nice": bench.nice,
                   "command": "python -m bench.forwarding " + " ".join(argv if argv is not None else sys.argv[1:])},
        "relays": [],
        "errors": [],
    }
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
                for kind in ("reference", "charter", "python"):
                    if kind not in args.relays or (kind == "python" and bench.quick and fanout != 1):
                        continue
                    guarded(results, measure_relay, bench, gens[fanout], kind, suite, fanout,
                            direct_p50[bench.burst], guess=None)
            if "rtpengine" in args.relays and 1 in fanouts:
                # rtpengine drops bursts: paced load, bursts of 1, and Charter under the same load.
                guarded(results, measure_relay, bench, gens[1], "rtpengine", suite, 1, direct_p50[1],
                        guess=15_000, burst=1)
                if "charter" in args.relays and bench.burst != 1:
                    guarded(results, measure_relay, bench, gens[1], "charter", suite, 1, direct_p50[1],
                            guess=None, burst=1)
        if "scale" in args.relays:
            suite = suites[0]
            fanout = 3 if 3 in fanouts else fanouts[0]
            prior = next((r["max_in_pps"] for r in results["relays"]
                          if r["relay"] == "charter" and r["suite"] == suite and r["fanout"] == fanout
                          and r["burst"] == bench.burst), None)
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
    failures = [f for r in results["relays"] + ([results["scale"]] if results.get("scale") else [])
                for f in r["verify_failures"]]
    if failures:
        print("VERIFICATION FAILED: " + "; ".join(failures[:5]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
