"""`charter web`, the conference page's signalling gateway, as a page's WebSocket sees it:
JSON messages in, the controller's answers and events out, a clear error for every bad
message, and a closed socket leaves for its participant. Against a real `charter up`."""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from aiortc_peer import allow_loopback
from charter.processes import free_port
from charter.v1 import controller_pb2 as pb
from charter_up import CharterUp, charter_up
from processes import start_logged
from waits import wait_until
from web_page import TIMEOUT, browser_offer, reply_to


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    allow_loopback()
    with charter_up(tmp_path_factory.mktemp("charter-up")) as system:
        yield system


def test_the_page_and_health_are_served(charter: CharterUp) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.get(charter.web_url) as page:
                assert page.status == 200 and "charter" in (await page.text()).lower()
            async with http.get(charter.web_url + "static/app.js") as script:
                assert script.status == 200 and "window.charterTest" in await script.text()
            async with http.get(charter.web_url + "healthz") as health:
                assert (health.status, await health.json()) == (200, {"gateway": "SERVING", "controller": "SERVING"})

    asyncio.run(scenario())


def test_bad_messages_get_an_error_naming_what_to_fix(charter: CharterUp) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.ws_connect(charter.web_url + "ws") as ws:
            cases: list[tuple[Any, str, str, str]] = [
                ("not json", "gateway", "INVALID_ARGUMENT", "not JSON"),
                ("[1, 2]", "gateway", "INVALID_ARGUMENT", "not a JSON object"),
                ({"type": "dance"}, "gateway", "INVALID_ARGUMENT", "'dance' is not join, answer or leave"),
                ({"type": "join", "offer": "v=0"}, "gateway", "INVALID_ARGUMENT", "conference"),
                ({"type": "join", "conference": "gw"}, "gateway", "INVALID_ARGUMENT", "offer"),
                ({"type": "answer", "sdp": "v=0", "version": 1}, "Answer", "FAILED_PRECONDITION", "not joined"),
                ({"type": "join", "conference": "gw-bad", "offer": "v=0\r\n"}, "Join", "INVALID_ARGUMENT", "offer"),
            ]
            for message, call, code, detail in cases:
                reply = await reply_to(ws, message)
                assert (reply["type"], reply["call"], reply["code"]) == ("error", call, code), (message, reply)
                assert detail in reply["detail"], (message, reply)
            # The conference the failed join created is gone again.
            with pytest.raises(grpc.RpcError) as missing:
                charter.conferences.GetConference(pb.GetConferenceRequest(conference_id="gw-bad"), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    asyncio.run(scenario())


def test_join_over_the_socket_and_a_closed_socket_leaves(charter: CharterUp) -> None:
    async def scenario() -> None:
        pc, offer = await browser_offer()
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                async with http.ws_connect(charter.web_url + "ws") as ws:
                    join = {"type": "join", "conference": "gw-join", "name": "Ada", "offer": offer}
                    joined = await reply_to(ws, join)
                    assert joined["type"] == "joined", joined
                    assert (joined["conference"], joined["name"]) == ("gw-join", "Ada")
                    assert "a=ice-lite" in joined["answer"] and "a=fingerprint:" in joined["answer"]
                    again = await reply_to(ws, {"type": "join", "conference": "gw-join", "offer": offer})
                    assert (again["type"], again["code"]) == ("error", "FAILED_PRECONDITION"), again
                    conference = charter.conferences.GetConference(
                        pb.GetConferenceRequest(conference_id="gw-join"), timeout=10
                    )
                    assert [p.participant_id for p in conference.participants] == [joined["participant"]]
        finally:
            await pc.close()

    asyncio.run(scenario())

    def left() -> bool:
        try:
            conference = charter.conferences.GetConference(pb.GetConferenceRequest(conference_id="gw-join"), timeout=10)
        except grpc.RpcError as error:
            return bool(error.code() == grpc.StatusCode.NOT_FOUND)
        return not conference.participants

    wait_until(left, what="the participant of the closed socket to leave")


def test_without_a_controller_health_says_so_and_sigterm_stops_it(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "web.log"
    web = start_logged(
        [sys.executable, "-m", "cli", "web", "--listen", f"127.0.0.1:{port}", "--controller",
         f"127.0.0.1:{free_port()}", "--log-format", "json"],
        log,
    )
    try:
        async def health() -> tuple[int, Any]:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as reply:
                    return reply.status, await reply.json()

        def answering() -> bool:
            assert web.poll() is None, log.read_text()
            try:
                asyncio.run(health())
            except aiohttp.ClientError:
                return False
            return True

        wait_until(answering, what="charter web to listen")
        status, body = asyncio.run(health())
        assert (status, body["gateway"], body["controller"]) == (503, "SERVING", "UNAVAILABLE"), body
        web.send_signal(signal.SIGTERM)
        assert web.wait(20) == 0, log.read_text()
    finally:
        if web.poll() is None:
            web.kill()
            web.wait()
    messages = [json.loads(line)["message"] for line in log.read_text().splitlines() if line.startswith("{")]
    assert "web gateway serving" in messages and "web gateway stopped" in messages
