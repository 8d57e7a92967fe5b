"""`charter demo`: a working conference on this machine in one command.

Starts the embedded default (`charter up`: the controller and a media daemon, as child
processes) unless --controller names a running Charter, creates a conference and joins N
participants. Each publishes VP8 video and Opus audio (ffmpeg test sources, or a built-in
RTP source where ffmpeg is missing) to its endpoint and receives everyone else's tracks on
a local UDP port, where the demo decrypts them and keeps RFC 3550 statistics. A live table
shows, per participant, the packets the daemon got from it and sent to it, what arrived,
loss and jitter. At the end everything stops in order and a summary is printed; the exit
code is 0 when every participant received every other participant's tracks.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charter import processes
from charter.config import default_state_dir
from charter.sdp import ParticipantSession, from_participant
from cli.demo_media import (
    FFMPEG,
    BuiltinPublisher,
    DemoReceiver,
    FfmpegPublisher,
    Publisher,
    StreamStats,
    demo_tracks,
    open_receiver,
)

NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
         "ivan", "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil")
MAX_PARTICIPANTS = len(NAMES)
# A stream counts as received when it lost at most this fraction of its packets.
MAX_LOSS = 0.02
RTT_UNKNOWN = "-"  # no receiver report has answered one of the daemon's sender reports yet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--participants", "-n", type=int, default=3, help="participants to join (2-16, default %(default)s)"
    )
    parser.add_argument("--duration", "-d", type=float, default=20.0, help="seconds of media (default %(default)s)")
    parser.add_argument(
        "--source", choices=["auto", "ffmpeg", "builtin"], default="auto",
        help="what participants publish: ffmpeg test sources (VP8 + Opus) or the built-in RTP "
        "source; auto: ffmpeg where installed (default %(default)s)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("CHARTER_TOKEN", ""),
        help="access token for --controller (charter token) [CHARTER_TOKEN]; the embedded Charter's is made here",
    )
    parser.add_argument(
        "--controller", default=os.environ.get("CHARTER_CONTROLLER", ""),
        help="use the Charter whose controller is at host:port [CHARTER_CONTROLLER]; "
        "default: start the embedded one (charter up) for the demo",
    )
    parser.add_argument(
        "--tls-dir", default=os.environ.get("CHARTER_CONTROLLER_TLS_DIR", str(default_state_dir() / "tls")),
        help="the controller's TLS directory, whose certificate lets the demo read a daemon's statistics "
        "(GetStats) under --tls mutual [CHARTER_CONTROLLER_TLS_DIR, default %(default)s]",
    )
    parser.add_argument(
        "--web-url", default=os.environ.get("CHARTER_WEB_URL", ""),
        help="the page of the running Charter's web gateway, to join the demo from a browser [CHARTER_WEB_URL]; "
        "default: the embedded one's, or http://127.0.0.1:8080/ with --controller",
    )
    parser.add_argument(
        "--refresh", type=float, default=0.5, help="seconds between table updates (default %(default)s)"
    )


@dataclasses.dataclass
class DemoParticipant:
    participant_id: str
    receiver: DemoReceiver
    receive_address: tuple[str, int]
    session: ParticipantSession | None = None
    publisher: Publisher | None = None
    # From the media daemon's stats of its endpoint.
    daemon_in: int = 0
    daemon_out: int = 0
    daemon_drops: int = 0
    # Round-trip times the daemon measured to the participant's receiver, by the SSRC it
    # receives a stream with (its answers to the sender reports the daemon forwards).
    daemon_rtt: dict[int, float] = dataclasses.field(default_factory=dict)
    moves: int = 0
    """Times its conference moved to another daemon (and it followed)."""


# --------------------------------------------------------------------------------------
# The embedded default


class EmbeddedCharter:
    """`charter up` with one media daemon, on free gRPC ports, for the demo's lifetime."""

    def __init__(self, workdir: str) -> None:
        self.controller = f"127.0.0.1:{processes.free_port()}"
        mediad_port = processes.free_port()
        registry_port = processes.free_port()
        web_port = processes.free_port()
        self.tls_dir = os.path.join(workdir, "state", "tls")
        self.web_url = f"http://127.0.0.1:{web_port}/"
        self.log_path = os.path.join(workdir, "charter-up.log")
        self.api_keys = os.path.join(workdir, "state", "api-keys.json")
        self.argv = [
            sys.executable, "-m", "cli", "up", "--daemons", "1",
            "--controller-port", self.controller.rsplit(":", 1)[1], "--mediad-port", str(mediad_port),
            "--registry-port", str(registry_port),
            "--web-port", str(web_port), "--state-dir", os.path.join(workdir, "state"), "--metrics-port", "0",
            "--log-format", "text", "--log-level", "warning",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        token = self.token()  # makes the API keys (in the state directory charter up reads them from)
        with open(self.log_path, "wb") as log:
            # Its own session: Ctrl-C reaches the demo only, which stops everything in order.
            self.process = processes.start(self.argv, output=log)
        await wait_for_daemon(self.controller, timeout, self, token)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def token(self) -> str:
        """A token for every call of the demo (made with the API key `charter up` made)."""
        from charter.tokens import ApiKeys, Grant

        return ApiKeys(self.api_keys).token(Grant("*", ("create", "end", "read", "join", "watch")), ttl=24 * 3600)

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the ordered shutdown of `charter up`); its exit code."""
        return 0 if self.process is None else await processes.stop_async(self.process, timeout)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return ""


async def wait_for_daemon(controller: str, timeout: float, embedded: EmbeddedCharter | None = None,
                          token: str = "") -> None:
    """Until the controller answers and has a live media daemon."""
    import grpc

    from charter.tokens import call_metadata
    from charter.v1 import controller_pb2, controller_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(controller) as channel:
        registry = controller_pb2_grpc.DaemonRegistryStub(channel)
        while True:
            if embedded is not None and embedded.exited() is not None:
                raise RuntimeError(f"charter up exited with code {embedded.exited()}:\n{embedded.log_tail()}")
            try:
                reply = await registry.ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=2.0,
                                                   metadata=call_metadata(token))
                if reply.daemons:
                    return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no media daemon registered with the controller at {controller} within {timeout:.0f} s"
                )
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------------------
# The conference


class Demo:
    def __init__(
        self, args: argparse.Namespace, controller: str, workdir: str, web_url: str = "", token: str = "",
        tls_dir: str = "",
    ) -> None:
        self.token = token
        self.tls_dir = tls_dir
        """Where the controller's certificate is: a daemon under mutual TLS answers only it."""
        self.args = args
        self.controller = controller
        self.web_url = web_url
        self.workdir = workdir
        self.conference_id = f"demo-{secrets.token_hex(3)}"
        self.participants: list[DemoParticipant] = []
        self.use_ffmpeg = args.source == "ffmpeg" or (args.source == "auto" and FFMPEG is not None)
        self.started = 0.0
        self.elapsed = 0.0
        self.failure: str | None = None

    def _daemon_channel(self, address: str) -> Any:
        """A channel to a daemon: over mutual TLS as the controller when its certificate is
        at hand (a daemon under --tls mutual answers only the controller), else plaintext."""
        import grpc

        from charter import pki

        identity = pki.load(Path(self.tls_dir), pki.CONTROLLER) if self.tls_dir else None
        if identity is None:
            return grpc.aio.insecure_channel(address)
        return grpc.aio.secure_channel(address, pki.channel_credentials(identity))

    async def run(self, stop: asyncio.Event) -> None:
        import grpc

        from charter.tokens import with_token
        from charter.v1 import controller_pb2, controller_pb2_grpc, mediad_pb2_grpc

        async with grpc.aio.insecure_channel(self.controller, interceptors=with_token(self.token)) as channel:
            conferences = controller_pb2_grpc.ConferenceServiceStub(channel)
            conference = await conferences.CreateConference(
                controller_pb2.CreateConferenceRequest(conference_id=self.conference_id, name="charter demo"),
                timeout=10,
            )
            try:
                await self._join_all(conferences)
                if self.web_url:
                    print(f"join from your browser: {self.join_url()}", flush=True)
                daemon_address = await self._daemon_address(channel, conference.daemon_id)
                async with self._daemon_channel(daemon_address) as daemon_channel:
                    daemon = mediad_pb2_grpc.MediaDaemonStub(daemon_channel)
                    for participant in self.participants:
                        assert participant.publisher is not None
                        await participant.publisher.start()
                    followers = [
                        asyncio.create_task(self._follow_moves(conferences, i)) for i in range(len(self.participants))
                    ]
                    self.started = time.monotonic()
                    try:
                        await self._show(daemon, stop)
                    finally:
                        for follower in followers:
                            follower.cancel()
                        await asyncio.gather(*followers, return_exceptions=True)
                    for participant in self.participants:
                        assert participant.publisher is not None
                        await participant.publisher.stop()
                    await asyncio.sleep(0.3)  # the last packets in flight
                    await self._poll(daemon)
            finally:
                for participant in self.participants:
                    if participant.publisher is not None:
                        await participant.publisher.stop()
                try:
                    await conferences.EndConference(
                        controller_pb2.EndConferenceRequest(conference_id=self.conference_id), timeout=10
                    )
                except grpc.aio.AioRpcError as error:
                    self.failure = self.failure or f"EndConference failed: {error.details()}"
                for participant in self.participants:
                    participant.receiver.close()

    def join_url(self) -> str:
        """The page of the web gateway (charter web) with this conference filled in."""
        from urllib.parse import quote

        return f"{self.web_url.rstrip('/')}/?conference={quote(self.conference_id)}"

    async def _join_all(self, conferences: Any) -> None:
        from charter.v1 import controller_pb2, media_pb2

        for index in range(self.args.participants):
            participant_id = NAMES[index]
            receiver, address = await open_receiver()
            participant = DemoParticipant(participant_id, receiver, address)
            self.participants.append(participant)
            request = controller_pb2.JoinRequest(
                conference_id=self.conference_id,
                participant_id=participant_id,
                display_name=participant_id.capitalize(),
                receive_address=media_pb2.Address(ip=address[0], port=address[1]),
                tracks=[t.to_proto() for t in demo_tracks()],
            )
            reply = await conferences.Join(request, timeout=10)
            participant.session = from_participant(reply.participant)
            participant.receiver.key(participant.session)
        # Every participant's subscriptions, now that all have joined.
        for participant in self.participants:
            lookup = controller_pb2.GetParticipantRequest(
                conference_id=self.conference_id, participant_id=participant.participant_id
            )
            participant.session = from_participant(await conferences.GetParticipant(lookup, timeout=10))
            participant.receiver.expect(participant.session.received)
        for index, participant in enumerate(self.participants):
            participant.publisher = self._publisher(participant, index)

    def _publisher(self, participant: DemoParticipant, index: int) -> Publisher:
        assert participant.session is not None
        if self.use_ffmpeg:
            log_path = os.path.join(self.workdir, f"{participant.participant_id}-ffmpeg-{participant.moves}.log")
            return FfmpegPublisher(participant.session, index, log_path, duration=self.args.duration + 30)
        return BuiltinPublisher(participant.session)

    async def _follow_moves(self, conferences: Any, index: int) -> None:
        """A participant that follows its conference when it moves to another media daemon
        (its daemon died or restarted): new address, keys and SSRCs from its moved event."""
        from charter.v1 import controller_pb2

        participant = self.participants[index]
        request = controller_pb2.WatchConferenceRequest(
            conference_id=self.conference_id, participant_id=participant.participant_id
        )
        async for event in conferences.WatchConference(request):
            if event.WhichOneof("event") != "participant_moved" or not event.participant_moved.HasField("participant"):
                continue
            participant.moves += 1
            participant.session = from_participant(event.participant_moved.participant)
            participant.receiver.key(participant.session)
            participant.receiver.expect(participant.session.received)
            if participant.publisher is not None:
                await participant.publisher.stop()
            participant.publisher = self._publisher(participant, index)
            await participant.publisher.start()

    async def _daemon_address(self, channel: Any, daemon_id: str) -> str:
        from charter.v1 import controller_pb2, controller_pb2_grpc

        registry = controller_pb2_grpc.DaemonRegistryStub(channel)
        reply = await registry.ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=10)
        for status in reply.daemons:
            if status.daemon.daemon_id == daemon_id:
                return str(status.daemon.grpc_address)
        raise RuntimeError(f"the conference's media daemon {daemon_id!r} is not registered")

    async def _poll(self, daemon: Any) -> None:
        import grpc

        from charter.v1 import mediad_pb2

        try:
            stats = await daemon.GetStats(mediad_pb2.GetStatsRequest(conference_id=self.conference_id), timeout=5)
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            # Its daemon died or restarts (charter up starts it again): the conference moves
            # and the participants follow; the table shows the daemon's figures again after.
            self.elapsed = time.monotonic() - self.started
            return
        by_endpoint = {e.endpoint_id: e for e in stats.endpoints}
        for participant in self.participants:
            endpoint = by_endpoint.get(f"{self.conference_id}/{participant.participant_id}")
            if endpoint is not None:
                participant.daemon_in = endpoint.counters.packets_in
                participant.daemon_out = endpoint.counters.packets_out
                participant.daemon_drops = sum(endpoint.counters.drops.values())
                participant.daemon_rtt = {
                    s.subscription.ssrc: s.rtt_ms for s in endpoint.subscriptions if s.rtt_ms >= 0
                }
        self.elapsed = time.monotonic() - self.started

    async def _show(self, daemon: Any, stop: asyncio.Event) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console()
        end = self.started + self.args.duration
        if console.is_terminal:
            with Live(self.table(), console=console, refresh_per_second=4, transient=False) as live:
                while not await self._tick(daemon, stop, end):
                    live.update(self.table())
                live.update(self.table())
        else:
            next_line = self.started + 5.0
            while not await self._tick(daemon, stop, end):
                if time.monotonic() >= next_line:
                    next_line += 5.0
                    print(self.progress_line(), flush=True)

    async def _tick(self, daemon: Any, stop: asyncio.Event, end: float) -> bool:
        """Wait a refresh period and poll; True when the demo should end."""
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.05, min(self.args.refresh, end - time.monotonic())))
        except TimeoutError:
            pass
        await self._poll(daemon)
        for participant in self.participants:
            failed = participant.publisher.failed if participant.publisher else None
            if failed:
                self.failure = f"{participant.participant_id}: {failed}"
                return True
        return stop.is_set() or time.monotonic() >= end

    # ----------------------------------------------------------------------------------
    # What is shown

    def _streams(self, participant: DemoParticipant) -> list[tuple[str, str, int, StreamStats | None]]:
        """(publisher, track name, SSRC received with, stats) of every track the participant should receive."""
        if participant.session is None:  # its Join did not complete
            return []
        return [
            (s.publisher_id, s.track.name or s.track.kind, s.ssrc, participant.receiver.streams.get(s.ssrc))
            for s in participant.session.received
        ]

    @staticmethod
    def _loss(streams: Sequence[StreamStats]) -> float:
        expected = sum(s.expected for s in streams)
        lost = sum(max(s.lost, 0) for s in streams)
        return lost / expected if expected else 0.0

    def table(self) -> Any:
        from rich.table import Table

        source = "ffmpeg VP8 + Opus" if self.use_ffmpeg else "built-in RTP source"
        table = Table(
            title=f"Charter demo: conference {self.conference_id}, {source}, "
            f"{self.elapsed:4.1f} / {self.args.duration:.0f} s",
            caption=f"packets in: the daemon received from the participant; out: it sent to it. Jitter "
            f"(RFC 3550) includes the senders' own pacing. RTT: measured by the daemon from the receiver's RTCP "
            f"reports (highest of its streams; {RTT_UNKNOWN}: no report yet, the senders report every few seconds).",
        )
        columns = ("participant", "packets in", "packets out", "received", "streams", "loss", "jitter", "RTT", "drops")
        for column in columns:
            table.add_column(column, justify="left" if column == "participant" else "right")
        for participant in self.participants:
            streams = [s for _, _, _, s in self._streams(participant) if s is not None]
            expected = len(self._streams(participant))
            jitter = max((s.jitter_ms for s in streams), default=0.0)
            drops = participant.daemon_drops + participant.receiver.auth_failures
            table.add_row(
                participant.participant_id,
                f"{participant.daemon_in:,}",
                f"{participant.daemon_out:,}",
                f"{participant.receiver.packets:,}",
                f"{len(streams)}/{expected}",
                f"{100 * self._loss(streams):.2f} %",
                f"{jitter:.1f} ms",
                _rtt(max(participant.daemon_rtt.values(), default=None)),
                f"{drops:,}",
            )
        return table

    def progress_line(self) -> str:
        forwarded = sum(p.daemon_out for p in self.participants)
        received = sum(p.receiver.packets for p in self.participants)
        streams = [s for p in self.participants for _, _, _, s in self._streams(p) if s is not None]
        return (
            f"{self.elapsed:5.1f} s: {len(self.participants)} participants, daemon sent {forwarded:,} packets, "
            f"receivers decrypted {received:,}, loss {100 * self._loss(streams):.2f} %, "
            f"RTT {_rtt(max((r for p in self.participants for r in p.daemon_rtt.values()), default=None))}"
        )

    def summary(self) -> tuple[Any, list[str]]:
        """A table of every stream each participant received, and the problems found."""
        from rich.table import Table

        table = Table(title="Summary: every stream each participant received")
        for column in ("receiver", "from", "track", "packets", "lost", "loss", "jitter", "RTT"):
            table.add_column(column, justify="left" if column in ("receiver", "from", "track") else "right")
        problems: list[str] = []
        for participant in self.participants:
            for publisher, name, ssrc, stats in self._streams(participant):
                if stats is None or stats.packets == 0:
                    problems.append(f"{participant.participant_id} received nothing of {publisher}'s {name}")
                    table.add_row(participant.participant_id, publisher, name, "0", "-", "-", "-", "-")
                    continue
                if stats.loss_fraction > MAX_LOSS:
                    problems.append(
                        f"{participant.participant_id} lost {100 * stats.loss_fraction:.1f} % of {publisher}'s {name}"
                    )
                table.add_row(
                    participant.participant_id, publisher, name, f"{stats.packets:,}", f"{max(stats.lost, 0):,}",
                    f"{100 * stats.loss_fraction:.2f} %", f"{stats.jitter_ms:.1f} ms",
                    _rtt(participant.daemon_rtt.get(ssrc)),
                )
            if participant.receiver.auth_failures:
                problems.append(
                    f"{participant.participant_id}: {participant.receiver.auth_failures} packets failed to decrypt"
                )
        return table, problems


