"""`charter up` as a user runs it: one command starts the controller and the daemons, a
conference can be placed on each daemon, and Ctrl-C (SIGINT) or SIGTERM stops all cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from charter.processes import free_port
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc
from processes import (
    Process,
    free_tcp_ports,
    free_udp_range,
    live_daemons,
    operator_metadata,
    start_logged,
    udp_port_free,
    wait_serving,
)
from waits import wait_until


def charter_command() -> list[str]:
    script = shutil.which("charter")
    return [script] if script else [sys.executable, "-m", "cli"]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_charter_up_starts_everything_and_stops_cleanly(tmp_path: Path, stop_signal: signal.Signals) -> None:
    controller_port = free_port()
    web_port = free_port()
    first, last = free_udp_range(20)
    argv = [
        *charter_command(),
        "up",
        "--daemons",
        "2",
        "--controller-port",
        str(controller_port),
        "--registry-port",
        str(free_port()),
        "--mediad-port",
        str(free_tcp_ports(2)),
        "--ports",
        f"{first}-{last}",
        "--web-port",
        str(web_port),
        "--state-dir",
        str(tmp_path / "state"),
        "--metrics-port",
        "0",
        "--log-format",
        "json",
    ]
    log = tmp_path / "up.log"
    up = start_logged(argv, log)
    try:
        wait_until(lambda: "Charter is up" in log.read_text() or up.poll() is not None, timeout=60, what="charter up")
        assert up.poll() is None, log.read_text()
        # The embedded default asks for a token: `charter token` makes one with its API key.
        token = subprocess.run([*charter_command(), "token", "--api-keys", str(tmp_path / "state" / "api-keys.json")],
                               capture_output=True, text=True, check=True).stdout.strip()
        auth = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(f"127.0.0.1:{controller_port}") as channel:
            api = controller_pb2_grpc.ConferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as unauthenticated:
                api.CreateConference(pb.CreateConferenceRequest(), timeout=10)
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
            placed = {api.CreateConference(pb.CreateConferenceRequest(), timeout=10, metadata=auth).daemon_id
                      for _ in range(2)}
            assert placed == {"mediad-0", "mediad-1"}
            joined = api.Join(
                pb.JoinRequest(
                    conference_id=api.ListConferences(pb.ListConferencesRequest(), timeout=10, metadata=auth)
                    .conferences[0]
                    .conference_id
                ),
                timeout=10,
                metadata=auth,
            )
            assert not udp_port_free(joined.participant.media_address.port)
            # The embedded default sends media to this machine only.
            elsewhere = pb.JoinRequest(conference_id=joined.participant.conference_id, participant_id="far")
            elsewhere.receive_address.ip, elsewhere.receive_address.port = "10.1.2.3", 40000
            with pytest.raises(grpc.RpcError) as refused:
                api.Join(elsewhere, timeout=10, metadata=auth)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "outside the networks media may be sent to (127.0.0.0/8" in refused.value.details()
        page = f"http://127.0.0.1:{web_port}/"
        assert page in log.read_text(), "charter up prints where the conference page is"
        with urllib.request.urlopen(page, timeout=10) as reply:
            assert b'id="join-form"' in reply.read()
        with urllib.request.urlopen(page + "static/app.js", timeout=10) as reply:
            assert b"window.charterTest" in reply.read()
        with urllib.request.urlopen(page + "healthz", timeout=10) as reply:
            assert json.loads(reply.read()) == {"gateway": "SERVING", "controller": "SERVING"}
        up.send_signal(stop_signal)
        assert up.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    text = log.read_text()
    assert "every process exited cleanly" in text
    assert all(udp_port_free(p) for p in range(first, last + 1))


def test_configuration_by_environment_and_json_logs(tmp_path: Path) -> None:
    controller_address = f"127.0.0.1:{free_port()}"
    mediad_address = f"127.0.0.1:{free_port()}"
    first, last = free_udp_range(4)
    env = dict(
        os.environ,
        CHARTER_CONTROLLER_LISTEN=controller_address,
        CHARTER_CONTROLLER_LOG_FORMAT="json",
        CHARTER_CONTROLLER_STORE=str(tmp_path / "controller.sqlite3"),
        CHARTER_CONTROLLER_API_KEYS=str(tmp_path / "api-keys.json"),
        CHARTER_MEDIAD_LISTEN=mediad_address,
        CHARTER_MEDIAD_CONTROLLER=controller_address,
        CHARTER_MEDIAD_DAEMON_ID="from-env",
        CHARTER_MEDIAD_PORTS=f"{first}-{last}",
        CHARTER_MEDIAD_LOG_FORMAT="json",
        CHARTER_CONTROLLER_TLS="none",
        CHARTER_MEDIAD_TLS="none",
    )
    processes = []
    for name, module, address in (
        ("controller", "controller", controller_address),
        ("from-env", "mediad", mediad_address),
    ):
        log_path = tmp_path / f"{name}.log"
        popen = start_logged([sys.executable, "-m", module], log_path, env=env)
        processes.append(Process(name, address, popen, log_path))
        wait_serving(address, popen)
    controller, daemon = processes
    try:
        wait_until(
            lambda: live_daemons(controller) == {"from-env"}, what="the daemon configured by environment to register"
        )
        registry = controller_pb2_grpc.DaemonRegistryStub(controller.channel)
        described = registry.ListDaemons(pb.ListDaemonsRequest(), timeout=10,
                                         metadata=operator_metadata(tmp_path / "api-keys.json")).daemons[0].daemon
        assert (described.port_range.first, described.port_range.last, described.capacity) == (first, last, 4)
    finally:
        codes = [p.stop() for p in processes]
    assert codes == [0, 0]
    for process, service in ((controller, "controller"), (daemon, "mediad")):
        entries = [json.loads(line) for line in process.log().splitlines() if line.strip()]
        assert entries and all(e["service"] == service and e["level"] and e["time"] and e["message"] for e in entries)
    serving = next(e for e in entries if e["message"] == "media daemon serving")
    assert serving["daemon_id"] == "from-env" and serving["ports"] == f"{first}-{last}"


def test_charter_up_starts_a_daemon_that_died_again(tmp_path: Path) -> None:
    controller_port = free_port()
    first, last = free_udp_range(20)
    argv = [*charter_command(), "up", "--daemons", "2", "--controller-port", str(controller_port),
            "--registry-port", str(free_port()), "--mediad-port",
            str(free_tcp_ports(2)), "--ports", f"{first}-{last}", "--web-port", "0", "--lease-ttl", "3",
            "--state-dir", str(tmp_path / "state"), "--metrics-port", "0", "--log-format", "json"]
    log = tmp_path / "up.log"
    up = start_logged(argv, log)
    try:
        wait_until(lambda: "Charter is up" in log.read_text() or up.poll() is not None, timeout=60, what="charter up")
        (line,) = [line for line in log.read_text().splitlines() if line.strip().startswith("mediad-0 ")]
        pid = int(line.split(" pid ")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: "mediad-0 started again" in log.read_text(), timeout=30, what="the daemon to start again")
        assert up.poll() is None, "charter up keeps running"

        def registered_again() -> bool:
            lines = log.read_text().splitlines()
            return any("daemon registered again" in line and '"mediad-0"' in line for line in lines)

        wait_until(registered_again, timeout=30, what="the restarted daemon to register again")
        with grpc.insecure_channel(f"127.0.0.1:{controller_port}") as channel:
            daemons = controller_pb2_grpc.DaemonRegistryStub(channel).ListDaemons(
                pb.ListDaemonsRequest(), timeout=10, metadata=operator_metadata(tmp_path / "state" / "api-keys.json"))
            assert {d.daemon.daemon_id for d in daemons.daemons} == {"mediad-0", "mediad-1"}
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert "mediad-0 exited with code -9: starting it again in 0.5 s" in log.read_text()
