"""The browser's side of ICE-lite and DTLS-SRTP, small enough to aim at the daemon's slow path
from a test: STUN connectivity checks built with aioice's `stun` module, and a pyOpenSSL
DTLS 1.2 client on memory BIOs (a=setup:active) whose datagrams the test carries."""
from __future__ import annotations

from collections.abc import Iterable

from aioice import stun
from OpenSSL import SSL

from mediad.dtls import Certificate

CM80 = b"SRTP_AES128_CM_SHA1_80"
GCM = b"SRTP_AEAD_AES_128_GCM"
DTLS_HELLO_HEADER = b"\x16\xfe\xfd"
"""A DTLS 1.2 handshake record starts so (content type 22, version 254.253)."""


def binding_request(
    username: str | None,
    key: bytes | None,
    *,
    use_candidate: bool = False,
    fingerprint: bool = True,
    message_class: stun.Class = stun.Class.REQUEST,
    method: stun.Method = stun.Method.BINDING,
) -> bytes:
    """A connectivity check as a browser (the controlling agent) sends it (RFC 8445 7.1.1):
    USERNAME "<daemon ufrag>:<browser ufrag>", PRIORITY, ICE-CONTROLLING, USE-CANDIDATE when
    it nominates, MESSAGE-INTEGRITY keyed with the daemon's password, FINGERPRINT."""
    message = stun.Message(message_method=method, message_class=message_class)
    if username is not None:
        message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 0x1234567890ABCDEF
    if use_candidate:
        message.attributes["USE-CANDIDATE"] = None
    if key is not None:
        message.add_message_integrity(key)  # and FINGERPRINT
        if not fingerprint:
            del message.attributes["FINGERPRINT"]
    elif fingerprint:
        message.add_fingerprint()
    return bytes(message)


class DtlsClient:
    """A DTLS 1.2 client on memory BIOs, as a browser's DTLS transport is."""

    def __init__(self, certificate: Certificate | None, profiles: bytes | None = CM80) -> None:
        context = SSL.Context(SSL.DTLS_METHOD)
        if certificate is not None:
            context.use_certificate(certificate.cert.to_cryptography())
            context.use_privatekey(certificate.key.to_cryptography_key())
        context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        if profiles is not None:
            context.set_tlsext_use_srtp(profiles)
        self.connection = SSL.Connection(context, None)
        self.connection.set_connect_state()
        self.done = False

    def step(self, incoming: Iterable[bytes] = ()) -> list[bytes]:
        """Take the server's datagrams, go on with the handshake; what the client sends."""
        for datagram in incoming:
            self.connection.bio_write(datagram)
        if not self.done:
            try:
                self.connection.do_handshake()
                self.done = True
            except SSL.WantReadError:
                pass
        sent = []
        while True:
            try:
                sent.append(self.connection.bio_read(65536))
            except SSL.WantReadError:
                return sent

    def export(self, length: int) -> bytes:
        """RFC 5705 keying material, as the daemon exports it."""
        return bytes(self.connection.export_keying_material(b"EXTRACTOR-dtls_srtp", length))

    def srtp_keys(self, key: int = 16, salt: int = 14) -> tuple[bytes, bytes]:
        """(what the client protects with, what it unprotects with): key + salt each (RFC 5764 4.2)."""
        material = self.export(2 * (key + salt))
        client_key, server_key = material[:key], material[key:2 * key]
        client_salt, server_salt = material[2 * key:2 * key + salt], material[2 * key + salt:]
        return client_key + client_salt, server_key + server_salt
