"""Leaks and a soak: what a long run leaves behind.

1. Cycles (`--cycles`, 10,000): create a conference, join two participants (an audio and a
   video track), leave both (the conference ends), against a controller with a durable store
   and one daemon (`charter controller --store FILE`, `charter mediad`). Before and after:
   each process's open files and threads (/proc), RSS, the daemon's endpoints, tracks and
   routes, the controller's conferences and the rows of its SQLite file.
2. Soak (`--minutes`, 10): the same daemon forwards an SRTP call at `--rate` packets/s (half
   the highest rate of bench/forwarding.py would be ~100k; the default 20k leaves room on
   this 2-core machine for the joins going on) while join/leave cycles go on beside it; per
   minute: RSS of both processes, open files, the call's loss. The target: RSS within 5 % of
   the first minute's, loss flat.

Run from the repository root:  python -m bench.leaks [--quick]
Writes bench/results/leaks[-quick].json (and .png with matplotlib).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import pylibsrtp  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from charter import processes  # noqa: E402
from charter.processes import free_port  # noqa: E402
from charter.serving import wait_serving  # noqa: E402
from charter.v1 import controller_pb2 as pb  # noqa: E402
from charter.v1 import controller_pb2_grpc, media_pb2, mediad_pb2, mediad_pb2_grpc  # noqa: E402

RESULTS = REPO / "bench" / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    return {"rss_kib": rss // 1024, "open_files": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


async def cycle(api: Any, n: int) -> None:
    conference_id = f"cycle-{n}"
    await api.CreateConference(pb.CreateConferenceRequest(conference_id=conference_id), timeout=10)
    for name, kind in (("a", media_pb2.AUDIO), ("b", media_pb2.VIDEO)):
        request = pb.JoinRequest(conference_id=conference_id, participant_id=name)
        video = kind == media_pb2.VIDEO
        request.tracks.add(ssrc=1000 + kind, kind=kind, codec="VP8" if video else "opus",
                           payload_type=96 if video else 111, clock_rate=90000 if video else 48000)
        await api.Join(request, timeout=10)
    for name in ("a", "b"):
        await api.Leave(pb.LeaveRequest(conference_id=conference_id, participant_id=name), timeout=10)


class Call(asyncio.DatagramProtocol):
    """An SRTP call through the daemon: this process sends as the publisher and counts what
    the subscriber's socket decrypts."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.rx: pylibsrtp.Session | None = None
        self.received = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.rx is not None and len(data) > 12 and not 192 <= data[1] <= 223:
            try:
                self.rx.unprotect(data)
                self.received += 1
            except pylibsrtp.Error:
                pass


