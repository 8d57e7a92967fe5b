"""The measurements of the WebRTC benchmark (bench/webrtc.py): handshake rounds, forwarding
windows with and without a burst of handshakes, and the check of the keys DTLS gave.

A round or window is repeated (up to `retries` times, after waiting for the cores to calm
down) when something other than the daemon may explain its figures: the daemon's event loop
waited for its core (other work held it), or the load generator fell behind (a stall turns
the paced load into one large burst). Every attempt is kept in the results."""
from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench._loadgen import LoadGen, expected_payload
from bench.machine import core_busy_seconds, process_cpu_seconds, wait_for_quiet
from bench.settings import LOSS_LIMIT, PUBLISHER_SSRC, RTP_SIZE
from bench.webrtc_browser import Handshake, dtls_context, run
from bench.webrtc_peers import Browsers, Daemon, sdes_endpoint, udp_drops, video_track
from charter.suites import generate_key
from charter.v1 import mediad_pb2
from mediad.dtls import Certificate
from mediad.srtp import create_session

SUITE = "AES_CM_128_HMAC_SHA1_80"
"""What the browsers' use_srtp offers, and the suite of the SDES route beside them."""
MEDIA_IP = "127.0.0.1"
SUBSCRIBER_SSRC = 0x50000000
KEYED_SUBSCRIBER_SSRC = 0x50000001
CHECK_PACKETS = 20
TARGET_LOSS = LOSS_LIMIT
LOOP_WAIT_LIMIT = 0.05
"""A round or window is disturbed when the daemon's loop waited for its core this share of it."""
BACKLOG_LIMIT = 400
"""... or when the load generator fell so far behind its schedule that it sent more than this
many packets at once to catch up (a stall turns the paced load into one burst): under half
of the ~900 1200-byte datagrams the daemon's publisher socket (1 MiB SO_RCVBUF) holds. While
handshakes run, the client process shares the generator's core and holds it up by about
4-6 ms (200-300 packets at 50k pps)."""


class RetryBudget:
    """Seconds that repeating disturbed rounds and windows may take in all: a machine busy
    with other work all along must not stretch a run without end."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    sequential: int
    """Handshakes one after the other (concurrency 1), in rounds of `burst`."""
    burst: int
    """Handshakes started at once."""
    rounds: int
    """Bursts of part 1."""
    rate: float
    """Packets/s of the forwarding load."""
    window: float
    """Seconds of each forwarding window."""
    lead: float
    """Seconds into a window at which its handshakes start."""
    pairs: int
    """Forwarding windows without and with handshakes, in alternation."""
    retries: int
    """Attempts more for a disturbed round or window..."""
    budget: RetryBudget
    """... while the seconds they may take in all last."""
    daemon_cpu: int
    load_cpu: int
    nice: int
    ksoftirqd: int | None = None
    """The daemon core's softirq thread (its CPU is the kernel's work for the daemon)."""

    @property
    def cores(self) -> tuple[int, int]:
        return (self.load_cpu, self.daemon_cpu)

    @property
    def patience(self) -> float:
        """Seconds to wait, before each part, for other work to leave the cores."""
        return 3.0 if self.quick else 10.0


def repeated_while_disturbed(settings: Settings, attempt: Callable[[int], dict[str, Any]]
                             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`attempt(n)` until one is not disturbed, or no retry or budget is left; (the one kept,
    the disturbed ones repeated)."""
    repeated: list[dict[str, Any]] = []
    n = 0
    while True:
        started = time.monotonic()
        result = attempt(n)
        if not result["disturbed"] or n >= settings.retries or settings.budget.left <= 0:
            return result, repeated
        repeated.append(result)
        wait_for_quiet(settings.cores, patience=1.0, verbose=False)
        settings.budget.left -= time.monotonic() - started
        n += 1


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# --- part 1: handshakes ----------------------------------------------------------------------


