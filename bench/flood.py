"""Hostile packets at a media daemon: one endpoint flooded with garbage at the highest rate
this machine can send, while a good call goes through the same daemon.

A real `charter mediad` (pinned to core 1) and a controller; a conference with a publisher
and a subscriber (the good call: 1000-byte SRTP at `--rate` packets/s, protected as they go,
from this process) and a victim participant. A second process floods the victim's port with
`--packets` datagrams (10 million) as fast as it can: a rotating mix of random bytes,
truncated and bit-flipped copies of valid SRTP (the victim's own key: they fail
authentication), replays of valid packets, SRTCP garbage, STUN- and DTLS-looking records
(the victim is an SDES endpoint: dropped by first byte), and oversized datagrams. Reported:
the flood's rate, the good call's loss and p99 latency with and without the flood, the
victim's drops by reason (they must add up to what reached it), the daemon's RSS before
and after, and that it still answers.

Run from the repository root:  python -m bench.flood [--quick]
Writes bench/results/flood[-quick].json.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import socket
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
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80


def srtp(key_b64: str, *, send: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if send else pylibsrtp.Policy.SSRC_ANY_INBOUND
    policy = pylibsrtp.Policy(key=base64.b64decode(key_b64), ssrc_type=kind, srtp_profile=PROFILE)
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


def rtp(seq: int, ssrc: int, size: int = 1000) -> bytes:
    return (bytes([0x80, 96]) + (seq & 0xFFFF).to_bytes(2, "big") + ((seq * 3000) & 0xFFFFFFFF).to_bytes(4, "big")
            + ssrc.to_bytes(4, "big") + bytes(size))


def hostile_mix(victim_send_key: str, ssrc: int, count: int = 4096) -> list[bytes]:
    """Datagrams a hostile sender would send, of every kind the daemon must drop."""
    rng = random.Random(7)
    tx = srtp(victim_send_key, send=True)
    valid = [tx.protect(rtp(i, ssrc, rng.randrange(20, 1200))) for i in range(256)]
    mix: list[bytes] = []
    while len(mix) < count:
        kind = len(mix) % 9
        base = valid[rng.randrange(len(valid))]
        if kind == 0:
            mix.append(rng.randbytes(rng.randrange(1, 1400)))
        elif kind == 1:
            mix.append(base[: rng.randrange(1, len(base))])  # truncated
        elif kind == 2:
            flipped = bytearray(base)
            flipped[rng.randrange(12, len(flipped))] ^= 1 << rng.randrange(8)
            mix.append(bytes(flipped))  # fails authentication
        elif kind == 3:
            mix.append(base)  # a replay (after its first arrival)
        elif kind == 4:
            mix.append(bytes([0x81, 200]) + rng.randbytes(rng.randrange(6, 200)))  # SRTCP garbage
        elif kind == 5:
            mix.append(bytes([0x00, 0x01]) + rng.randbytes(rng.randrange(18, 200)))  # STUN-looking
        elif kind == 6:
            mix.append(bytes([22, 0xFE, 0xFD]) + rng.randbytes(rng.randrange(10, 300)))  # DTLS-looking
        elif kind == 7:
            mix.append(bytes([0x80 | 0x10, 96]) + rng.randbytes(rng.randrange(10, 100)))  # bad extension
        else:
            mix.append(bytes([0x80, 96]) + rng.randbytes(3000))  # oversized
    return mix


def flood(target: tuple[str, int], mix: list[bytes], packets: int, cpu: int, report: Any) -> None:
    """Another process: `packets` datagrams of the mix at the victim, as fast as it can."""
    os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect(target)
    send = sock.send
    started = time.monotonic()
    sent = 0
    n = len(mix)
    while sent < packets:
        for datagram in mix:
            try:
                send(datagram)
            except OSError:
                pass  # a full send buffer, or an ICMP error from an earlier datagram
        sent += n
    report.put((sent, time.monotonic() - started))


class Receiver(asyncio.DatagramProtocol):
    def __init__(self, rx: pylibsrtp.Session) -> None:
        self.rx = rx
        self.arrivals: dict[int, float] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > 12 and not 192 <= data[1] <= 223:
            try:
                plain = self.rx.unprotect(data)
            except pylibsrtp.Error:
                return
            self.arrivals[int.from_bytes(plain[12:16], "big")] = time.monotonic()


SEQUENCE = [0]
"""The good call's next RTP sequence number: one stream across every window."""


async def good_call(sock: socket.socket, tx: pylibsrtp.Session, target: tuple[str, int], ssrc: int, rate: int,
                    seconds: float, first: int, receiver: Receiver) -> dict[str, Any]:
    """`rate` packets/s for `seconds`, numbered from `first` in their payload; loss and latency."""
    sent_at: dict[int, float] = {}
    start, i = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(10):
            number = first + i
            packet = rtp(SEQUENCE[0], ssrc, 1000)
            SEQUENCE[0] += 1
            packet = packet[:12] + number.to_bytes(4, "big") + packet[16:]
            sock.sendto(tx.protect(packet), target)
            sent_at[number] = time.monotonic()
            i += 1
    await asyncio.sleep(0.5)
    got = [receiver.arrivals[n] - t for n, t in sent_at.items() if n in receiver.arrivals]
    got.sort()
    return {"sent": len(sent_at), "received": len(got), "loss": 1 - len(got) / len(sent_at),
            "p99_ms": 1000 * got[int(0.99 * (len(got) - 1))] if got else None, "rate": len(sent_at) / seconds}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