def srtp(key_b64: str, *, send: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if send else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=base64.b64decode(key_b64), ssrc_type=kind,
                                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


async def start_call(api: Any) -> tuple[Call, Call, pb.Participant]:
    """A conference "soak": the publisher's socket and session, the subscriber's receiver."""
    loop = asyncio.get_running_loop()
    await api.CreateConference(pb.CreateConferenceRequest(conference_id="soak", persistent=True), timeout=10)
    publisher, subscriber = Call(), Call()
    await loop.create_datagram_endpoint(lambda: publisher, local_addr=("127.0.0.1", 0))
    await loop.create_datagram_endpoint(lambda: subscriber, local_addr=("127.0.0.1", 0))
    request = pb.JoinRequest(conference_id="soak", participant_id="publisher")
    request.tracks.add(ssrc=4242, kind=media_pb2.VIDEO, codec="VP8", payload_type=96, clock_rate=90000)
    sender = (await api.Join(request, timeout=10)).participant
    request = pb.JoinRequest(conference_id="soak", participant_id="subscriber")
    ip, port = subscriber.transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
    request.receive_address.ip, request.receive_address.port = ip, port
    receiver = (await api.Join(request, timeout=10)).participant
    subscriber.rx = srtp(receiver.receive_key, send=False)
    return publisher, subscriber, sender


async def send_call(publisher: Call, sender: pb.Participant, rate: int, stop: asyncio.Event, sent: list[int]) -> None:
    """`rate` packets of 1000 bytes per second in bursts of 10, protected as they go (a
    pre-protected ring would repeat its SRTP indexes, and the daemon drops replays)."""
    tx = srtp(sender.send_key, send=True)
    target = (sender.media_address.ip, sender.media_address.port)
    payload = b"\x10\x00" + bytes(998)  # each the first packet of a VP8 key frame: receivers that wait take it
    start, i = time.monotonic(), 0
    while not stop.is_set():
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(10):
            seq = i & 0xFFFF
            header = bytes([0x80, 96]) + seq.to_bytes(2, "big") + ((i * 300) & 0xFFFFFFFF).to_bytes(4, "big")
            publisher.transport.sendto(tx.protect(header + (4242).to_bytes(4, "big") + payload), target)  # type: ignore[union-attr]
            i += 1
        sent[0] = i


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="charter-leaks-"))
    store = logs / "controller.sqlite3"
    controller_address, mediad_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    controller = processes.start([sys.executable, "-m", "controller", "--listen", controller_address, "--store",
                                  str(store), "--auth", "none", "--tls", "none", "--log-level", "warning"],
                                 output=open(logs / "controller.log", "wb"))  # noqa: SIM115
    mediad = processes.start([sys.executable, "-m", "mediad", "--listen", mediad_address, "--daemon-id", "soak",
                              "--controller", controller_address, "--ports", "21000-21999", "--tls", "none",
                              "--log-level", "warning"],
                             output=open(logs / "mediad.log", "wb"))  # noqa: SIM115
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cycles": args.cycles,
                               "minutes": args.minutes, "rate": args.rate}
    try:
        await wait_serving(controller_address, 30)
        await wait_serving(mediad_address, 30)
        async with grpc.aio.insecure_channel(controller_address) as channel, \
                grpc.aio.insecure_channel(mediad_address) as daemon_channel:
            api = controller_pb2_grpc.ConferenceServiceStub(channel)
            daemon = mediad_pb2_grpc.MediaDaemonStub(daemon_channel)
            registry = controller_pb2_grpc.DaemonRegistryStub(channel)
            while not (await registry.ListDaemons(pb.ListDaemonsRequest(), timeout=5)).daemons:
                await asyncio.sleep(0.1)

            async def snapshot() -> dict[str, Any]:
                stats = await daemon.GetStats(mediad_pb2.GetStatsRequest(), timeout=10)
                listed = await api.ListConferences(pb.ListConferencesRequest(page_size=1000), timeout=10)
                with sqlite3.connect(store) as db:
                    tables = ("conferences", "events")
                    rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
                return {"controller": proc(controller.pid), "mediad": proc(mediad.pid),
                        "daemon": {"endpoints": stats.endpoint_count, "tracks": stats.track_count,
                                   "routes": stats.subscription_count},
                        "conferences": len(listed.conferences), "store_rows": rows}

            for n in range(20):  # warm up
                await cycle(api, n)
            before = await snapshot()
            started = time.monotonic()
            for n in range(20, 20 + args.cycles):
                await cycle(api, n)
            took = time.monotonic() - started
            await asyncio.sleep(1.0)
            after = await snapshot()
            results["cycles_result"] = {"before": before, "after": after, "seconds": took,
                                        "cycles_per_second": args.cycles / took}
            print(f"{args.cycles} join/leave cycles in {took:.0f} s ({args.cycles / took:.0f}/s)")
            for side in ("controller", "mediad"):
                print(f"  {side:<10} RSS {before[side]['rss_kib'] / 1024:.1f} -> {after[side]['rss_kib'] / 1024:.1f} "
                      f"MiB, open files {before[side]['open_files']} -> {after[side]['open_files']}, "
                      f"threads {before[side]['threads']} -> {after[side]['threads']}")
            print(f"  daemon holds {after['daemon']}; conferences {after['conferences']}; "
                  f"store rows {after['store_rows']}", flush=True)

            if args.minutes > 0:
                results["soak"] = await soak(api, args, snapshot)
    finally:
        for child in (mediad, controller):
            await processes.stop_async(child, 15)
    return results


