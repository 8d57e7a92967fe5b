"""The real thing for media peer tests: `charter up` (controller and media daemon
processes) started as a user starts it, driven over gRPC."""

from __future__ import annotations

import base64
import contextlib
import random
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from charter import pki, processes
from charter.processes import free_port
from charter.sdp import ParticipantSession, from_participant
from charter.tracks import Track
from charter.v1 import controller_pb2, controller_pb2_grpc, media_pb2, mediad_pb2, mediad_pb2_grpc
from media_processes import MediaProcess
from mediad import rtcp
from processes import free_tcp_ports, operator_metadata
from rtp import sender_session
from waits import wait_until


class CharterUp:
    """`charter up` with one media daemon on free ports, as a user starts it."""

    def __init__(
        self, workdir: Path, *, media_ports: str | None = None, log_level: str = "warning", auth: str = "none",
        tls: str = "mutual", options: Sequence[str] = (), env: Mapping[str, str] | None = None,
    ) -> None:
        self.controller_address = f"127.0.0.1:{free_port()}"
        self.registry_address = f"127.0.0.1:{free_port()}"
        """Where the daemons register (mutual TLS)."""
        self.tls_dir = workdir / "state" / "tls"
        self.api_keys = workdir / "state" / "api-keys.json"
        self.mediad_address = f"127.0.0.1:{free_port()}"
        web_port = free_port()
        self.web_url = f"http://127.0.0.1:{web_port}/"
        """The conference page of its web gateway (charter web)."""
        metrics_port = free_tcp_ports(2)
        self.metrics_urls = [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(2)]
        """/metrics of the controller and of the daemon."""
        if media_ports is None:
            # A block of the default media range; ports another process holds are skipped.
            first = random.randrange(16384, 32767 - 400, 100)
            media_ports = f"{first}-{first + 399}"
        argv = [
            sys.executable,
            "-m",
            "cli",
            "up",
            "--daemons",
            "1",
            "--controller-port",
            self.controller_address.rsplit(":", 1)[1],
            "--mediad-port",
            self.mediad_address.rsplit(":", 1)[1],
            "--registry-port",
            self.registry_address.rsplit(":", 1)[1],
            "--tls",
            tls,
            "--ports",
            media_ports,
            "--web-port",
            str(web_port),
            "--state-dir",
            str(workdir / "state"),
            "--metrics-port",
            str(metrics_port),
            # Tests call the API without tokens (auth "none"); tests/test_auth.py tests them.
            "--auth",
            auth,
            "--log-format",
            "text",
            "--log-level",
            log_level,
            *options,
        ]
        self.process = MediaProcess("charter-up", argv, workdir, env)
        self.channel = grpc.insecure_channel(self.controller_address)
        self.conferences = controller_pb2_grpc.ConferenceServiceStub(self.channel)
        self._registry = controller_pb2_grpc.DaemonRegistryStub(self.channel)
        self._rtcp_sessions: dict[bytes, Any] = {}
        self._wait_daemon()
        # The daemon answers only the controller under mutual TLS: the tests speak to it as
        # the controller, with the certificate charter up made for it.
        identity = pki.load(self.tls_dir, pki.CONTROLLER)
        self.daemon_channel = (grpc.secure_channel(self.mediad_address, pki.channel_credentials(identity))
                               if identity is not None else grpc.insecure_channel(self.mediad_address))

    def _wait_daemon(self) -> None:
        def registered() -> bool:
            assert self.process.running, f"charter up exited:\n{self.process.describe()}"
            try:
                reply = self._registry.ListDaemons(controller_pb2.ListDaemonsRequest(), timeout=2,
                                                   metadata=operator_metadata(self.api_keys))
            except grpc.RpcError:
                return False
            return len(reply.daemons) > 0

        wait_until(registered, timeout=60.0, what="charter up to serve with a registered media daemon")

    def create_conference(self, conference_id: str) -> None:
        self.conferences.CreateConference(
            controller_pb2.CreateConferenceRequest(conference_id=conference_id), timeout=10
        )

    def join(
        self,
        conference_id: str,
        participant_id: str,
        tracks: Sequence[Track] = (),
        *,
        receive_address: tuple[str, int] | None = None,
    ) -> ParticipantSession:
        request = controller_pb2.JoinRequest(
            conference_id=conference_id,
            participant_id=participant_id,
            tracks=[t.to_proto() for t in tracks],
        )
        if receive_address is not None:
            request.receive_address.ip, request.receive_address.port = receive_address
        return from_participant(self.conferences.Join(request, timeout=10).participant)

    def _participant(self, conference_id: str, participant_id: str) -> controller_pb2.Participant:
        request = controller_pb2.GetParticipantRequest(conference_id=conference_id, participant_id=participant_id)
        return self.conferences.GetParticipant(request, timeout=10)

    def session(self, conference_id: str, participant_id: str) -> ParticipantSession:
        return from_participant(self._participant(conference_id, participant_id))

    def api_sdp(self, conference_id: str, participant_id: str) -> str:
        """The SDP the API returns with the participant (Participant.sdp of GetParticipant)."""
        return str(self._participant(conference_id, participant_id).sdp)

    def request_key_frame(self, conference_id: str, participant_id: str, ssrc: int) -> None:
        """Send the daemon a PLI (RFC 4585) as the SDES participant does whose decoder starts on
        the stream it receives with `ssrc`: SRTCP with the participant's send key, from its
        receive address (a SIP phone asks so; GStreamer and ffmpeg receivers never do)."""
        participant = self._participant(conference_id, participant_id)
        key = base64.b64decode(participant.send_key)
        # One session per key: SRTCP indexes must grow, or the daemon drops a repeat as a replay.
        session = self._rtcp_sessions.setdefault(key, sender_session(media_pb2.SrtpSuite.Name(participant.suite), key))
        packet = bytes(rtcp.PictureLossIndication(sender_ssrc=1, media_ssrc=ssrc))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(session.protect_rtcp(packet),
                        (participant.media_address.ip, participant.media_address.port))

    def endpoint_stats(self, conference_id: str, participant_id: str) -> Any:
        """The daemon's EndpointStats of a participant (endpoint id "conference/participant")."""
        daemon = mediad_pb2_grpc.MediaDaemonStub(self.daemon_channel)
        stats = daemon.GetStats(mediad_pb2.GetStatsRequest(conference_id=conference_id), timeout=10)
        for endpoint in stats.endpoints:
            if endpoint.endpoint_id == f"{conference_id}/{participant_id}":
                return endpoint
        raise KeyError(f"the daemon has no endpoint for {conference_id}/{participant_id}")

    def daemon_endpoints(self, conference_id: str) -> list[str]:
        """The ids of the endpoints the daemon holds for a conference (ListEndpoints)."""
        daemon = mediad_pb2_grpc.MediaDaemonStub(self.daemon_channel)
        reply = daemon.ListEndpoints(mediad_pb2.ListEndpointsRequest(conference_id=conference_id), timeout=10)
        return [e.endpoint_id for e in reply.endpoints]

    def end_conference(self, conference_id: str) -> None:
        self.conferences.EndConference(controller_pb2.EndConferenceRequest(conference_id=conference_id), timeout=10)

    def close(self) -> int:
        """SIGTERM, as Ctrl-C would; the exit code (0: every process stopped cleanly)."""
        self.channel.close()
        self.daemon_channel.close()
        return processes.stop(self.process.process, 60)


@contextlib.contextmanager
def charter_up(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[CharterUp]:
    """A CharterUp for the block; closed after it, and then it must have stopped cleanly.
    `env`: more environment for its processes (the daemons' CHARTER_MEDIAD_* settings)."""
    system = CharterUp(workdir, env=env)
    try:
        yield system
    finally:
        code = system.close()
    assert code == 0, f"charter up did not stop cleanly (exit {code}):\n{system.process.log()}"
