"""Strangers are kept out of the public API: with --auth token (the default) every
ConferenceService call needs a signed token whose grants cover it. Without one, with an
expired one, or one signed by another key: UNAUTHENTICATED; outside its grants (another
conference, another action, another participant): PERMISSION_DENIED; each saying why, and
nothing changed by a refused call. The conference page of `charter up` gets its own token
from the gateway and joins."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from aiortc_peer import allow_loopback
from charter.tokens import ApiKeys, Grant, issue
from charter.v1 import controller_pb2 as pb
from charter_up import CharterUp
from processes import Cluster, cluster, conference_stub, registry_stub
from test_web_gateway import browser_offer, reply_to

ALL = ("create", "end", "read", "join", "watch")


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("auth"), daemons=1, controller_options=["--auth", "token"]) as running:
        yield running


def keys(charter: Cluster) -> ApiKeys:
    return ApiKeys(Path(charter.controller.log_path).parent / "api-keys.json")


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def calls(api: Any, registry: Any = None) -> dict[str, Callable[..., Any]]:
    """Every ConferenceService RPC, on conference "locked" as participant "p", and the
    registry's ListDaemons (for operators; the rest of the registry is for daemons, with
    their certificates: tests/test_tls.py)."""
    return {
        "ListDaemons": lambda **kw: registry.ListDaemons(pb.ListDaemonsRequest(), **kw),
        "CreateConference": lambda **kw: api.CreateConference(pb.CreateConferenceRequest(conference_id="locked"), **kw),
        "GetConference": lambda **kw: api.GetConference(pb.GetConferenceRequest(conference_id="locked"), **kw),
        "ListConferences": lambda **kw: api.ListConferences(pb.ListConferencesRequest(), **kw),
        "EndConference": lambda **kw: api.EndConference(pb.EndConferenceRequest(conference_id="locked"), **kw),
        "Join": lambda **kw: api.Join(pb.JoinRequest(conference_id="locked", participant_id="p"), **kw),
        "Answer": lambda **kw: api.Answer(pb.AnswerRequest(conference_id="locked", participant_id="p", sdp="v=0",
                                                            version=1), **kw),
        "GetParticipant": lambda **kw: api.GetParticipant(
            pb.GetParticipantRequest(conference_id="locked", participant_id="p"), **kw),
        "Leave": lambda **kw: api.Leave(pb.LeaveRequest(conference_id="locked", participant_id="p"), **kw),
        "WatchConference": lambda **kw: next(api.WatchConference(
            pb.WatchConferenceRequest(conference_id="locked", participant_id="p"), **kw)),
    }


def refused(call: Callable[..., Any], **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(timeout=10, **kw)
    return error.value


def state(api: Any, token: str) -> list[str]:
    reply = api.ListConferences(pb.ListConferencesRequest(), timeout=10, metadata=auth(token))
    return [c.conference_id for c in reply.conferences]


@pytest.mark.parametrize("method", list(calls(None)))
def test_every_call_without_a_valid_token_is_unauthenticated(charter: Cluster, method: str) -> None:
    api = conference_stub(charter.controller)
    admin = keys(charter).token(Grant("*", ALL))
    before = state(api, admin)
    call = calls(api, registry_stub(charter.controller))[method]
    expired = issue("default", keys(charter).keys["default"], Grant("*", ALL), ttl=1, now=1_000_000)
    foreign = issue("default", b"not the controller's secret, not at all", Grant("*", ALL))
    unknown = issue("someone", b"x" * 32, Grant("*", ALL))
    for metadata, says in ((None, "needs a token"), (auth("not.a.jwt"), "not a JWT"), (auth(expired), "expired"),
                           (auth(foreign), "signature"), (auth(unknown), "not one this controller knows"),
                           ((("authorization", "Basic abc"),), "Bearer")):
        error = refused(call, metadata=metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and says in error.details(), (says, error.details())
    assert state(api, admin) == before, "a refused call changed nothing"


@pytest.mark.parametrize(("method", "grant", "says"), [
    ("CreateConference", Grant("other", ALL), "grants conference 'other', not 'locked'"),
    ("EndConference", Grant("locked", ("join", "watch")), "not end"),
    ("ListConferences", Grant("locked", ALL), "not '*'"),
    ("ListDaemons", Grant("locked", ALL), "not '*'"),
    ("ListDaemons", Grant("*", ("create", "join")), "not read"),
    ("Join", Grant("locked", ("join",), "q"), "acts as participant 'q', not 'p'"),
    ("WatchConference", Grant("locked", ("join",), "p"), "not watch"),
    ("WatchConference", Grant("locked", ("watch",), "q"), "acts as participant 'q'"),
])
def test_a_call_outside_the_grants_is_permission_denied(charter: Cluster, method: str, grant: Grant,
                                                         says: str) -> None:
    api = conference_stub(charter.controller)
    admin = keys(charter).token(Grant("*", ALL))
    before = state(api, admin)
    error = refused(calls(api, registry_stub(charter.controller))[method], metadata=auth(keys(charter).token(grant)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and says in error.details(), error.details()
    assert state(api, admin) == before


def test_a_token_within_its_grants_works(charter: Cluster) -> None:
    api = conference_stub(charter.controller)
    host = keys(charter).token(Grant("granted", ("create", "end", "read")))
    guest = keys(charter).token(Grant("granted", ("join", "watch"), "guest"))
    api.CreateConference(pb.CreateConferenceRequest(conference_id="granted"), timeout=10, metadata=auth(host))
    joined = api.Join(pb.JoinRequest(conference_id="granted", participant_id="guest"), timeout=10,
                      metadata=auth(guest))
    assert joined.participant.participant_id == "guest"
    first = next(api.WatchConference(pb.WatchConferenceRequest(conference_id="granted", participant_id="guest"),
                                     timeout=10, metadata=auth(guest)))
    assert first.participant_joined.participant.participant_id == "guest"
    api.EndConference(pb.EndConferenceRequest(conference_id="granted"), timeout=10, metadata=auth(host))


def test_the_conference_page_gets_its_token_from_the_gateway(tmp_path: Path) -> None:
    """`charter up` as it comes (--auth token): a page joins through the gateway, which signs
    it a token for its conference and participant, and hands it over."""
    allow_loopback()
    up = CharterUp(tmp_path, auth="token")
    try:
        with pytest.raises(grpc.RpcError) as error:
            up.create_conference("nope")
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED

        async def scenario() -> dict[str, Any]:
            pc, offer = await browser_offer()
            try:
                async with aiohttp.ClientSession() as http, http.ws_connect(up.web_url + "ws") as ws:
                    return await reply_to(ws, {"type": "join", "conference": "paged", "name": "Ada", "offer": offer})
            finally:
                await pc.close()

        joined = asyncio.run(scenario())
        assert joined["type"] == "joined", joined
        token = joined["token"]
        claims = json.loads(_payload(token))
        assert claims["grants"] == {"conference": "paged", "actions": ["join", "watch", "read"],
                                    "participant": joined["participant"]}
    finally:
        assert up.close() == 0


def _payload(token: str) -> str:
    import base64

    body = token.split(".")[1]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
