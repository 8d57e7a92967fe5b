"""Two controllers in front of one real redis-server (`--store redis://`), and a media daemon
that registers with either (`--controller A,B`): a conference made through one is joined
through both; a watch on one sees every event, in order, whichever controller made it; media
flows between participants who joined through different controllers. When either
controller is killed (SIGKILL; one of them is the one the daemon talks to), the daemon's
lease lives on with the other, which carries on: the conference is still there, a new
participant joins through it and media flows. A controller killed under a stream of joins
loses none it acknowledged and leaves nothing half-made; Redis restarted, both carry on;
`charter up --store redis --controllers 2` runs all of it on one machine."""
from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from aiortc_peer import allow_loopback
from charter import pki
from charter.processes import free_port
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, mediad_pb2
from charter_up import CharterUp
from controller.conferences import endpoint_id
from participants import Peer, exchange
from processes import (
    ROOT,
    Process,
    conference_stub,
    free_udp_range,
    live_daemons,
    mediad_stub,
    start_controller,
    start_logged,
    start_mediad,
)
from redis_server import RedisServer, missing, redis_server
from waits import wait_until
from web_page import TIMEOUT, browser_offer, reply_to

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

LEASE = 2.0


class Shared:
    def __init__(self, redis: RedisServer, controllers: list[Process], daemon: Process) -> None:
        self.redis = redis
        self.controllers = controllers
        self.daemon = daemon


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Shared]:
    with redis_server(tmp_path / "redis") as redis:
        controllers: list[Process] = []
        started: list[Process] = []
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                controllers.append(start_controller(
                    tmp_path / name, lease_ttl=LEASE, store=redis.url,
                    options=("--store-key", str(tmp_path / "store.key"), "--reconcile-seconds", "1")))
            started += controllers
            daemon = start_mediad(tmp_path, ",".join(c.address for c in controllers), "mediad-0",
                                  free_udp_range(256))
            started.append(daemon)
            for controller in controllers:
                wait_until(lambda c=controller: live_daemons(c) == {"mediad-0"},
                           what=f"the daemon's lease seen by {controller.address}")
            yield Shared(redis, controllers, daemon)
        finally:
            # The daemon goes first and at once: its SIGTERM would hand its conferences over,
            # waiting for controllers that may be gone (the tests do not look at its exit).
            for process in reversed(started):
                with contextlib.suppress(Exception):
                    if process is started[-1] and process not in controllers:
                        process.process.kill()
                        process.process.wait()
                    else:
                        process.stop(10)


def watch(controller: Process, conference_id: str, seen: list[pb.ConferenceEvent]) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in conference_stub(controller).WatchConference(
                    pb.WatchConferenceRequest(conference_id=conference_id), timeout=60):
                seen.append(event)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("dies", [0, 1], ids=["first-dies", "second-dies"])
def test_two_controllers_share_conferences_events_and_daemons(shared: Shared, dies: int) -> None:
    a, b = (conference_stub(c) for c in shared.controllers)
    survivor = shared.controllers[1 - dies]
    conference = a.CreateConference(pb.CreateConferenceRequest(conference_id="shared"), timeout=10)
    assert b.GetConference(pb.GetConferenceRequest(conference_id="shared"), timeout=10).daemon_id == "mediad-0"
    seen: list[pb.ConferenceEvent] = []
    watching = watch(survivor, "shared", seen)
    time.sleep(0.5)  # the watch is open

    ssrcs = random.sample(range(1, 2**32), 3)
    alice, bob = Peer("alice", [ssrcs[0]]), Peer("bob", [ssrcs[1]])
    peers = [alice, bob]
    try:
        alice.joined(a.Join(alice.join_request("shared"), timeout=10).participant)
        bob.joined(b.Join(bob.join_request("shared"), timeout=10).participant)
        exchange(peers, lambda: all(sum(p.counts().values()) >= 5 for p in peers))
        wait_until(lambda: sum(1 for e in seen if e.HasField("participant_joined")) == 2,
                   what="both joins on the survivor's watch")
        sequences = [e.sequence for e in seen]
        assert sequences == sorted(set(sequences)), "each event once, in order"
        assert [e.participant_joined.participant.participant_id for e in seen
                if e.HasField("participant_joined")] == ["alice", "bob"]

        # One controller dies: the other carries on, with the daemon's lease.
        shared.controllers[dies].signal(signal.SIGKILL)
        time.sleep(2 * LEASE)
        assert live_daemons(survivor) == {"mediad-0"}, "the lease lived on"
        api = conference_stub(survivor)
        carol = Peer("carol", [ssrcs[2]])
        peers.append(carol)
        carol.joined(api.Join(carol.join_request("shared"), timeout=10).participant)
        assert carol.session is not None and carol.session.daemon_id == conference.daemon_id
        exchange(peers, lambda: all(len(p.counts()) == 2 and min(p.counts().values()) >= 3 for p in peers))
        assert len(api.GetConference(pb.GetConferenceRequest(conference_id="shared"), timeout=10).participants) == 3
        api.EndConference(pb.EndConferenceRequest(conference_id="shared"), timeout=10)
        watching.join(10)
        assert seen[-1].HasField("conference_ended")
    finally:
        for peer in peers:
            peer.close()


