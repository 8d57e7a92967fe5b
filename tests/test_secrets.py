"""Secrets stay secret: a full run of `charter up` at log level debug (SDES participants with
keys Charter made and keys they chose, a refused key, a browser's DTLS handshake, media
both ways, a leave and an end) leaves no SRTP key, no DTLS-exported key, no DTLS private
key, no API secret and no private key of Charter's TLS certificates in any log line, any
error, any stats or metrics answer, or the state file (where keys rest sealed). Each secret
is looked for in every form it could be written in."""
from __future__ import annotations

import asyncio
import base64
import random
import sqlite3
import urllib.request
from pathlib import Path

import grpc

from aiortc_peer import AiortcParticipant, allow_loopback
from charter.suites import generate_key
from charter.tokens import ApiKeys
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, mediad_pb2, mediad_pb2_grpc
from charter_up import CharterUp
from participants import Peer, exchange
from waits import wait_until


def forms(secret: bytes) -> list[bytes]:
    """How a key could appear in text: raw, base64 (padded or not), hex either case."""
    encoded = base64.b64encode(secret)
    return [secret, encoded, encoded.rstrip(b"="), secret.hex().encode(), secret.hex().upper().encode()]


def test_no_secret_in_logs_errors_stats_or_the_state_file(tmp_path: Path) -> None:
    allow_loopback()
    up = CharterUp(tmp_path, log_level="debug")
    secrets: dict[str, bytes] = {}
    texts: list[bytes] = []
    try:
        api = up.conferences
        up.create_conference("secret")
        chosen = generate_key("AES_CM_128_HMAC_SHA1_80")
        alice, bob = Peer("alice", [random.randrange(1, 2**32)]), Peer("bob", [random.randrange(1, 2**32)])
        request = alice.join_request("secret", give_address=True)
        request.send_key = base64.b64encode(chosen).decode()
        alice.joined(api.Join(request, timeout=10).participant)
        bob.joined(api.Join(bob.join_request("secret", give_address=True), timeout=10).participant)
        for peer in (alice, bob):
            secrets[f"{peer.participant_id} send"] = base64.b64decode(peer.session.send_key)
            secrets[f"{peer.participant_id} receive"] = base64.b64decode(peer.session.receive_key)
        exchange([alice, bob], lambda: sum(alice.counts().values()) >= 10 and sum(bob.counts().values()) >= 10)
        # A key refused (all zeros) must not be echoed either; its error is kept for the search.
        zeros = base64.b64encode(bytes(30)).decode()
        refused = pb.JoinRequest(conference_id="secret", participant_id="zero", send_key=zeros)
        try:
            api.Join(refused, timeout=10)
        except grpc.RpcError as error:
            texts.append((error.details() or "").encode())

        async def browser() -> None:
            async with grpc.aio.insecure_channel(up.controller_address) as channel:
                peer = AiortcParticipant(controller_pb2_grpc.ConferenceServiceStub(channel), "secret", "web")
                await peer.join()
                await asyncio.sleep(0)
                deadline = asyncio.get_running_loop().time() + 20
                while peer.connection_state != "connected" and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.1)
                assert peer.connection_state == "connected", "the browser's handshake completed"
                await peer.leave()

        # The SRTP keys aiortc exports from its DTLS handshake (those the daemon exports too).
        import aiortc.rtcdtlstransport as dtls_module

        exported: list[bytes] = []
        plain_policy = dtls_module.Policy

        class RecordingPolicy(plain_policy):  # type: ignore[misc, valid-type]
            def __init__(self, key: bytes | None = None, **options: object) -> None:
                if key:
                    exported.append(bytes(key))
                super().__init__(key=key, **options)

        dtls_module.Policy = RecordingPolicy
        try:
            asyncio.run(browser())
        finally:
            dtls_module.Policy = plain_policy
        assert len(exported) == 2, "the browser's two DTLS-exported keys were seen"
        secrets.update({f"web exported {i}": key for i, key in enumerate(exported)})
        daemon = mediad_pb2_grpc.MediaDaemonStub(up.daemon_channel)
        texts.append(daemon.GetStats(mediad_pb2.GetStatsRequest(), timeout=10).SerializeToString())
        texts.append(daemon.ListEndpoints(mediad_pb2.ListEndpointsRequest(), timeout=10).SerializeToString())
        texts.append(api.GetConference(pb.GetConferenceRequest(conference_id="secret"), timeout=10).SerializeToString())
        for url in up.metrics_urls:
            with urllib.request.urlopen(url, timeout=10) as reply:
                texts.append(reply.read())
        api.Leave(pb.LeaveRequest(conference_id="secret", participant_id="bob"), timeout=10)
        up.end_conference("secret")
        alice.close()
        bob.close()
    finally:
        code = up.close()
    assert code == 0
    wait_until(lambda: "Charter stopped" in up.process.log(), what="charter up to finish its log")
    texts.append(up.process.log_path.read_bytes())
    state = tmp_path / "state" / "controller.sqlite3"
    texts += [p.read_bytes() for p in state.parent.glob("controller.sqlite3*") if not p.name.endswith(".key")]
    with sqlite3.connect(state) as db:
        texts += [row[0].encode() for row in db.execute("SELECT record FROM events")]
    assert len(secrets) == 6, secrets.keys()
    # What the state directory holds for the parts' own use: API secrets, TLS private keys.
    for key_id, secret in ApiKeys(up.api_keys).keys.items():
        secrets[f"API secret {key_id}"] = secret
    key_files = sorted(up.tls_dir.glob("*-key.pem"))
    assert {p.name for p in key_files} >= {"ca-key.pem", "charter-controller-key.pem", "mediad-0-key.pem"}, key_files
    for path in key_files:
        pem = path.read_bytes()
        secrets[f"TLS key {path.name}"] = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
        texts_pem_lines = [line for line in pem.splitlines()[1:-1] if len(line) >= 32]
        assert not [line for line in texts_pem_lines for text in texts if line in text], f"{path.name} leaked"
    log = up.process.log_path.read_text()
    assert "DTLS-SRTP connected" in log and "participant joined" in log, "a run logged in full"
    private = (tmp_path / "state").glob("*.pem")
    assert not list(private), "no private key written beside the state"
    found = [(name, i) for name, secret in secrets.items() for i, text in enumerate(texts)
             if any(form in text for form in forms(secret))]
    assert found == [], f"secrets found in (secret, text #): {found}"