def handshake_round(daemon: Daemon, browsers: Browsers, conference: str, count: int,
                    concurrency: int) -> dict[str, Any]:
    """`count` new WebRTC endpoints, then their handshakes with `concurrency` in flight (all
    at once: every check and ClientHello built beforehand and sent together)."""
    at_once = concurrency >= count
    endpoints = daemon.webrtc_endpoints(conference, count, browsers.fingerprint)
    cpu0, wait0 = daemon.cpu()
    browsers.submit(MEDIA_IP, endpoints, concurrency, start_at=time.monotonic() + 0.1 if at_once else None,
                    prebuild=at_once)
    answer = browsers.result(timeout=30 + 0.2 * count)
    cpu1, wait1 = daemon.cpu()
    daemon.release(conference)
    records = answer["handshakes"]
    first = min(h["started"] for h in records)
    span = max(h["started"] + h["total_ms"] / 1e3 for h in records) - first
    waited = wait1 - wait0
    return {
        "records": records,
        "span_s": span,
        "completed": sum(h["ok"] for h in records),
        "daemon_cpu_s": cpu1 - cpu0,
        "loop_waited_ms": 1e3 * waited,
        "client_cpu_s": answer["cpu_s"],
        "client_late_ms": answer["late_ms"],
        "disturbed": waited > LOOP_WAIT_LIMIT * span,
    }


def handshakes(daemon: Daemon, browsers: Browsers, settings: Settings, label: str, *, count: int,
               concurrency: int, rounds: int) -> dict[str, Any]:
    """`rounds` rounds (each repeated while disturbed); figures over the kept ones."""
    kept: list[dict[str, Any]] = []
    disturbed = 0
    for r in range(rounds):
        def attempt(n: int, r: int = r) -> dict[str, Any]:
            return handshake_round(daemon, browsers, f"{label}-{r}-{n}", count, concurrency)

        result, repeated = repeated_while_disturbed(settings, attempt)
        kept.append(result)
        disturbed += len(repeated)
    calm = [r for r in kept if not r["disturbed"]]
    return {
        "concurrency": concurrency,
        "per_round": count,
        "rounds": rounds,
        **summarize_rounds(kept),
        "rounds_disturbed_and_repeated": disturbed,
        "rounds_still_disturbed": len(kept) - len(calm),
        "undisturbed": summarize_rounds(calm) if calm and len(calm) < len(kept) else None,
        "dtls_longest_step_us": daemon.webrtc_stats().get("dtls_longest_step_us", 0),
    }


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    records = [h for r in rounds for h in r["records"]]
    ok = [h for h in records if h["ok"]]
    times = [h["total_ms"] for h in ok]
    span = sum(r["span_s"] for r in rounds)
    daemon_cpu = sum(r["daemon_cpu_s"] for r in rounds)
    return {
        "handshakes": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": sorted({h["error"] for h in records if h["error"]})[:5],
        "per_second": len(ok) / span if span else 0.0,
        "per_second_rounds": [r["completed"] / r["span_s"] for r in rounds],
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "max_ms": max(times) if times else None,
        "ice_p50_ms": percentile([h["ice_ms"] for h in ok], 50),
        "stun_retransmits": sum(h["stun_sent"] - 1 for h in records),
        "dtls_retransmits": sum(h["dtls_retransmits"] for h in records),
        "daemon_cpu_ms_per_handshake": 1e3 * daemon_cpu / len(ok) if ok else None,
        "daemon_busy_pct": 100.0 * daemon_cpu / span if span else None,
        "loop_waited_ms": sum(r["loop_waited_ms"] for r in rounds),
        "client_cpu_ms_per_handshake": 1e3 * sum(r["client_cpu_s"] for r in rounds) / len(records) if records else None,
    }


# --- part 2: forwarding while handshakes arrive ---------------------------------------------