def test_a_daemon_fails_over_between_controllers_over_mutual_tls(tmp_path: Path) -> None:
    """Under --tls mutual, each controller holds a certificate of the one CA, and the daemon
    checks the name they all carry: its lease lives on when the first controller dies."""
    with redis_server(tmp_path / "redis") as redis, contextlib.ExitStack() as stack:
        registries: list[str] = []
        controllers: list[subprocess.Popen[bytes]] = []
        for name in ("a", "b"):
            tls = tmp_path / f"tls-{name}"
            if controllers:  # the second gets a copy of the CA the first made
                tls.mkdir()
                for file in ("ca.pem", "ca-key.pem"):
                    shutil.copy(tmp_path / "tls-a" / file, tls / file)
            address, registry = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            process = start_logged(
                [sys.executable, "-m", "controller", "--listen", address, "--registry-listen", registry,
                 "--tls-dir", str(tls), "--store", redis.url, "--store-key", str(tmp_path / "store.key"),
                 "--auth", "none", "--lease-ttl", str(LEASE)], tmp_path / f"controller-{name}.log", cwd=ROOT)
            stack.callback(process.kill)
            wait_until(lambda t=tls, p=process: (t / f"{pki.CONTROLLER}.pem").exists() or p.poll() is not None,
                       timeout=30, what="the controller's certificate")
            controllers.append(process)
            registries.append(registry)
        out = tmp_path / "daemon-tls"
        made = subprocess.run([sys.executable, "-m", "cli", "cert", "--name", "mediad-0", "--tls-dir",
                               str(tmp_path / "tls-a"), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        first, last = free_udp_range(4)
        daemon = start_logged(
            [sys.executable, "-m", "mediad", "--listen", f"127.0.0.1:{free_port()}", "--daemon-id", "mediad-0",
             "--controller", ",".join(registries), "--tls-dir", str(out), "--media-ip", "127.0.0.1",
             "--ports", f"{first}-{last}"], tmp_path / "mediad.log", cwd=ROOT)
        stack.callback(daemon.kill)

        def leases(registry: str) -> set[str]:
            # The registry port answers ListDaemons to a certificate of Charter's CA.
            identity = pki.load(tmp_path / "tls-b", pki.CONTROLLER)
            assert identity is not None
            with grpc.secure_channel(registry, pki.channel_credentials(identity)) as channel:
                reply = controller_pb2_grpc.DaemonRegistryStub(channel).ListDaemons(pb.ListDaemonsRequest(),
                                                                                   timeout=5)
            return {d.daemon.daemon_id for d in reply.daemons}

        wait_until(lambda: leases(registries[1]) == {"mediad-0"}, timeout=30,
                   what=f"the daemon's lease over mutual TLS\n{(tmp_path / 'mediad.log').read_text()[-2000:]}")
        controllers[0].kill()
        time.sleep(3 * LEASE)
        assert leases(registries[1]) == {"mediad-0"}, (tmp_path / "mediad.log").read_text()[-3000:]
        assert "registering again" not in (tmp_path / "mediad.log").read_text(), "the lease was renewed, not remade"


def test_charter_up_runs_two_controllers_on_its_own_redis(tmp_path: Path) -> None:
    """`charter up --store redis --controllers 2`: a redis-server of its own, two controllers
    (mutual TLS to the daemon, which knows both); what one is told, the other knows."""
    redis_port = free_port()
    up = CharterUp(tmp_path, options=("--store", "redis", "--controllers", "2", "--redis-port", str(redis_port)))
    try:
        host, port = up.controller_address.rsplit(":", 1)
        second = conference_stub_at(f"{host}:{int(port) + 2}")
        up.create_conference("both")
        joined = second.Join(pb.JoinRequest(conference_id="both", participant_id="via-second"), timeout=10)
        assert joined.participant.daemon_id == "mediad-0"
        seen = up.conferences.GetConference(pb.GetConferenceRequest(conference_id="both"), timeout=10)
        assert [p.participant_id for p in seen.participants] == ["via-second"]
        wait_until(lambda: "Charter is up" in up.process.log(), what="charter up's summary")
        summary = up.process.log()
        assert f"redis://127.0.0.1:{redis_port}/0" in summary
        assert "controller-0" in summary and "controller-1" in summary
        assert (tmp_path / "state" / "redis" / "appendonlydir").exists(), "Redis keeps its data in the state dir"
    finally:
        assert up.close() == 0, up.process.log()[-3000:]


def conference_stub_at(address: str) -> controller_pb2_grpc.ConferenceServiceStub:
    return controller_pb2_grpc.ConferenceServiceStub(grpc.insecure_channel(address))


def test_a_controller_killed_mid_load_loses_no_join_and_leaves_nothing_half_made(shared: Shared) -> None:
    """Joins stream through the first controller while it is killed: every join it
    acknowledged is in the store; one in flight is absent, or there whole; what it left
    half-made on the daemon (an endpoint without its participant) is deleted; joins of the
    ones in flight, tried again through the other controller, take each exactly once."""
    a, b = (conference_stub(c) for c in shared.controllers)
    conferences = [f"load-{k}" for k in range(4)]
    for conference_id in conferences:
        a.CreateConference(pb.CreateConferenceRequest(conference_id=conference_id, persistent=True), timeout=10)
    acked: dict[str, str] = {}      # participant -> conference
    in_flight: dict[str, str] = {}  # answered with an error (the controller died under it)
    stop = threading.Event()

    def joiner(worker: int) -> None:
        for k in range(1000):
            if stop.is_set():
                return
            participant_id, conference_id = f"w{worker}-{k}", conferences[k % len(conferences)]
            try:
                a.Join(pb.JoinRequest(conference_id=conference_id, participant_id=participant_id), timeout=10)
            except grpc.RpcError:
                in_flight[participant_id] = conference_id
                return
            acked[participant_id] = conference_id

    workers = [threading.Thread(target=joiner, args=(w,), daemon=True) for w in range(4)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(acked) >= 40, what="joins through the first controller")
    shared.controllers[0].signal(signal.SIGKILL)
    for worker in workers:
        worker.join(30)
    stop.set()
    print(f"acknowledged {len(acked)} joins; {len(in_flight)} in flight at the kill")

    daemon = mediad_stub(shared.daemon)

    def stored() -> dict[str, set[str]]:
        return {c: {p.participant_id for p in b.GetConference(pb.GetConferenceRequest(conference_id=c),
                                                               timeout=20).participants} for c in conferences}

    def consistent() -> bool:
        # Every participant in the store has its endpoint on the daemon, and nothing else is there.
        store = stored()
        for conference_id in conferences:
            held = {e.endpoint_id for e in daemon.ListEndpoints(
                mediad_pb2.ListEndpointsRequest(conference_id=conference_id), timeout=10).endpoints}
            if held != {endpoint_id(conference_id, p) for p in store[conference_id]}:
                return False
        return True

    # The dead controller's locks expire (10 s), then a reconciliation sweeps what it left.
    wait_until(consistent, timeout=60, what="the daemon's endpoints to match the store")
    store = stored()
    for participant_id, conference_id in acked.items():
        assert participant_id in store[conference_id], f"acknowledged join {participant_id} lost"
    everyone = {p for members in store.values() for p in members}
    assert everyone <= set(acked) | set(in_flight), "nothing the callers did not ask for"

    # The callers whose answer was lost join again through the other controller: each once.
    for participant_id, conference_id in in_flight.items():
        try:
            b.Join(pb.JoinRequest(conference_id=conference_id, participant_id=participant_id), timeout=20)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
    store = stored()
    assert sum(len(m) for m in store.values()) == len(acked) + len(in_flight)
    wait_until(consistent, timeout=30, what="one endpoint per participant")


def test_redis_restarted_the_controllers_reconnect_and_carry_on(shared: Shared) -> None:
    a, b = (conference_stub(c) for c in shared.controllers)
    a.CreateConference(pb.CreateConferenceRequest(conference_id="before", persistent=True), timeout=10)
    shared.redis.stop()
    with pytest.raises(grpc.RpcError) as refused:
        b.GetConference(pb.GetConferenceRequest(conference_id="before"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach its store" in (refused.value.details() or "")
    shared.redis.start()

    def served() -> bool:
        try:
            b.Join(pb.JoinRequest(conference_id="before", participant_id="after"), timeout=10)
        except grpc.RpcError:
            return False
        return True

    wait_until(served, timeout=30, what="a join through the other controller once Redis is back")
    seen = a.GetConference(pb.GetConferenceRequest(conference_id="before"), timeout=10)
    assert [p.participant_id for p in seen.participants] == ["after"]
    assert live_daemons(shared.controllers[0]) == live_daemons(shared.controllers[1]) == {"mediad-0"}


def test_the_web_gateway_moves_to_the_other_controller_and_its_pages_miss_nothing(shared: Shared,
                                                                                   tmp_path: Path) -> None:
    """`charter web --controller A,B`: a page joined through A; A is killed; the gateway moves
    to B, the page's watch stream resumes there after its last event, and the page hears of
    a participant who joined meanwhile through B, once."""
    allow_loopback()
    port = free_port()
    a, b = shared.controllers
    log = tmp_path / "web.log"
    web = start_logged([sys.executable, "-m", "cli", "web", "--listen", f"127.0.0.1:{port}", "--controller",
                        f"{a.address},{b.address}", "--log-format", "json", "--log-level", "info"], log)

    async def scenario() -> None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as health:
                        if health.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert web.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.2)
            pc, offer = await browser_offer()
            try:
                async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                    joined = await reply_to(ws, {"type": "join", "conference": "gw-fail", "name": "Ada",
                                                 "offer": offer})
                    assert joined["type"] == "joined", joined
                    first = dict(await ws.receive_json(timeout=15))
                    assert first["type"] == "participant_joined" and first["initial"], first  # the watch is open
                    a.signal(signal.SIGKILL)
                    # Through B, while the page's stream is broken or resuming (a conference lock
                    # A held when killed lasts its 10 s expiry at most).
                    conference_stub(b).Join(pb.JoinRequest(conference_id="gw-fail", participant_id="late"),
                                            timeout=30)
                    heard: list[dict[str, Any]] = []
                    while not any(m.get("participant") == "late" for m in heard):
                        message = dict(await ws.receive_json(timeout=30))
                        assert message["type"] != "error", message
                        heard.append(message)
                    # Nothing more of "late" comes: the resumed stream starts after the last event.
                    with contextlib.suppress(asyncio.TimeoutError):
                        while True:
                            heard.append(dict(await ws.receive_json(timeout=1.5)))
                    joins = [m for m in heard if m["type"] == "participant_joined"]
                    assert [m["participant"] for m in joins] == ["late"], heard
                    left = await reply_to(ws, {"type": "leave"})
                    assert left["type"] == "left", left
            finally:
                await pc.close()

    try:
        asyncio.run(scenario())
    finally:
        web.send_signal(signal.SIGTERM)
        assert web.wait(20) == 0, log.read_text()
    assert "watch stream broken: opening it again" in log.read_text()
