"""Bad input on the WebRTC slow path of a real `charter up`: STUN that does not verify, DTLS
from an address that never passed ICE, a flood of DTLS-looking datagrams, a DTLS client
whose certificate is not the offer's, and offers and answers the controller must refuse.
Each is dropped (or refused) and counted where an operator looks (GetStats' `webrtc` map,
an endpoint's drops, the watch stream, the daemon's log); nothing crashes and the
participants beside it go on.

The browsers here are plain UDP sockets speaking ICE and DTLS by hand (tests/webrtc_client.py)
after joining with a minimal offer, and aiortc participants (tests/aiortc_peer.py)."""
from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
import sdp_transform

from aiortc_peer import AiortcParticipant, allow_loopback
from charter.tracks import Track
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc, mediad_pb2, mediad_pb2_grpc
from charter_up import CharterUp, charter_up
from mediad.dtls import Certificate
from webrtc_client import DTLS_HELLO_HEADER, DtlsClient, binding_request

pytestmark = pytest.mark.peers

BROWSER = Certificate.generate("browser")
IMPOSTOR = Certificate.generate("impostor")
WAIT = 20.0
"""The longest a socket waits for the daemon's answer (only a failing test waits so long)."""
FLOOD = 5000


@pytest.fixture(scope="module")
def charter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CharterUp]:
    allow_loopback()
    with charter_up(tmp_path_factory.mktemp("charter-up")) as system:
        yield system


def minimal_offer(
    *,
    ufrag: str | None = "brws",
    pwd: str | None = "browserpassword0123456789",
    fingerprint: str | None = BROWSER.fingerprint.value,
    codec: str = "opus/48000/2",
    ssrc: int = 0,
) -> str:
    """A browser's offer reduced to what Charter needs: one bundled, rtcp-muxed audio m-line
    sending Opus, ICE credentials and a certificate fingerprint."""
    lines = [
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0", "a=msid-semantic:WMS *",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendonly", "a=rtcp-mux",
        f"a=rtpmap:111 {codec}", "a=setup:actpass",
        f"a=ssrc:{ssrc or int.from_bytes(os.urandom(4), 'big') | 1} cname:test", "a=msid:stream mic",
    ]
    lines += [f"a=ice-ufrag:{ufrag}"] if ufrag else []
    lines += [f"a=ice-pwd:{pwd}"] if pwd else []
    lines += [f"a=fingerprint:sha-256 {fingerprint}"] if fingerprint else []
    return "\r\n".join(lines) + "\r\n"


@dataclass
class HandBrowser:
    """A participant joined with `minimal_offer`, whose ICE and DTLS a test speaks by hand."""

    participant_id: str
    media: tuple[str, int]
    username: str
    """USERNAME of its checks: "<daemon ufrag>:<browser ufrag>"."""
    key: bytes
    """The daemon's ICE password for it."""

    def check(self, *, use_candidate: bool = True) -> bytes:
        return binding_request(self.username, self.key, use_candidate=use_candidate)


def join_by_hand(charter: CharterUp, conference_id: str, name: str) -> HandBrowser:
    reply = charter.conferences.Join(pb.JoinRequest(conference_id=conference_id, participant_id=name,
                                                    offer=minimal_offer()), timeout=10)
    answer = sdp_transform.parse(reply.participant.sdp)
    media = answer["media"][0]
    ufrag, pwd = media.get("iceUfrag", answer.get("iceUfrag")), media.get("icePwd", answer.get("icePwd"))
    address = reply.participant.media_address
    return HandBrowser(reply.participant.participant_id, (address.ip, address.port), f"{ufrag}:brws", pwd.encode())


def end_conference(charter: CharterUp, conference_id: str) -> None:
    """End it unless it ended by itself (its last participant gone)."""
    try:
        charter.end_conference(conference_id)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    return sock


def daemon(charter: CharterUp) -> mediad_pb2_grpc.MediaDaemonStub:
    return mediad_pb2_grpc.MediaDaemonStub(charter.daemon_channel)