async def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="charter-flood-"))
    controller_address, mediad_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    children = [
        processes.start([sys.executable, "-m", "controller", "--listen", controller_address, "--store", "memory",
                         "--auth", "none", "--tls", "none", "--log-level", "warning"],
                        output=open(logs / "controller.log", "wb")),  # noqa: SIM115
        processes.start(["taskset", "-c", "1", sys.executable, "-m", "mediad", "--listen", mediad_address,
                         "--daemon-id", "flooded", "--controller", controller_address, "--ports", "22000-22099",
                         "--tls", "none", "--log-level", "warning"], output=open(logs / "mediad.log", "wb")),  # noqa: SIM115
    ]
    os.sched_setaffinity(0, {0})
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
            await api.CreateConference(pb.CreateConferenceRequest(conference_id="flood"), timeout=10)
            loop = asyncio.get_running_loop()
            receiver_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver_sock.bind(("127.0.0.1", 0))
            receiver_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

            def join(participant_id: str, ssrc: int, address: tuple[str, int] | None) -> Any:
                request = pb.JoinRequest(conference_id="flood", participant_id=participant_id)
                request.tracks.add(ssrc=ssrc, kind=media_pb2.VIDEO, codec="VP8", payload_type=96, clock_rate=90000)
                if address:
                    request.receive_address.ip, request.receive_address.port = address
                return api.Join(request, timeout=10)

            publisher = (await join("publisher", 1111, None)).participant
            subscriber = (await join("subscriber", 2222, receiver_sock.getsockname()[:2])).participant
            victim = (await join("victim", 3333, ("127.0.0.1", free_port(socket.SOCK_DGRAM)))).participant
            receiver = Receiver(srtp(subscriber.receive_key, send=False))
            await loop.create_datagram_endpoint(lambda: receiver, sock=receiver_sock)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind(("127.0.0.1", 0))
            tx = srtp(publisher.send_key, send=True)
            target = (publisher.media_address.ip, publisher.media_address.port)
            victim_target = (victim.media_address.ip, victim.media_address.port)
            pid = children[1].pid
            rss_before = rss_kib(pid)

            quiet = await good_call(sender, tx, target, 1111, args.rate, args.window, 0, receiver)
            mix = hostile_mix(victim.send_key, 3333)
            report: Any = multiprocessing.Queue()
            flooder = multiprocessing.Process(target=flood, args=(victim_target, mix, args.packets, 0, report))
            flooder.start()
            windows = []
            first = 10**6
            while flooder.is_alive():
                windows.append(await good_call(sender, tx, target, 1111, args.rate, args.window, first, receiver))
                first += 10**6
            flooded, flood_seconds = report.get(timeout=60)
            flooder.join()
            after = await good_call(sender, tx, target, 1111, args.rate, args.window, 90 * 10**6, receiver)
            stats = await daemon.GetStats(mediad_pb2.GetStatsRequest(conference_id="flood"), timeout=10)
            victim_stats = next(e for e in stats.endpoints if e.endpoint_id == "flood/victim")
            drops = dict(victim_stats.counters.drops)
            received = victim_stats.counters.packets_in + victim_stats.counters.rtcp_in + sum(drops.values())
            rss_after = rss_kib(pid)
            sent = sum(w["sent"] for w in windows)
            got = sum(w["received"] for w in windows)
            result = {
                "flood": {"packets": flooded, "seconds": flood_seconds, "rate": flooded / flood_seconds,
                          "reached_the_victim": received, "drops": drops,
                          "accepted": victim_stats.counters.packets_in},
                "good_call": {"rate": args.rate, "quiet": quiet, "during": windows, "after": after,
                              "loss_during": 1 - got / sent if sent else None},
                "daemon_rss_kib": {"before": rss_before, "after": rss_after},
            }
            return result
    finally:
        for child in reversed(children):
            await processes.stop_async(child, 15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 million packets")
    parser.add_argument("--packets", type=int, help="datagrams of the flood (default 10 million)")
    parser.add_argument("--rate", type=int, default=10000, help="the good call's packets/s (default 10000)")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window (default 2)")
    args = parser.parse_args(argv)
    args.packets = args.packets or (1_000_000 if args.quick else 10_000_000)
    result = asyncio.run(run(args))
    flood_figures, call = result["flood"], result["good_call"]
    p99 = [w["p99_ms"] for w in call["during"] if w["p99_ms"] is not None]
    print(f"Flood: {flood_figures['packets']:,} hostile datagrams in {flood_figures['seconds']:.0f} s "
          f"({flood_figures['rate']:,.0f}/s) at one endpoint; {flood_figures['reached_the_victim']:,} reached it, "
          f"{flood_figures['accepted']} were accepted")
    print("  dropped by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(flood_figures["drops"].items())))
    print(f"Good call at {call['rate']:,} packets/s: loss {100 * call['quiet']['loss']:.3f} % quiet, "
          f"{100 * (call['loss_during'] or 0):.3f} % during the flood (target < 0.5 %), "
          f"{100 * call['after']['loss']:.3f} % after; p99 {call['quiet']['p99_ms']:.2f} ms quiet, "
          f"{max(p99):.2f} ms worst window during")
    rss = result["daemon_rss_kib"]
    print(f"Daemon RSS {rss['before'] / 1024:.1f} -> {rss['after'] / 1024:.1f} MiB; "
          "it answered GetStats after the flood")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"flood{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
