"""DTLS-SRTP (RFC 5764, RFC 5763) for one WebRTC endpoint: a DTLS 1.2 server (the daemon
is always `a=setup:passive`) on memory BIOs, fed the datagrams the core hands over and
returning the datagrams to send. When the handshake completes, the browser's certificate
must match a fingerprint of its SDP, and the SRTP keys come from the RFC 5705 exporter.

The certificate is one per daemon (ECDSA P-256, made at start): its fingerprint is what the
controller writes into every SDP answer of this daemon."""
from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from charter.endpoints import DtlsFingerprint
from charter.suites import SrtpSuite

# use_srtp profiles (RFC 5764, RFC 7714), in the daemon's order of preference, and the
# suite each one keys.
PROFILES = {
    b"SRTP_AEAD_AES_128_GCM": SrtpSuite.AEAD_AES_128_GCM,
    b"SRTP_AES128_CM_SHA1_80": SrtpSuite.AES_CM_128_HMAC_SHA1_80,
}
_KEY_AND_SALT = {SrtpSuite.AEAD_AES_128_GCM: (16, 12), SrtpSuite.AES_CM_128_HMAC_SHA1_80: (16, 14)}
_HASHES = {"sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}
DTLS1_2_VERSION = 0xFEFD
"""OpenSSL's DTLS1_2_VERSION (pyOpenSSL names only the TLS ones)."""
RECORD_HEADER = 13
MAX_DATAGRAM = 1200
"""DTLS records are packed into datagrams of at most this size (under any path's MTU)."""


class DtlsError(Exception):
    """The handshake failed; the message says why (for the log and the event)."""


@dataclass(frozen=True)
class Certificate:
    key: crypto.PKey
    cert: crypto.X509
    fingerprint: DtlsFingerprint

    @classmethod
    def generate(cls, name: str = "charter-mediad") -> Certificate:
        private = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(private, hashes.SHA256())
        )
        cert = crypto.X509.from_cryptography(certificate)
        fingerprint = DtlsFingerprint("sha-256", fingerprint_of(cert, "sha-256"))
        return cls(crypto.PKey.from_cryptography_key(private), cert, fingerprint)


def fingerprint_of(cert: crypto.X509, algorithm: str) -> str:
    """RFC 8122: the hash of the DER certificate, uppercase hex bytes with colons."""
    digest = hashlib.new(_HASHES[algorithm], cert.to_cryptography().public_bytes(Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


@dataclass(frozen=True)
class SrtpKeys:
    """What the handshake gave: the suite, what the browser protects with (rx) and what the
    daemon protects with (tx), each master key followed by its salt."""

    suite: SrtpSuite
    rx_key: bytes
    tx_key: bytes


def _context(certificate: Certificate) -> SSL.Context:
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_min_proto_version(DTLS1_2_VERSION)
    # cryptography's objects: pyOpenSSL's X509 and PKey are deprecated as arguments here.
    private = certificate.key.to_cryptography_key()
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    context.use_certificate(certificate.cert.to_cryptography())
    context.use_privatekey(private)
    # The browser's certificate is self-signed: what vouches for it is its fingerprint in
    # the SDP, checked once the handshake is done.
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    context.set_tlsext_use_srtp(b":".join(PROFILES))
    context.set_options(SSL.OP_NO_QUERY_MTU)
    return context


class DtlsServer:
    """One endpoint's DTLS server. `feed` a datagram, send what it returns; `keys` is set
    once the handshake is complete and the certificate checked."""

    def __init__(self, certificate: Certificate, remote_fingerprints: Sequence[DtlsFingerprint]) -> None:
        self.remote_fingerprints = tuple(remote_fingerprints)
        self._connection = SSL.Connection(_context(certificate), None)
        self._connection.set_accept_state()
        self._connection.set_ciphertext_mtu(MAX_DATAGRAM)
        self.keys: SrtpKeys | None = None
        self.closed = False
        """The browser sent close_notify."""

    def feed(self, datagram: bytes) -> list[bytes]:
        """Datagrams to send back. DtlsError when the handshake fails."""
        self._connection.bio_write(datagram)
        if self.keys is None:
            try:
                self._connection.do_handshake()
            except SSL.WantReadError:
                return self._pending()
            except SSL.Error as error:
                raise DtlsError(f"handshake failed: {_reason(error)}") from None
            self.keys = self._finish()
        else:
            # After the handshake only alerts (close_notify) and retransmitted flights come.
            try:
                self._connection.recv(1500)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                self.closed = True
            except SSL.Error:
                pass
        return self._pending()

    def timeout(self) -> float | None:
        """Seconds until the handshake's next retransmission, or None."""
        if self.keys is not None:
            return None
        value = self._connection.DTLSv1_get_timeout()
        return None if value is None else float(value)

    def retransmit(self) -> list[bytes]:
        if self.keys is None and self._connection.DTLSv1_handle_timeout():
            return self._pending()
        return []

    def _finish(self) -> SrtpKeys:
        peer = self._connection.get_peer_certificate()
        if peer is None:
            raise DtlsError("the browser sent no certificate")
        if not any(fingerprint_of(peer, f.algorithm) == f.value for f in self.remote_fingerprints):
            raise DtlsError("the browser's certificate does not match the fingerprint of its SDP")
        profile = self._connection.get_selected_srtp_profile()
        suite = PROFILES.get(profile)
        if suite is None:
            raise DtlsError(f"no SRTP profile agreed (use_srtp: {profile!r})")
        key_length, salt_length = _KEY_AND_SALT[suite]
        material = self._connection.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (key_length + salt_length))
        # RFC 5764 4.2: client key, server key, client salt, server salt.
        client_key, server_key = material[:key_length], material[key_length:2 * key_length]
        salts = material[2 * key_length:]
        client_salt, server_salt = salts[:salt_length], salts[salt_length:]
        return SrtpKeys(suite, rx_key=client_key + client_salt, tx_key=server_key + server_salt)

    def _pending(self) -> list[bytes]:
        return pending_datagrams(self._connection)


def pending_datagrams(connection: SSL.Connection) -> list[bytes]:
    """What OpenSSL wrote to the memory BIO, as whole records packed into datagrams (a memory
    BIO keeps no datagram boundaries)."""
    data = b""
    while True:
        try:
            chunk = connection.bio_read(65536)
        except SSL.WantReadError:
            break
        if not chunk:
            break
        data += chunk
    return pack_records(data)


def pack_records(data: bytes) -> list[bytes]:
    """Split DTLS records (13-byte header, length in bytes 11-12) and pack them into
    datagrams of at most MAX_DATAGRAM bytes, never splitting a record."""
    datagrams: list[bytes] = []
    current = b""
    position = 0
    while position + RECORD_HEADER <= len(data):
        length = int.from_bytes(data[position + 11:position + 13], "big")
        record = data[position:position + RECORD_HEADER + length]
        position += RECORD_HEADER + length
        if current and len(current) + len(record) > MAX_DATAGRAM:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


def _reason(error: SSL.Error) -> str:
    details = [part for item in error.args for part in (item if isinstance(item, list) else [item])]
    text = "; ".join(str(d[2]) if isinstance(d, tuple) and len(d) == 3 else str(d) for d in details)
    return text or type(error).__name__