# --------------------------------------------------------------------------------------


async def demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if not 2 <= args.participants <= MAX_PARTICIPANTS:
        console.print(f"--participants must be 2 to {MAX_PARTICIPANTS}, not {args.participants}")
        return 2
    if args.duration <= 0:
        console.print("--duration must be positive")
        return 2
    if args.source == "ffmpeg" and FFMPEG is None:
        console.print("--source ffmpeg: ffmpeg is not installed (use --source builtin)")
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    workdir = tempfile.mkdtemp(prefix="charter-demo-")
    embedded: EmbeddedCharter | None = None
    controller = args.controller
    web_url = args.web_url or ("" if not controller else "http://127.0.0.1:8080/")
    code = 0
    try:
        if not controller:
            embedded = EmbeddedCharter(workdir)
            console.print(f"Starting Charter (charter up: controller {embedded.controller} and a media daemon) ...")
            await embedded.start()
            controller = embedded.controller
            web_url = web_url or embedded.web_url
            token = embedded.token()
        else:
            token = args.token
            await wait_for_daemon(controller, 10.0, token=token)
        conference = Demo(args, controller, workdir, web_url, token,
                          embedded.tls_dir if embedded is not None else args.tls_dir)
        source = (
            "ffmpeg test sources (VP8 + Opus)"
            if conference.use_ffmpeg
            else "the built-in RTP source (ffmpeg not found)"
        )
        console.print(
            f"Conference {conference.conference_id}: {args.participants} participants publish {source} "
            f"for {args.duration:.0f} s; each receives the others on a local port."
        )
        try:
            await conference.run(stop)
        finally:
            if conference.participants:
                table, problems = conference.summary()
                console.print(table)
            else:
                problems = ["no participant joined"]
        if conference.failure:
            problems.insert(0, conference.failure)
        if problems:
            console.print("[bold red]Problems:[/]")
            for problem in problems:
                console.print(f"  {problem}")
            code = 1
        else:
            forwarded = sum(p.daemon_out for p in conference.participants)
            console.print(
                f"[bold green]OK[/]: every participant received every other participant's tracks; "
                f"the daemon forwarded {forwarded:,} packets in {conference.elapsed:.1f} s."
            )
    except Exception as error:  # reported, then everything is still stopped in order
        console.print(f"[bold red]charter demo failed:[/] {error}")
        code = 1
    finally:
        if embedded is not None:
            exit_code = await embedded.stop()
            if exit_code == 0:
                console.print("Charter stopped cleanly.")
            else:
                console.print(f"[bold red]charter up exited with code {exit_code}[/]; its log: {embedded.log_path}")
                code = 1
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)  # logs are kept only when something failed
        else:
            console.print(f"Logs: {workdir}")
    return code


def run(args: argparse.Namespace) -> int:
    try:
        import uvloop

        return int(uvloop.run(demo(args)))
    except ImportError:
        return asyncio.run(demo(args))


def _rtt(rtt_ms: float | None) -> str:
    return RTT_UNKNOWN if rtt_ms is None else f"{rtt_ms:.1f} ms"
