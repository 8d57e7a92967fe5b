"""Failover benchmark: how long from the SIGKILL of a media daemon to media again, for 1, 10
and 100 conferences on it.

Per trial, real processes on this machine: a controller (--store memory), daemon A alone
while N conferences are made (so all land on it), then daemon B. In each conference a
publisher sends SRTP at 50 packets/s (from this process, pylibsrtp) and a receiver listens
on its own port; both watch the conference as themselves. Daemon A is killed with SIGKILL;
each participant follows its `participant_moved` event (new address, keys, SSRCs), and the
receiver's first packet that decrypts with its new key is "media again". Reported, from the
kill: the moved events (median, p99, last) and media again (median, p99, last), with the
lease TTL they depend on (a lease expires TTL after its last renewal; renewals come every
third of it).

Run from the repository root:  python -m bench.failover [--quick] [--lease 3]
Writes bench/results/failover[-quick].json.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Children are started after channels opened: gRPC's fork handlers say so at INFO.
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
from charter.v1 import controller_pb2_grpc, media_pb2  # noqa: E402

RESULTS = REPO / "bench" / "results"
RATE = 50  # packets per second per publisher
PROFILES = {"AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80}


def session(participant: pb.Participant, *, send: bool) -> pylibsrtp.Session:
    suite = media_pb2.SrtpSuite.Name(participant.suite)
    key = base64.b64decode(participant.send_key if send else participant.receive_key)
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if send else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=kind, srtp_profile=PROFILES[suite]))


class Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any = None) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.on_datagram = on_datagram

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.on_datagram is not None:
            self.on_datagram(data)


@dataclass
class Member:
    """A participant of one conference: the publisher or the receiver."""

    conference_id: str
    participant_id: str
    ssrc: int = 0
    session: pb.Participant | None = None
    tx: pylibsrtp.Session | None = None
    rx: pylibsrtp.Session | None = None
    sock: Socket = field(default_factory=Socket)
    received: int = 0
    moved_at: float | None = None
    media_again_at: float | None = None
    killed_at: float | None = None

    def follow(self, participant: pb.Participant, now: float) -> None:
        self.session = participant
        self.tx, self.rx = session(participant, send=True), session(participant, send=False)
        if self.killed_at is not None and self.moved_at is None:
            self.moved_at = now

    def datagram(self, data: bytes) -> None:
        if self.rx is None or len(data) < 12 or 192 <= data[1] <= 223:
            return
        try:
            self.rx.unprotect(data)
        except pylibsrtp.Error:
            return  # the old key's stragglers
        self.received += 1
        if self.moved_at is not None and self.media_again_at is None:
            self.media_again_at = time.monotonic()


async def publish(member: Member, stop: asyncio.Event) -> None:
    seq = 0
    while not stop.is_set():
        if member.session is not None and member.tx is not None and member.sock.transport is not None:
            seq = (seq + 1) & 0xFFFF
            header = bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 3000 & 0xFFFFFFFF).to_bytes(4, "big")
            # Each the first packet of a VP8 key frame (RFC 7741): a route waiting for one takes it.
            packet = header + member.ssrc.to_bytes(4, "big") + b"\x10\x00" + bytes(158)
            address = member.session.media_address
            member.sock.transport.sendto(member.tx.protect(packet), (address.ip, address.port))
        await asyncio.sleep(1 / RATE)


async def watch(api: Any, member: Member, stop: asyncio.Event) -> None:
    request = pb.WatchConferenceRequest(conference_id=member.conference_id, participant_id=member.participant_id)
    while not stop.is_set():
        try:
            async for event in api.WatchConference(request):
                if event.WhichOneof("event") == "participant_moved" and event.participant_moved.HasField("participant"):
                    member.follow(event.participant_moved.participant, time.monotonic())
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)


def start(name: str, argv: list[str], logs: Path) -> Any:
    log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return processes.start([sys.executable, *argv], output=log)


async def wait_registered(api_registry: Any, daemon_ids: set[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = await api_registry.ListDaemons(pb.ListDaemonsRequest(), timeout=5)
        if {d.daemon.daemon_id for d in reply.daemons} >= daemon_ids:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"daemons {daemon_ids} did not register")


async def trial(conferences: int, lease: float, logs: Path) -> dict[str, Any]:
    controller_address = f"127.0.0.1:{free_port()}"
    children = [start("controller", ["-m", "controller", "--listen", controller_address, "--store", "memory",
                                     "--auth", "none", "--tls", "none", "--lease-ttl", str(lease), "--log-level",
                                     "warning"], logs)]
    first = 20000 + (os.getpid() % 50) * 200
    daemons = {}

    def daemon(name: str, ports: str) -> None:
        address = f"127.0.0.1:{free_port()}"
        children.append(start(name, ["-m", "mediad", "--listen", address, "--daemon-id", name, "--controller",
                                     controller_address, "--ports", ports, "--tls", "none", "--log-level", "warning"],
                                     logs))
        daemons[name] = (children[-1], address)

    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    members: list[Member] = []
    try:
        await wait_serving(controller_address, 30.0)
        async with grpc.aio.insecure_channel(controller_address) as channel:
            api = controller_pb2_grpc.ConferenceServiceStub(channel)
            registry = controller_pb2_grpc.DaemonRegistryStub(channel)
            daemon("mediad-a", f"{first}-{first + 2 * conferences + 9}")
            await wait_registered(registry, {"mediad-a"})
            loop = asyncio.get_running_loop()
            for i in range(conferences):
                conference_id = f"f{i}"
                await api.CreateConference(pb.CreateConferenceRequest(conference_id=conference_id), timeout=10)
                publisher, receiver = Member(conference_id, "pub", ssrc=1000 + i), Member(conference_id, "sub")
                for member in (publisher, receiver):
                    member.sock = Socket(member.datagram)
                    await loop.create_datagram_endpoint(lambda m=member: m.sock, local_addr=("127.0.0.1", 0))
                    request = pb.JoinRequest(conference_id=conference_id, participant_id=member.participant_id)
                    if member is publisher:
                        request.tracks.add(ssrc=member.ssrc, kind=media_pb2.VIDEO, codec="VP8", payload_type=96,
                                           clock_rate=90000)
                    else:
                        ip, port = member.sock.transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
                        request.receive_address.ip, request.receive_address.port = ip, port
                    member.follow((await api.Join(request, timeout=10)).participant, time.monotonic())
                    members.append(member)
            second = first + 2 * conferences + 10
            daemon("mediad-b", f"{second}-{second + 2 * conferences + 9}")
            await wait_registered(registry, {"mediad-a", "mediad-b"})
            tasks += [asyncio.create_task(publish(m, stop)) for m in members if m.participant_id == "pub"]
            tasks += [asyncio.create_task(watch(api, m, stop)) for m in members]
            receivers = [m for m in members if m.participant_id == "sub"]
            deadline = time.monotonic() + 30
            while not all(r.received >= 5 for r in receivers):
                if time.monotonic() > deadline:
                    raise RuntimeError("media did not flow before the kill")
                await asyncio.sleep(0.1)

            killed_at = time.monotonic()
            for member in members:
                member.killed_at = killed_at
            daemons["mediad-a"][0].send_signal(signal.SIGKILL)
            deadline = killed_at + lease + 60
            while not all(r.media_again_at for r in receivers) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            moved = sorted(m.moved_at - killed_at for m in members if m.moved_at)
            again = sorted(r.media_again_at - killed_at for r in receivers if r.media_again_at)
            gaps = sorted(r.media_again_at - r.moved_at for r in receivers if r.media_again_at and r.moved_at)
            return {
                "conferences": conferences, "participants": len(members), "lease_ttl": lease,
                "moved": figures(moved, len(members)), "media_again": figures(again, len(receivers)),
                "moved_to_media": figures(gaps, len(receivers)),
            }
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for member in members:
            if member.sock.transport is not None:
                member.sock.transport.close()
        for child in reversed(children):
            await processes.stop_async(child, 10)


def figures(values: list[float], expected: int) -> dict[str, Any]:
    if not values:
        return {"count": 0, "of": expected}
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return {"count": len(values), "of": expected, "median": statistics.median(values), "p99": p99, "last": values[-1]}


def cell(f: dict[str, Any]) -> str:
    if not f.get("count"):
        return f"none of {f['of']}"
    return f"{f['median']:.2f} / {f['p99']:.2f} / {f['last']:.2f} s ({f['count']}/{f['of']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 10 conferences only")
    parser.add_argument("--lease", type=float, default=3.0, help="the controller's lease TTL, s (default 3)")
    parser.add_argument("--conferences", type=int, nargs="+", help="conference counts (default 1 10 100)")
    args = parser.parse_args(argv)
    counts = args.conferences or ([1, 10] if args.quick else [1, 10, 100])
    logs = Path(tempfile.mkdtemp(prefix="charter-failover-"))
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lease_ttl": args.lease,
                               "rate_per_publisher": RATE, "trials": []}
    print(f"Failover: SIGKILL of the daemon holding N conferences (a publisher and a receiver each, {RATE} "
          f"packets/s), lease TTL {args.lease:.0f} s; seconds from the kill, median / p99 / last", flush=True)
    print(f"{'conferences':>11}  {'moved events':<32}  {'media again':<32}  {'moved -> media':<32}")
    for n in counts:
        result = asyncio.run(trial(n, args.lease, logs))
        results["trials"].append(result)
        print(f"{n:>11}  {cell(result['moved']):<32}  {cell(result['media_again']):<32}  "
              f"{cell(result['moved_to_media']):<32}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"failover{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Wrote {path} (logs in {logs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