def webrtc_counts(charter: CharterUp) -> dict[str, int]:
    """The daemon's Stats.webrtc (counted since it started)."""
    stats = daemon(charter).GetStats(mediad_pb2.GetStatsRequest(conference_id="-none-"), timeout=10)
    return dict(stats.webrtc)


def grown(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    return {name: after.get(name, 0) - before.get(name, 0) for name in names}


def first_answer(sock: socket.socket, browser: HandBrowser) -> None:
    """Send a valid check and take the first datagram back: it must answer that check, so
    nothing sent before it was answered (the daemon handles one socket's datagrams in order)."""
    check = browser.check()
    sock.sendto(check, browser.media)
    answer = sock.recv(2048)
    assert answer[:2] == b"\x01\x01" and answer[8:20] == check[8:20], "the first answer is the valid check's"


def test_stun_that_does_not_verify_is_counted_and_unanswered(charter: CharterUp) -> None:
    charter.create_conference("bad-stun")
    try:
        browser = join_by_hand(charter, "bad-stun", "stunner")
        good = browser.check()
        bad = [
            binding_request(browser.username.split(":")[0] + ":nope", browser.key),  # wrong ufrag
            binding_request(browser.username, b"not the password the daemon gave"),  # bad MESSAGE-INTEGRITY
            good[:-1] + bytes([good[-1] ^ 0x5A]),  # bad FINGERPRINT
        ]
        before = webrtc_counts(charter)
        with udp_socket() as sock:
            for datagram in bad:
                sock.sendto(datagram, browser.media)
            first_answer(sock, browser)
        after = webrtc_counts(charter)
        assert grown(before, after, "stun_bad_ufrag", "stun_bad_integrity", "stun_bad_fingerprint") == {
            "stun_bad_ufrag": 1, "stun_bad_integrity": 1, "stun_bad_fingerprint": 1,
        }
        assert after["stun_checks"] > before.get("stun_checks", 0)
        # Every one reached the slow path (four datagrams; the slow path raised on none).
        counters = charter.endpoint_stats("bad-stun", browser.participant_id).counters
        assert (counters.handshakes_in, counters.handshake_errors) == (4, 0)
        # Still serving: the controller and the daemon answer, the participant is there.
        assert charter.daemon_endpoints("bad-stun") == [f"bad-stun/{browser.participant_id}"]
    finally:
        end_conference(charter, "bad-stun")


def test_dtls_from_an_address_that_never_passed_ice_is_counted_and_unanswered(charter: CharterUp) -> None:
    charter.create_conference("dtls-first")
    try:
        browser = join_by_hand(charter, "dtls-first", "hasty")
        before = webrtc_counts(charter)
        with udp_socket() as sock:
            (hello,) = DtlsClient(BROWSER).step()
            sock.sendto(hello, browser.media)
            first_answer(sock, browser)  # no ServerHello came first
        assert grown(before, webrtc_counts(charter), "dtls_unknown_address") == {"dtls_unknown_address": 1}
    finally:
        end_conference(charter, "dtls-first")


def test_a_certificate_that_is_not_the_offers_ends_the_participant(charter: CharterUp) -> None:
    conference = "impostor"
    charter.create_conference(conference)
    watch = charter.conferences.WatchConference(pb.WatchConferenceRequest(conference_id=conference), timeout=60)
    try:
        browser = join_by_hand(charter, conference, "mallory")
        before = webrtc_counts(charter)
        with udp_socket() as sock:
            first_answer(sock, browser)  # ICE passed, nominated
            client = DtlsClient(IMPOSTOR)
            for datagram in client.step():
                sock.sendto(datagram, browser.media)
            # The daemon's flight (ServerHello ... CertificateRequest) until the client answers
            # it with its certificate, which the daemon then refuses.
            flight: list[bytes] = []
            while not flight:
                flight = client.step([sock.recv(2048)])
            for datagram in flight:
                sock.sendto(datagram, browser.media)
        left = next(
            e.participant_left for e in watch
            if e.WhichOneof("event") == "participant_left" and e.participant_left.participant_id == "mallory"
        )
        assert left.reason == "gone"
        assert charter.daemon_endpoints(conference) == []
        assert grown(before, webrtc_counts(charter), "dtls_fingerprint_mismatch") == {"dtls_fingerprint_mismatch": 1}
        log = charter.process.log_path.read_text(errors="replace")
        assert "DTLS handshake failed" in log and "certificate does not match the fingerprint" in log, log[-3000:]
    finally:
        watch.cancel()
        end_conference(charter, conference)


def test_a_dtls_flood_is_cut_off_in_the_core_and_media_goes_on(charter: CharterUp) -> None:
    conference = "flooded"

    async def scenario(api: controller_pb2_grpc.ConferenceServiceStub) -> None:
        await api.CreateConference(pb.CreateConferenceRequest(conference_id=conference), timeout=10)
        ana = AiortcParticipant(api, conference, "ana")
        bo = AiortcParticipant(api, conference, "bo", send_video=False)
        try:
            await ana.join()
            joined = await bo.join()
            target = (joined.media_address.ip, joined.media_address.port)

            def frames() -> int:
                got = bo.received.get(ana.participant_id)
                return got.video_frames if got is not None else 0

            await until(lambda: frames() > 0, f"bo's first frame of ana ({bo.errors}, {ana.errors})")
            stats = await asyncio.to_thread(charter.endpoint_stats, conference, bo.participant_id)
            drops_before = stats.counters.drops["handshake_flood"]
            before = await asyncio.to_thread(webrtc_counts, charter)
            at_flood = frames()
            await asyncio.to_thread(flood, target)
            # bo goes on decoding ana's video: a second of it after the flood.
            await until(lambda: frames() >= at_flood + 30, f"bo's frames after the flood ({bo.errors})")
            stats = await asyncio.to_thread(charter.endpoint_stats, conference, bo.participant_id)
            after = await asyncio.to_thread(webrtc_counts, charter)
            flooded = stats.counters.drops["handshake_flood"] - drops_before
            reached_python = grown(before, after, "dtls_unknown_address")["dtls_unknown_address"]
            # The core's bucket (a burst of 200, then 100 a second) cut the flood off before
            # Python; what got through was dropped there as from an address that passed no check.
            assert flooded > 0 and reached_python > 0, (flooded, reached_python)
            assert bo.connection_state == "connected" and not bo.errors and not ana.errors
        finally:
            await bo.leave()
            await ana.leave()

    run(charter, scenario)


def flood(target: tuple[str, int]) -> None:
    with udp_socket() as sock:
        for i in range(FLOOD):
            sock.sendto(DTLS_HELLO_HEADER + i.to_bytes(8, "big") + b"\x00\x20" + os.urandom(32), target)


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def run(
    charter: CharterUp, scenario: Callable[[controller_pb2_grpc.ConferenceServiceStub], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(charter.controller_address) as channel:
            await scenario(controller_pb2_grpc.ConferenceServiceStub(channel))

    asyncio.run(main())


# --- the controller's API: offers and answers it refuses -----------------------------------


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("offer", "says"),
    [
        (minimal_offer(ufrag=None), "offer: has no a=ice-ufrag"),
        (minimal_offer(pwd=None), "offer: has no a=ice-ufrag and a=ice-pwd"),
        (minimal_offer(fingerprint=None), "offer: has no a=fingerprint"),
        (minimal_offer(codec="speex/8000"), "offers no codec Charter forwards (opus)"),
        (minimal_offer().replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 111")
         .replace("opus/48000/2", "VP9/90000"), "offers no codec Charter forwards (VP8 or H264"),
    ],
    ids=["no ice-ufrag", "no ice-pwd", "no fingerprint", "no opus", "no VP8 or H264"],
)
def test_join_with_an_offer_lacking_what_charter_needs_is_refused_naming_it(
    charter: CharterUp, offer: str, says: str
) -> None:
    charter.create_conference("bad-offers")
    try:
        error = refused(lambda: charter.conferences.Join(pb.JoinRequest(conference_id="bad-offers", offer=offer),
                                                         timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), error.details()
        assert charter.daemon_endpoints("bad-offers") == []
    finally:
        end_conference(charter, "bad-offers")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (dict(tracks=[Track(5, "audio", "opus", 111, 48000, 2).to_proto()]), "tracks"),
        (dict(send_key="AAAA"), "send_key"),
    ],
    ids=["tracks", "send_key"],
)
def test_join_with_an_offer_and_sdes_fields_is_refused(
    charter: CharterUp, extra: dict[str, object], field: str
) -> None:
    request = pb.JoinRequest(conference_id="mixed-up", offer=minimal_offer(), **extra)  # type: ignore[arg-type]
    error = refused(lambda: charter.conferences.Join(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(f"{field}: "), (
        error.details()
    )


def outstanding_offer(charter: CharterUp, conference_id: str, participant_id: str) -> tuple[str, int]:
    """Charter's offer awaiting the participant's answer, from its watch stream."""
    stream = charter.conferences.WatchConference(
        pb.WatchConferenceRequest(conference_id=conference_id, participant_id=participant_id), timeout=30
    )
    try:
        offer = next(e.session_offer for e in stream if e.WhichOneof("event") == "session_offer")
        return offer.sdp, offer.version
    finally:
        stream.cancel()


def answer_by_hand(offer: str) -> str:
    """An answer a browser could give to Charter's offer: the same m-lines, its own ICE and
    DTLS (a=setup:active), each direction turned round."""
    parsed = sdp_transform.parse(offer)
    parsed.pop("icelite", None)
    for media in parsed["media"]:
        media.update(iceUfrag="brws", icePwd="browserpassword0123456789", setup="active",
                     fingerprint={"type": "sha-256", "hash": BROWSER.fingerprint.value})
        media["direction"] = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(media.get("direction"), "inactive")
        media.pop("candidates", None)
        media.pop("endOfCandidates", None)
        if media["direction"] == "recvonly":
            media.pop("ssrcs", None)
            media.pop("msid", None)
    return str(sdp_transform.write(parsed))


def test_answers_that_do_not_fit_are_refused(charter: CharterUp) -> None:
    conference = "answers"
    charter.create_conference(conference)
    try:
        charter.join(conference, "sdes")  # an SDES participant, with nothing to answer
        web = join_by_hand(charter, conference, "web")
        join_by_hand(charter, conference, "talker")  # its audio: a route, so an offer to "web"
        sdp, version = outstanding_offer(charter, conference, web.participant_id)

        def answer(participant_id: str, text: str, number: int) -> None:
            charter.conferences.Answer(pb.AnswerRequest(conference_id=conference, participant_id=participant_id,
                                                        sdp=text, version=number), timeout=10)

        good = answer_by_hand(sdp)
        reordered = sdp_transform.parse(good)
        reordered["media"] = list(reversed(reordered["media"]))
        for text in (sdp_transform.write(reordered), answer_by_hand(minimal_offer())):
            error = refused(lambda t=text: answer("web", t, version))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "mids" in error.details(), error.details()
        error = refused(lambda: answer("sdes", good, version))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "without an SDP offer" in error.details()
        error = refused(lambda: answer("web", good, version + 1))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not the offer awaiting" in error.details()

        answer("web", good, version)
        # Answered: the same version again, and, once the next offer is out, the stale one.
        error = refused(lambda: answer("web", good, version))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "no offer is outstanding" in error.details()
        join_by_hand(charter, conference, "late")
        newer, next_version = outstanding_offer(charter, conference, web.participant_id)
        assert next_version > version
        error = refused(lambda: answer("web", answer_by_hand(newer), version))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not the offer awaiting" in error.details()
        answer("web", answer_by_hand(newer), next_version)
    finally:
        end_conference(charter, conference)