class Route:
    """An SDES publisher -> subscriber route on the daemon (the subscriber sends to the
    generator's receiver), and the generator aimed at its publisher."""

    def __init__(self, daemon: Daemon, gen: LoadGen) -> None:
        self.publisher_key = generate_key(SUITE)
        self.subscriber_key = generate_key(SUITE)
        publisher = sdes_endpoint(daemon, "fwd-publisher", "fwd", SUITE, self.publisher_key, generate_key(SUITE),
                                  track_ssrc=PUBLISHER_SSRC)
        sdes_endpoint(daemon, "fwd-subscriber", "fwd", SUITE, generate_key(SUITE), self.subscriber_key,
                      remote=gen.receiver_addresses[0], subscriptions=[mediad_pb2.SubscriptionSpec(
                          track_endpoint_id="fwd-publisher", track_ssrc=PUBLISHER_SSRC,
                          endpoint_id="fwd-subscriber", ssrc=SUBSCRIBER_SSRC)])
        self.port = publisher.local_address.port
        gen.set_target(MEDIA_IP, self.port)
        gen.set_key(SUITE, self.publisher_key, first_index=random.randrange(1000, 30000))


def verify(samples: list[list[bytes]], key: bytes, ssrc: int) -> dict[str, Any]:
    """Decrypt the first packets the receiver got with the subscriber's key; check SSRC and payload."""
    session = create_session(SUITE, key, inbound=True)
    payload = expected_payload(RTP_SIZE)
    ok = 0
    failures: list[str] = []
    for packet in samples[0] if samples else []:
        try:
            plain = session.unprotect(packet)
        except Exception as exc:  # pylibsrtp.Error
            failures.append(str(exc))
            continue
        if int.from_bytes(plain[8:12], "big") != ssrc:
            failures.append(f"SSRC {int.from_bytes(plain[8:12], 'big'):#x}, expected {ssrc:#x}")
        elif plain[16:] != payload:
            failures.append("payload differs")
        else:
            ok += 1
    return {"decrypted_ok": ok, "failures": failures[:5]}


def load_window(daemon: Daemon, gen: LoadGen, settings: Settings, direct_p50: float, port: int, *,
                window: float | None = None, verify_key: bytes | None = None, verify_ssrc: int = SUBSCRIBER_SSRC,
                during: Any = None) -> dict[str, Any]:
    """One window of the prepared-then-paced load and what the daemon did meanwhile; `during`
    (a callable given the window's start time) is called just before the load starts."""
    gen.prepare(settings.rate, window or settings.window)
    drops0 = udp_drops(port)
    soft0 = process_cpu_seconds(settings.ksoftirqd) if settings.ksoftirqd else 0.0
    core0 = core_busy_seconds(settings.daemon_cpu)
    cpu0, wait0 = daemon.cpu()
    t0 = time.monotonic()
    if during is not None:
        during(t0)
    load = gen.run(burst=8, capture=verify_key is not None)
    wall = time.monotonic() - t0
    cpu1, wait1 = daemon.cpu()
    core1 = core_busy_seconds(settings.daemon_cpu)
    soft = (process_cpu_seconds(settings.ksoftirqd) - soft0) if settings.ksoftirqd else 0.0
    drops1 = udp_drops(port)
    busy = (core1[0] - core0[0]) / max(1e-9, core1[1] - core0[1])
    result: dict[str, Any] = {
        "offered_pps": settings.rate,
        "achieved_pps": load["achieved_pps"],
        "sent": load["sent"],
        "lost": load["sent"] - sum(load["received"]),
        "loss": load["loss"],
        "p50_us": load.get("latency_p50_us"),
        "p99_us": load.get("latency_p99_us"),
        "p999_us": load.get("latency_p999_us"),
        "max_us": load.get("latency_max_us"),
        "added_p99_us": load["latency_p99_us"] - direct_p50 if "latency_p99_us" in load else None,
        "generator_max_lag_ms": load["max_lag_ms"],
        "receiver_overflows": load["receiver_overflows"],
        "publisher_socket_drops": None if drops0 is None or drops1 is None else drops1 - drops0,
        "daemon_cpu_pct": 100.0 * (cpu1 - cpu0) / wall,
        "loop_waited_ms": 1e3 * (wait1 - wait0),
        # Other work on the daemon's core (/proc/stat, 10 ms ticks): a figure only; what
        # disturbs the daemon is its loop waiting for the core (loop_waited_ms).
        "daemon_core_other_pct": max(0.0, 100.0 * (busy - (cpu1 - cpu0 + soft) / wall)),
    }
    reasons = {
        "load behind": result["generator_max_lag_ms"] * settings.rate / 1e3 > BACKLOG_LIMIT,
        "receiver overflowed": result["receiver_overflows"] > 0,
        "loop waited": result["loop_waited_ms"] >= 1e3 * LOOP_WAIT_LIMIT * wall,
    }
    result["disturbed_by"] = [reason for reason, present in reasons.items() if present]
    result["disturbed"] = bool(result["disturbed_by"])
    if verify_key is not None:
        result["verified"] = verify(load["samples"], verify_key, verify_ssrc)
    return result