async def soak(api: Any, args: argparse.Namespace, snapshot: Any) -> list[dict[str, Any]]:
    publisher, subscriber, sender = await start_call(api)
    stop, sent = asyncio.Event(), [0]
    sending = asyncio.create_task(send_call(publisher, sender, args.rate, stop, sent))

    async def churn() -> None:
        n = 10**6
        while not stop.is_set():
            await cycle(api, n)
            n += 1
            await asyncio.sleep(0.05)

    churning = asyncio.create_task(churn())
    minutes: list[dict[str, Any]] = []
    print(f"Soak: {args.rate} packets/s through the daemon for {args.minutes} min, join/leave cycles beside it")
    last_sent, last_received = 0, 0
    try:
        for minute in range(1, args.minutes + 1):
            await asyncio.sleep(60)
            if stop.is_set():
                break
            now = await snapshot()
            sent_now, received_now = sent[0], subscriber.received
            window_sent = sent_now - last_sent
            loss = 1 - (received_now - last_received) / window_sent if window_sent else 0.0
            last_sent, last_received = sent_now, received_now
            now.update(minute=minute, sent=window_sent, loss=max(0.0, loss))
            minutes.append(now)
            print(f"  minute {minute:>2}: loss {100 * now['loss']:.3f} %, RSS controller "
                  f"{now['controller']['rss_kib'] / 1024:.1f} MiB, mediad {now['mediad']['rss_kib'] / 1024:.1f} MiB, "
                  f"open files {now['controller']['open_files']} / {now['mediad']['open_files']}", flush=True)
    finally:
        stop.set()
        for task in (sending, churning):
            task.cancel()
        await asyncio.gather(sending, churning, return_exceptions=True)
        for call in (publisher, subscriber):
            if call.transport is not None:
                call.transport.close()
    if minutes:
        for side in ("controller", "mediad"):
            first, last = minutes[0][side]["rss_kib"], minutes[-1][side]["rss_kib"]
            growth = (last - first) / first
            verdict = "ok" if abs(growth) <= 0.05 else "ABOVE"
            print(f"  {side} RSS {first / 1024:.1f} -> {last / 1024:.1f} MiB ({100 * growth:+.1f} %, "
                  f"target within 5 %: {verdict})")
    return minutes


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    minutes = results.get("soak") or []
    if not minutes:
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    xs = [m["minute"] for m in minutes]
    for side in ("controller", "mediad"):
        top.plot(xs, [m[side]["rss_kib"] / 1024 for m in minutes], marker="o", label=side)
    top.set_ylabel("RSS (MiB)")
    top.legend()
    bottom.plot(xs, [100 * m["loss"] for m in minutes], marker="o", color="C3")
    bottom.set_ylabel("loss (%)")
    bottom.set_xlabel("minute")
    fig.suptitle(f"Soak: {results['rate']} packets/s with join/leave cycles beside it")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 cycles and a 2-minute soak")
    parser.add_argument("--cycles", type=int)
    parser.add_argument("--minutes", type=int)
    parser.add_argument("--rate", type=int, default=20000, help="the soak's packets/s (default 20000)")
    args = parser.parse_args(argv)
    args.cycles = args.cycles if args.cycles is not None else (1000 if args.quick else 10000)
    args.minutes = args.minutes if args.minutes is not None else (2 if args.quick else 10)
    results = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"leaks{'-quick' if args.quick else ''}"
    base.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, base.with_suffix(".png"))
    print(f"Wrote {base}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
