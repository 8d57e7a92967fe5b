"""mediad/dtls.py: the daemon's DTLS-SRTP server against a pyOpenSSL DTLS client, both on
memory BIOs in this process (the client plays the browser: a=setup:active). The keys must be
what the client exports (RFC 5764 4.2), a certificate that is not the SDP's fails the
handshake with a DtlsError saying so, and bad records never raise anything else."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charter.endpoints import DtlsFingerprint
from charter.suites import SrtpSuite
from mediad.dtls import MAX_DATAGRAM, RECORD_HEADER, Certificate, DtlsError, DtlsServer, fingerprint_of, pack_records
from webrtc_client import CM80, GCM, DtlsClient

DAEMON = Certificate.generate()
BROWSER = Certificate.generate("browser")


def unnumbered(datagrams: list[bytes]) -> list[bytes]:
    """The records of datagrams without their sequence numbers."""
    found = []
    for datagram in datagrams:
        position = 0
        while position < len(datagram):
            length = int.from_bytes(datagram[position + 11:position + 13], "big")
            found.append(datagram[position:position + 3] + datagram[position + 11:position + RECORD_HEADER + length])
            position += RECORD_HEADER + length
    return found


def handshake(server: DtlsServer, client: DtlsClient, replies: list[bytes] | None = None) -> list[bytes]:
    """Run the handshake to its end (DtlsError if the server fails it), the client taking
    `replies` first; every datagram the server sent."""
    from_server: list[bytes] = []
    replies = replies or []
    for _ in range(10):
        outgoing = client.step(replies)
        replies = [reply for datagram in outgoing for reply in server.feed(datagram)]
        from_server += replies
        if client.done and server.keys is not None:
            client.step(replies)
            return from_server
    raise AssertionError(f"no handshake after 10 rounds (client done: {client.done}, keys: {server.keys})")


@pytest.mark.parametrize(
    ("offered", "profile", "suite", "key", "salt"),
    [
        (CM80, CM80, SrtpSuite.AES_CM_128_HMAC_SHA1_80, 16, 14),
        (GCM, GCM, SrtpSuite.AEAD_AES_128_GCM, 16, 12),
        # Both offered: the daemon's preference (GCM, the cheaper to protect).
        (CM80 + b":" + GCM, GCM, SrtpSuite.AEAD_AES_128_GCM, 16, 12),
    ],
    ids=["cm80", "gcm", "both"],
)
def test_the_handshake_keys_what_the_client_exports(
    offered: bytes, profile: bytes, suite: SrtpSuite, key: int, salt: int
) -> None:
    server = DtlsServer(DAEMON, [BROWSER.fingerprint])
    client = DtlsClient(BROWSER, offered)
    sent = handshake(server, client)
    assert server.keys is not None and server.keys.suite == suite
    assert client.connection.get_selected_srtp_profile() == profile
    # RFC 5764 4.2: client key, server key, client salt, server salt.
    material = client.export(2 * (key + salt))
    client_key, server_key = material[:key], material[key:2 * key]
    client_salt, server_salt = material[2 * key:2 * key + salt], material[2 * key + salt:]
    assert server.keys.rx_key == client_key + client_salt, "the daemon decrypts with what the browser protects with"
    assert server.keys.tx_key == server_key + server_salt
    assert (server.keys.rx_key, server.keys.tx_key) == client.srtp_keys(key, salt)
    assert server.timeout() is None and server.retransmit() == []
    assert all(len(d) <= MAX_DATAGRAM for d in sent)
    # The client sees the daemon's certificate, whose fingerprint the SDP answers carry.
    peer = client.connection.get_peer_certificate()
    assert peer is not None and fingerprint_of(peer, "sha-256") == DAEMON.fingerprint.value


def test_any_of_several_fingerprints_and_algorithms_may_match() -> None:
    other = Certificate.generate("other").fingerprint
    sha512 = DtlsFingerprint("sha-512", fingerprint_of(BROWSER.cert, "sha-512"))
    server = DtlsServer(DAEMON, [other, sha512])
    handshake(server, DtlsClient(BROWSER))
    assert server.keys is not None


def test_a_certificate_that_is_not_the_sdps_fails_saying_so() -> None:
    impostor = Certificate.generate("impostor")
    server = DtlsServer(DAEMON, [BROWSER.fingerprint])
    with pytest.raises(DtlsError, match="certificate does not match the fingerprint"):
        handshake(server, DtlsClient(impostor))
    assert server.keys is None


def test_a_client_without_a_certificate_fails() -> None:
    server = DtlsServer(DAEMON, [BROWSER.fingerprint])
    with pytest.raises(DtlsError, match="handshake failed: .*certificate"):
        handshake(server, DtlsClient(None))
    assert server.keys is None


@pytest.mark.parametrize("offered", [None, b"SRTP_AES128_CM_SHA1_32"], ids=["no use_srtp", "only CM_SHA1_32"])
def test_a_client_offering_no_srtp_profile_of_the_daemon_fails(offered: bytes | None) -> None:
    server = DtlsServer(DAEMON, [BROWSER.fingerprint])
    with pytest.raises(DtlsError, match="no SRTP profile agreed"):
        handshake(server, DtlsClient(BROWSER, offered))
    assert server.keys is None


def test_the_flight_is_retransmitted_when_the_client_answer_is_lost() -> None:
    server = DtlsServer(DAEMON, [BROWSER.fingerprint])
    client = DtlsClient(BROWSER)
    assert server.timeout() is None  # nothing sent yet
    (hello,) = client.step()
    flight = server.feed(hello)  # HelloVerifyRequest is not used: ServerHello ... ServerHelloDone
    assert flight and server.keys is None
    remaining = server.timeout()
    assert remaining is not None and 0 < remaining <= 1.0
    assert server.retransmit() == [], "nothing is resent before the timer fires"
    # The client's answer is lost. OpenSSL's timer runs on the real clock (1 s at first).
    while (remaining := server.timeout()) is not None and remaining > 0:
        time.sleep(remaining)
    again = server.retransmit()
    # The same records again, under new record sequence numbers (bytes 5-10 of each header).
    assert [len(d) for d in again] == [len(d) for d in flight] and again != flight
    assert unnumbered(again) == unnumbered(flight)
    # The client, getting only the retransmission, finishes the handshake.
    handshake(server, client, again)
    assert server.keys is not None and client.done


def test_garbage_before_the_handshake_is_ignored_or_fails_it() -> None:
    server = DtlsServer(DAEMON, [BROWSER.fingerprint])
    ignored = [
        b"\x17\xfe\xfd" + bytes(10),  # application data before any epoch: discarded
        b"\x14",  # shorter than a record header
        b"\x16\xfe\xfd" + bytes(8) + b"\xff\xff",  # a length beyond the datagram
        b"\x16\x03\x01" + bytes(8) + b"\x00\x01\x00",  # a TLS (not DTLS) version
    ]
    for datagram in ignored:
        assert server.feed(datagram) == []
    # The handshake still completes after them.
    handshake(server, DtlsClient(BROWSER))
    assert server.keys is not None


def test_a_malformed_client_hello_fails_the_handshake_with_a_dtls_error() -> None:
    server = DtlsServer(DAEMON, [DAEMON.fingerprint])
    with pytest.raises(DtlsError, match="handshake failed"):
        server.feed(b"\x16\xfe\xfd" + bytes(8) + b"\x00\x05hello")


def test_records_after_the_handshake_are_ignored_and_close_notify_closes() -> None:
    server = DtlsServer(DAEMON, [BROWSER.fingerprint])
    client = DtlsClient(BROWSER)
    handshake(server, client)
    keys = server.keys
    for datagram in (b"\x17\xfe\xfd" + bytes(10) + b"\x00\x01x", b"\x16\xfe\xfd" + bytes(40), b"\x15\xfe\xfd"):
        assert server.feed(datagram) == []
    assert server.keys is keys and not server.closed
    client.connection.shutdown()
    (close_notify,) = client.step()
    server.feed(close_notify)
    assert server.closed and server.keys is keys


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300).map(lambda b: bytes([20 + b[0] % 44]) + b[1:]), max_size=5))
def test_nothing_raises_but_dtls_error(datagrams: list[bytes]) -> None:
    server = DtlsServer(DAEMON, [DAEMON.fingerprint])
    for datagram in datagrams:
        try:
            replies = server.feed(datagram)
        except DtlsError:
            return
        assert all(len(r) <= MAX_DATAGRAM for r in replies)
        assert server.keys is None


def records(lengths: list[int]) -> list[bytes]:
    return [bytes([22, 0xFE, 0xFD]) + i.to_bytes(8, "big") + n.to_bytes(2, "big") + bytes([i % 256]) * n
            for i, n in enumerate(lengths)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1500), max_size=12))
def test_pack_records_never_splits_a_record_and_respects_max_datagram(lengths: list[int]) -> None:
    whole = records(lengths)
    datagrams = pack_records(b"".join(whole))
    assert b"".join(datagrams) == b"".join(whole), "nothing lost, nothing reordered"
    counts = []
    taken = 0
    for datagram in datagrams:
        # Each datagram is whole records: walk its headers to its exact end.
        position, count = 0, 0
        while position < len(datagram):
            record = whole[taken + count]
            assert datagram[position:position + len(record)] == record
            position += len(record)
            count += 1
        assert position == len(datagram) and count >= 1
        # At most MAX_DATAGRAM bytes, unless one record alone is larger.
        assert len(datagram) <= MAX_DATAGRAM or count == 1
        taken += count
        counts.append(taken)
    assert taken == len(whole)
    # Packed greedily: a datagram ends only where the next record would not fit.
    for datagram, following in zip(datagrams[:-1], counts[:-1], strict=True):
        assert len(datagram) + len(whole[following]) > MAX_DATAGRAM


def test_pack_records_of_nothing_and_of_a_trailing_fragment() -> None:
    assert pack_records(b"") == []
    (record,) = records([5])
    assert pack_records(record + b"\x16\xfe") == [record], "a fragment shorter than a header is not sent"