def forwarding_window(daemon: Daemon, browsers: Browsers, gen: LoadGen, route: Route, settings: Settings,
                      direct_p50: float, *, burst: int, label: str) -> dict[str, Any]:
    """One window of the load; with `burst`, that many handshakes start at once `lead` s into it."""
    endpoints = daemon.webrtc_endpoints(label, burst, browsers.fingerprint) if burst else []
    step0 = daemon.webrtc_stats().get("dtls_longest_step_us", 0)

    def start_handshakes(t0: float) -> None:
        browsers.submit(MEDIA_IP, endpoints, burst, start_at=t0 + settings.lead, prebuild=True)

    window = load_window(daemon, gen, settings, direct_p50, route.port, during=start_handshakes if burst else None)
    window["kind"] = "handshakes" if burst else "quiet"
    if burst:
        answer = browsers.result(timeout=30)
        daemon.release(label)
        records = answer["handshakes"]
        ok = [h for h in records if h["ok"]]
        first = min(h["started"] for h in records)
        span_ms = 1e3 * (max(h["started"] + h["total_ms"] / 1e3 for h in records) - first)
        window.update(
            handshakes=len(records),
            completed=len(ok),
            errors=sorted({h["error"] for h in records if h["error"]})[:5],
            handshakes_span_ms=span_ms,
            handshake_p50_ms=percentile([h["total_ms"] for h in ok], 50),
            handshake_max_ms=max((h["total_ms"] for h in ok), default=None),
            client_late_ms=answer["late_ms"],
            dtls_retransmits=sum(h["dtls_retransmits"] for h in records),
            stun_retransmits=sum(h["stun_sent"] - 1 for h in records),
        )
        # The losses, if all of them fell while the handshakes ran: the loss a call sees then.
        during = settings.rate * span_ms / 1e3
        window["loss_during_handshakes"] = min(1.0, window["lost"] / during) if during else None
    window["dtls_longest_step_us"] = daemon.webrtc_stats().get("dtls_longest_step_us", 0)
    window["dtls_longest_step_grew"] = window["dtls_longest_step_us"] > step0
    return window


def print_handshakes(name: str, r: dict[str, Any]) -> None:
    print(f"    {name}: {r['completed']}/{r['handshakes']} completed, {r['per_second']:,.0f} handshakes/s, "
          f"median {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; daemon {r['daemon_cpu_ms_per_handshake']:.2f} ms "
          f"CPU per handshake ({r['daemon_busy_pct']:.0f} % busy), client {r['client_cpu_ms_per_handshake']:.2f} ms; "
          f"longest DTLS step so far {r['dtls_longest_step_us']:,} us"
          + (f"; {r['rounds_disturbed_and_repeated']} disturbed rounds repeated" if r["rounds_disturbed_and_repeated"]
             else ""), flush=True)
    if r["failed"]:
        print(f"      !! {r['failed']} failed: {'; '.join(r['errors'])}", flush=True)


