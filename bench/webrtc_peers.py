"""The processes of the WebRTC benchmark (bench/webrtc.py): a real `charter mediad` pinned to
one core with no controller, driven over its gRPC API, and the handshake client process
(bench/webrtc_browser.py) on the other core. Both die with this process and are stopped in
order by `close`."""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.control_plane import free_port_block
from bench.settings import REPO
from bench.webrtc_browser import ice_credentials
from charter.processes import die_with_parent, free_port, stop
from charter.suites import SrtpSuite
from charter.v1 import media_pb2, mediad_pb2, mediad_pb2_grpc

Endpoint = list[Any]
"""What the client needs of a WebRTC endpoint: [port, ice_ufrag, ice_pwd, remote_ice_ufrag]."""


def sched_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of every thread of a process, seconds its main thread waited for a CPU),
    from /proc/PID/task/*/schedstat in nanoseconds (/proc/PID/stat counts 10 ms ticks, too
    coarse for a burst of 50 handshakes). The main thread runs the daemon's event loop: its
    waiting is time it was runnable while something else held its core."""
    cpu = wait = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                fields = f.read().split()
        except OSError:
            continue  # a thread that just ended
        cpu += int(fields[0])
        if task == str(pid):
            wait = int(fields[1])
    return cpu / 1e9, wait / 1e9


def udp_drops(port: int, ip: str = "127.0.0.1") -> int | None:
    """Datagrams the kernel dropped at the UDP socket bound to ip:port (its receive buffer
    was full), from /proc/net/udp; None when no such socket."""
    wanted = f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == wanted:
                return int(fields[-1])
    return None


class Daemon:
    """`charter mediad --controller ''` on `cpu` (taskset), its log in a file read at the end."""

    def __init__(self, cpu: int, *, nice: int = 0, ports: int = 400, log_level: str = "info") -> None:
        self.listen = f"127.0.0.1:{free_port()}"
        first = free_port_block(ports, socket.SOCK_DGRAM, 16384, 32000)
        self.ports = f"{first}-{first + ports - 1}"
        self._dir = Path(tempfile.mkdtemp(prefix="bench-webrtc-"))
        self.log_path = self._dir / "mediad.log"
        charter = shutil.which("charter", path=str(Path(sys.executable).parent)) or shutil.which("charter")
        command = [charter] if charter else [sys.executable, "-m", "cli"]
        self.argv = [
            "taskset", "-c", str(cpu), *command, "mediad", "--listen", self.listen, "--controller", "",
            "--tls", "none", "--ports", self.ports, "--drain-timeout", "1", "--grace", "1", "--log-level", log_level,
        ]
        self.nice = nice
        self._log = open(self.log_path, "wb")  # closed in close()
        # Its own session: a Ctrl-C reaches this process only, which then stops the daemon.
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                        cwd=REPO, start_new_session=True, preexec_fn=self._preexec)
        self.pid = self.process.pid
        self.channel: grpc.Channel | None = None
        self.api: mediad_pb2_grpc.MediaDaemonStub | None = None

    def _preexec(self) -> None:
        die_with_parent()
        if self.nice:
            os.nice(self.nice)

    def connect(self, timeout: float = 30.0) -> None:
        """Open the channel (after every fork of this process: gRPC's fork handlers misbehave
        in a forked child) and wait until the daemon answers."""
        self.channel = grpc.insecure_channel(self.listen)
        self.api = mediad_pb2_grpc.MediaDaemonStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"charter mediad exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.api.GetStats(mediad_pb2.GetStatsRequest(), timeout=0.5, wait_for_ready=True)
                return
            except grpc.RpcError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"charter mediad did not answer in {timeout:g} s ({error.code()}): "
                                       f"{self.log_tail()}") from None

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def stub(self) -> mediad_pb2_grpc.MediaDaemonStub:
        assert self.api is not None, "connect() first"
        return self.api

    def cpu(self) -> tuple[float, float]:
        """(CPU seconds of all its threads, seconds its event loop waited for its core)."""
        return sched_seconds(self.pid)

    # --- the API ---------------------------------------------------------------------------

    def webrtc_endpoints(self, conference_id: str, count: int, fingerprint: tuple[str, str]) -> list[Endpoint]:
        """`count` WebRTC endpoints "<conference_id>-<i>" as the controller makes a browser's."""
        return [self.webrtc_endpoint(f"{conference_id}-{i}", conference_id, fingerprint) for i in range(count)]

    def webrtc_endpoint(self, endpoint_id: str, conference_id: str, fingerprint: tuple[str, str], *,
                        tracks: Sequence[media_pb2.Track] = (),
                        subscriptions: Sequence[mediad_pb2.SubscriptionSpec] = ()) -> Endpoint:
        """A WebRTC endpoint: ICE credentials of the daemon's, the browser's ufrag and its
        certificate fingerprint, as the controller asks for a browser's."""
        ufrag, pwd = ice_credentials()
        remote_ufrag, _ = ice_credentials()
        reply = self.stub.CreateEndpoint(mediad_pb2.CreateEndpointRequest(
            endpoint_id=endpoint_id,
            conference_id=conference_id,
            webrtc=mediad_pb2.WebRtcTransport(
                ice_ufrag=ufrag, ice_pwd=pwd, remote_ice_ufrag=remote_ufrag,
                remote_fingerprints=[mediad_pb2.DtlsFingerprint(algorithm=fingerprint[0], value=fingerprint[1])],
            ),
            tracks=list(tracks),
            subscriptions=list(subscriptions),
        ), timeout=10)
        return [reply.local_address.port, ufrag, pwd, remote_ufrag]

    def release(self, conference_id: str) -> int:
        reply = self.stub.ReleaseConference(mediad_pb2.ReleaseConferenceRequest(conference_id=conference_id),
                                            timeout=10)
        return int(reply.endpoints_deleted)

    def stats(self) -> mediad_pb2.Stats:
        return self.stub.GetStats(mediad_pb2.GetStatsRequest(), timeout=10)

    def webrtc_stats(self) -> dict[str, int]:
        return dict(self.stats().webrtc)

    # --- the end ---------------------------------------------------------------------------

    def log_findings(self) -> dict[str, Any]:
        """Lines per level, and the warnings and errors by message (the first of each)."""
        levels: Counter[str] = Counter()
        problems: dict[str, dict[str, Any]] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                levels["unparsed"] += 1
                if line.strip():
                    problems.setdefault(line[:200], {"count": 0, "first": line[:500]})["count"] += 1
                continue
            level = str(entry.get("level", "?"))
            levels[level] += 1
            if level in ("warning", "error", "critical"):
                message = f"{level}: {entry.get('message', '')}"
                problems.setdefault(message, {"count": 0, "first": entry})["count"] += 1
        return {"lines": dict(levels), "problems": problems}

    def close(self) -> int | None:
        """Stop it (SIGTERM: its ordered shutdown; SIGKILL after 15 s); its exit code."""
        code = None
        try:
            if self.channel is not None and self.process.poll() is None:
                for endpoint in self.stub.ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=5).endpoints:
                    self.stub.DeleteEndpoint(mediad_pb2.DeleteEndpointRequest(
                        endpoint_id=endpoint.endpoint_id, allow_missing=True), timeout=5)
        except grpc.RpcError:
            pass  # stopping it closes them anyway, after its drain timeout
        finally:
            if self.channel is not None:
                self.channel.close()
            code = stop(self.process, 15)
            self._log.close()
        return code

    def remove_log(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def sdes_endpoint(daemon: Daemon, endpoint_id: str, conference_id: str, suite: str, rx_key: bytes, tx_key: bytes,
                  *, remote: tuple[str, int] | None = None, track_ssrc: int = 0,
                  subscriptions: list[mediad_pb2.SubscriptionSpec] | None = None) -> mediad_pb2.Endpoint:
    """An SDES endpoint (keys given), optionally with a video track and routes."""
    request = mediad_pb2.CreateEndpointRequest(
        endpoint_id=endpoint_id, conference_id=conference_id, suite=SrtpSuite.parse(suite).number,
        rx_key=rx_key, tx_key=tx_key, subscriptions=subscriptions or [],
    )
    if remote is not None:
        request.remote.CopyFrom(media_pb2.Address(ip=remote[0], port=remote[1]))
    if track_ssrc:
        request.tracks.append(video_track(track_ssrc))
    return daemon.stub.CreateEndpoint(request, timeout=10)


def video_track(ssrc: int) -> media_pb2.Track:
    return media_pb2.Track(ssrc=ssrc, kind=media_pb2.VIDEO, codec="VP8", payload_type=96, clock_rate=90000)


class Browsers:
    """The handshake client process (bench/webrtc_browser.py), pinned to `cpu`."""

    def __init__(self, cpu: int, *, nice: int = 0, timeout: float = 60.0) -> None:
        self.cpu = cpu
        self.nice = nice
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.webrtc_browser"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=REPO, start_new_session=True, preexec_fn=self._preexec,
        )
        try:
            hello = json.loads(self._readline(timeout))
        except BaseException:
            self.close()
            raise
        self.pid: int = hello["pid"]
        self.fingerprint: tuple[str, str] = (hello["fingerprint"][0], hello["fingerprint"][1])

    def _preexec(self) -> None:
        die_with_parent()
        os.sched_setaffinity(0, {self.cpu})
        if self.nice:
            os.nice(self.nice)

    def _readline(self, timeout: float) -> bytes:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"the handshake client gave no answer (exit code {self.process.poll()})")
        return line

    def submit(self, target_ip: str, endpoints: list[Endpoint], concurrency: int, *,
               start_at: float | None = None, prebuild: bool = False) -> None:
        assert self.process.stdin is not None
        job = {"target_ip": target_ip, "endpoints": endpoints, "concurrency": concurrency,
               "start_at": start_at, "prebuild": prebuild}
        self.process.stdin.write(json.dumps(job).encode() + b"\n")
        self.process.stdin.flush()

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self._readline(timeout))
        return answer

    def close(self) -> None:
        """Closing stdin ends it; one that does not end within 5 s is stopped."""
        if self.process.poll() is None:
            try:
                if self.process.stdin:
                    self.process.stdin.close()
                self.process.wait(5)
            except (subprocess.TimeoutExpired, OSError):
                stop(self.process, 5)
        if self.process.stdout:
            self.process.stdout.close()