def print_window(w: dict[str, Any]) -> None:
    line = (f"      {w['kind']:<10} {w['achieved_pps']:>7,.0f} pps  loss {100 * w['loss']:6.3f} % ({w['lost']:>5})"
            f"  p50 {w['p50_us'] or 0:5.0f} us  p99 {w['p99_us'] or 0:6.0f} us  max {(w['max_us'] or 0) / 1e3:5.1f} ms"
            f"  daemon {w['daemon_cpu_pct']:3.0f} %  loop waited {w['loop_waited_ms']:4.0f} ms"
            f"  load lag {w['generator_max_lag_ms']:4.1f} ms")
    if w["kind"] == "handshakes":
        line += f"  | {w['completed']}/{w['handshakes']} handshakes over {w['handshakes_span_ms']:.0f} ms"
        if w["errors"]:
            line += f" !! {'; '.join(w['errors'])}"
    if w["disturbed"]:
        line += f"  (disturbed: {', '.join(w['disturbed_by'])})"
    print(line, flush=True)


def summarize_windows(windows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    chosen = [w for w in windows if w["kind"] == kind]
    sent = sum(w["sent"] for w in chosen)
    lost = sum(w["lost"] for w in chosen)
    p99s = [w["p99_us"] for w in chosen if w["p99_us"] is not None]
    added = [w["added_p99_us"] for w in chosen if w["added_p99_us"] is not None]
    summary: dict[str, Any] = {
        "windows": len(chosen),
        "still_disturbed": sum(w["disturbed"] for w in chosen),
        "sent": sent,
        "lost": lost,
        "loss": lost / sent if sent else None,
        "worst_loss": max((w["loss"] for w in chosen), default=None),
        "p99_us": statistics.median(p99s) if p99s else None,
        "added_p99_us": statistics.median(added) if added else None,
        "worst_p99_us": max(p99s, default=None),
        "max_us": max((w["max_us"] for w in chosen if w["max_us"] is not None), default=None),
        "daemon_cpu_pct": statistics.median(w["daemon_cpu_pct"] for w in chosen) if chosen else None,
        "publisher_socket_drops": sum(w["publisher_socket_drops"] or 0 for w in chosen),
    }
    if kind == "handshakes" and chosen:
        spans = sum(w["handshakes_span_ms"] for w in chosen) / 1e3
        summary["handshakes_span_ms"] = statistics.median(w["handshakes_span_ms"] for w in chosen)
        summary["handshakes_completed"] = sum(w["completed"] for w in chosen)
        summary["handshakes"] = sum(w["handshakes"] for w in chosen)
        summary["loss_during_handshakes"] = min(1.0, lost / (chosen[0]["offered_pps"] * spans)) if spans else None
    return summary


def forwarding_during_handshakes(daemon: Daemon, browsers: Browsers, gen: LoadGen, route: Route,
                                 settings: Settings, direct_p50: float) -> dict[str, Any]:
    """Windows without and with a burst of handshakes, in alternation."""
    # The publisher latches onto the generator's address with the first packets; the
    # receiver's first packets are decrypted with the subscriber's key.
    warm = load_window(daemon, gen, settings, direct_p50, route.port, window=0.3, verify_key=route.subscriber_key)
    print(f"    warm-up: {warm['verified']['decrypted_ok']} packets decrypted with the subscriber's key"
          + (f", FAILURES: {warm['verified']['failures']}" if warm["verified"]["failures"] else ""), flush=True)
    windows: list[dict[str, Any]] = []
    repeated: list[dict[str, Any]] = []
    for i in range(settings.pairs):
        for burst in (0, settings.burst):
            def attempt(n: int, i: int = i, burst: int = burst) -> dict[str, Any]:
                w = forwarding_window(daemon, browsers, gen, route, settings, direct_p50,
                                      burst=burst, label=f"fwd-{i}-{n}")
                w["attempt"] = n
                print_window(w)
                return w
            kept, disturbed = repeated_while_disturbed(settings, attempt)
            windows.append(kept)
            repeated += disturbed
    quiet = summarize_windows(windows, "quiet")
    busy = summarize_windows(windows, "handshakes")
    # Every window and attempt that nothing disturbed, repeats included: on a shared machine
    # the figures of the daemon alone.
    calm = [w for w in windows + repeated if not w["disturbed"]]
    return {
        "rate_pps": settings.rate,
        "rtp_size": RTP_SIZE,
        "window_s": settings.window,
        "handshakes_at_s": settings.lead,
        "burst": settings.burst,
        "verified": warm["verified"],
        "windows": windows,
        "disturbed_and_repeated": repeated,
        "quiet": quiet,
        "handshakes": busy,
        "quiet_undisturbed": summarize_windows(calm, "quiet"),
        "handshakes_undisturbed": summarize_windows(calm, "handshakes"),
        "target_loss": TARGET_LOSS,
        "passed": busy["loss"] is not None and busy["loss"] < TARGET_LOSS,
        "loss_ratio": busy["loss"] / quiet["loss"] if quiet["loss"] else None,
        "p99_ratio": busy["p99_us"] / quiet["p99_us"] if quiet["p99_us"] and busy["p99_us"] else None,
    }


# --- part 3: the keys DTLS gave ------------------------------------------------------------


def rtp_packet(seq: int, ssrc: int, payload: bytes) -> bytes:
    return (bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big")
            + ssrc.to_bytes(4, "big") + payload)


def dtls_keyed(daemon: Daemon, gen: LoadGen, route: Route | None, settings: Settings,
               direct_p50: float) -> dict[str, Any]:
    """A WebRTC publisher and subscriber connect (their handshakes in this process); packets
    the publisher's client protects with its exported key reach the subscriber's client, which
    decrypts them with its own; then, with the SDES route of part 2, the load runs through the
    DTLS-keyed publisher to the SDES subscriber."""
    certificate = Certificate.generate("bench-browser-check")
    fingerprint = (certificate.fingerprint.algorithm, certificate.fingerprint.value)
    port_a, ufrag_a, pwd_a, remote_a = daemon.webrtc_endpoint("keyed-publisher", "keyed", fingerprint,
                                                              tracks=[video_track(PUBLISHER_SSRC)])
    port_b, ufrag_b, pwd_b, remote_b = daemon.webrtc_endpoint(
        "keyed-subscriber", "keyed", fingerprint, subscriptions=[mediad_pb2.SubscriptionSpec(
            track_endpoint_id="keyed-publisher", track_ssrc=PUBLISHER_SSRC, endpoint_id="keyed-subscriber",
            ssrc=KEYED_SUBSCRIBER_SSRC)])
    context = dtls_context(certificate)
    publisher = Handshake(0, (MEDIA_IP, port_a), ufrag_a, pwd_a, remote_a, context)
    subscriber = Handshake(1, (MEDIA_IP, port_b), ufrag_b, pwd_b, remote_b, context)
    result: dict[str, Any] = {"suite": SUITE, "sent": CHECK_PACKETS}
    try:
        run([publisher, subscriber], 2)
        states = [daemon.stub.GetEndpoint(mediad_pb2.GetEndpointRequest(endpoint_id=e), timeout=10).transport_state
                  for e in ("keyed-publisher", "keyed-subscriber")]
        result["transport_states"] = states
        if publisher.keys is None or subscriber.keys is None:
            result.update(decrypted_ok=0, failures=[publisher.error or subscriber.error or "no keys"])
            return result
        result.update(check_keys(publisher, subscriber))
        print(f"    {result['decrypted_ok']}/{CHECK_PACKETS} packets sent through a WebRTC publisher with the "
              f"key its client exported were decrypted by the WebRTC subscriber's client with the key it exported "
              f"({SUITE}; endpoints {'/'.join(states)})"
              + (f" FAILURES: {result['failures'][:3]}" if result["failures"] else ""), flush=True)
        if route is not None:
            # The load through the DTLS-keyed publisher to the SDES subscriber of part 2.
            daemon.stub.DeleteEndpoint(mediad_pb2.DeleteEndpointRequest(endpoint_id="keyed-subscriber"), timeout=10)
            daemon.stub.Subscribe(mediad_pb2.SubscribeRequest(subscriptions=[mediad_pb2.SubscriptionSpec(
                track_endpoint_id="keyed-publisher", track_ssrc=PUBLISHER_SSRC, endpoint_id="fwd-subscriber",
                ssrc=KEYED_SUBSCRIBER_SSRC)]), timeout=10)
            gen.set_target(MEDIA_IP, port_a)
            gen.set_key(SUITE, publisher.keys[0], first_index=1000)
            load, repeated = repeated_while_disturbed(settings, lambda n: load_window(
                daemon, gen, settings, direct_p50, port_a, verify_key=route.subscriber_key,
                verify_ssrc=KEYED_SUBSCRIBER_SSRC))
            result["load"] = load
            result["load_disturbed_and_repeated"] = repeated
            checked = load["verified"]
            print(f"    the load through the DTLS-keyed publisher: {load['achieved_pps']:,.0f} pps, loss "
                  f"{100 * load['loss']:.3f} %, p99 {load['p99_us'] or 0:.0f} us, {checked['decrypted_ok']} "
                  f"packets decrypted at the receiver" + (" (disturbed)" if load["disturbed"] else "")
                  + (f" FAILURES: {checked['failures']}" if checked["failures"] else ""), flush=True)
    finally:
        publisher.close()
        subscriber.close()
        daemon.release("keyed")
    return result


def check_keys(publisher: Handshake, subscriber: Handshake) -> dict[str, Any]:
    """CHECK_PACKETS RTP packets protected with the publisher's exported key (what its client
    sends with), received by the subscriber's client and unprotected with the key it exported
    for the daemon's direction."""
    assert publisher.keys is not None and subscriber.keys is not None
    outbound = create_session(SUITE, publisher.keys[0], inbound=False)
    inbound = create_session(SUITE, subscriber.keys[1], inbound=True)
    payload = bytes(range(256)) * 4
    for seq in range(1, CHECK_PACKETS + 1):
        publisher.sock.sendto(outbound.protect(rtp_packet(seq, PUBLISHER_SSRC, payload)), publisher.target)
        time.sleep(0.002)
    ok = 0
    failures: list[str] = []
    subscriber.sock.settimeout(0.5)
    while ok + len(failures) < CHECK_PACKETS:
        try:
            data = subscriber.sock.recv(2048)
        except (TimeoutError, BlockingIOError):
            break
        if len(data) < 2 or 192 <= data[1] <= 223 or not 128 <= data[0] <= 191:
            continue  # the daemon's RTCP (a sender report) or a late handshake datagram
        try:
            plain = inbound.unprotect(data)
        except Exception as exc:  # pylibsrtp.Error: the daemon protected with other keys
            failures.append(str(exc))
            continue
        if int.from_bytes(plain[8:12], "big") != KEYED_SUBSCRIBER_SSRC:
            failures.append(f"SSRC {int.from_bytes(plain[8:12], 'big'):#x}")
        elif plain[12:] != payload:
            failures.append("payload differs")
        else:
            ok += 1
    return {"decrypted_ok": ok, "failures": failures[:5]}


def measure_direct(rate: float, repeats: int) -> dict[str, float]:
    """The generator -> receiver path without the daemon (what 'added' latency subtracts)."""
    gen = LoadGen(1, rtp_size=RTP_SIZE)
    try:
        gen.set_target(*gen.receiver_addresses[0])
        gen.set_key(SUITE, generate_key(SUITE))
        runs = []
        for _ in range(repeats):
            gen.prepare(rate, 0.5)
            runs.append(gen.run(burst=8))
    finally:
        gen.close()
    return {"p50_us": statistics.median(r["latency_p50_us"] for r in runs),
            "p99_us": statistics.median(r["latency_p99_us"] for r in runs)}
