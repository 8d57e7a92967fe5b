"""The browser's side of a WebRTC connection to the media daemon, for bench/webrtc.py: per
endpoint, what a browser does on its one UDP socket (RFC 8445 lite peer, RFC 5763/5764):
a STUN Binding request with USE-CANDIDATE, PRIORITY, ICE-CONTROLLING, USERNAME
"<daemon ufrag>:<browser ufrag>", MESSAGE-INTEGRITY keyed with the daemon's ice_pwd and
FINGERPRINT (aioice.stun); on its success response, a DTLS 1.2 client handshake (pyOpenSSL
on memory BIOs, `use_srtp` SRTP_AES128_CM_SHA1_80, a self-signed certificate whose
fingerprint the daemon was given) over the same socket, until the SRTP keys can be
exported (RFC 5705, `EXTRACTOR-dtls_srtp`).

Run as a process (`python -m bench.webrtc_browser`), it is the benchmark's handshake client,
off the daemon's core: it prints one JSON line {"pid", "fingerprint"} when ready, then for
each JSON job line on stdin ({"target_ip", "endpoints": [[port, ice_ufrag, ice_pwd,
remote_ice_ufrag], ...], "concurrency", "start_at", "prebuild"}) runs the handshakes, at
most `concurrency` in flight, the first ones at `start_at` (time.monotonic(): one clock for
every process; with `prebuild` every check and ClientHello is built before then), and prints
one JSON line with a record per handshake, its own CPU time from `start_at` on and how late
it started. It ends when stdin closes. Every handshake gives up after HANDSHAKE_TIMEOUT.
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from mediad.dtls import Certificate, pending_datagrams

PROFILE = b"SRTP_AES128_CM_SHA1_80"
KEY, SALT = 16, 14
"""AES_CM_128_HMAC_SHA1_80 master key and salt lengths (RFC 5764 4.1.2)."""
MTU = 1200
STUN_RTO = 0.25
"""Seconds before a Binding request is sent again (RFC 8445 14.3 paces checks at 50 ms and
more; browsers retransmit after 250 ms and more)."""
HANDSHAKE_TIMEOUT = 10.0
SOCKET_BUFFER = 1 << 20


def ice_credentials() -> tuple[str, str]:
    """A ufrag and a password of ICE characters (RFC 8839 5.4: 4+ and 22+ characters)."""
    ufrag = secrets.token_hex(4)
    return ufrag, secrets.token_hex(16)


def binding_request(username: str, pwd: str) -> stun.Message:
    """A browser's nominating check (it is the controlling agent, RFC 8445 7.1.1, 8.1.1)."""
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = secrets.randbits(64)
    message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(pwd.encode())  # and FINGERPRINT after it
    return message


def dtls_context(certificate: Certificate) -> SSL.Context:
    context = SSL.Context(SSL.DTLS_METHOD)
    private = certificate.key.to_cryptography_key()
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # Certificate.generate makes P-256 keys
    context.use_certificate(certificate.cert.to_cryptography())
    context.use_privatekey(private)
    # The daemon's certificate is self-signed too; a browser checks its fingerprint from the
    # SDP answer, which this client does not need for the benchmark.
    context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    context.set_tlsext_use_srtp(PROFILE)
    context.set_options(SSL.OP_NO_QUERY_MTU)
    return context


@dataclass
class Handshake:
    """One browser connection: its socket, ICE and DTLS state, and its timings."""

    index: int
    target: tuple[str, int]
    ice_ufrag: str
    """The daemon's ufrag and password for this endpoint."""
    ice_pwd: str
    remote_ice_ufrag: str
    """This browser's ufrag (the one the daemon was given)."""
    context: SSL.Context
    sock: socket.socket = field(init=False)
    connection: SSL.Connection = field(init=False)
    state: str = "new"
    """new -> stun (check sent) -> dtls (ICE succeeded, handshake under way) -> done | failed."""
    started: float = 0.0
    stun_done: float = 0.0
    finished: float = 0.0
    next_timer: float = 0.0
    stun_sent: int = 0
    dtls_retransmits: int = 0
    error: str = ""
    keys: tuple[bytes, bytes] | None = None
    """(what this browser protects with, what the daemon protects with): key + salt each."""
    _request: stun.Message | None = field(default=None, init=False, repr=False)
    _hello: list[bytes] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.connection = SSL.Connection(self.context, None)
        self.connection.set_connect_state()
        # A memory BIO has no MTU to query (OP_NO_QUERY_MTU): without one, pyOpenSSL 26's
        # DTLS client fails its first do_handshake with SysCallError "Unexpected EOF".
        self.connection.set_ciphertext_mtu(MTU)

    @property
    def deadline(self) -> float:
        return self.started + HANDSHAKE_TIMEOUT

    def prepare(self) -> None:
        """Build the check and the ClientHello now (the X25519 key share), to send them later:
        a burst of handshakes then reaches the daemon at once, not at the client's pace."""
        self._request = binding_request(f"{self.ice_ufrag}:{self.remote_ice_ufrag}", self.ice_pwd)
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            pass
        self._hello = self._pending()

    def start(self, now: float) -> None:
        self.started = now
        if self._request is None:
            self.prepare()
        self.state = "stun"
        self._send_check(now)

    def _send_check(self, now: float) -> None:
        assert self._request is not None
        self._send(bytes(self._request))
        self.stun_sent += 1
        self.next_timer = now + STUN_RTO * 2 ** min(self.stun_sent - 1, 3)

    def _send(self, datagram: bytes) -> None:
        try:
            self.sock.sendto(datagram, self.target)
        except BlockingIOError:
            pass  # lost, as on a network: the timers send it again

    def on_readable(self) -> None:
        while self.state in ("stun", "dtls"):
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return
            except OSError as error:  # ECONNREFUSED: the endpoint is gone
                self._fail(f"socket: {error}")
                return
            if not data:
                continue
            if data[0] < 4:
                self._on_stun(data)
            elif 20 <= data[0] <= 63:
                self._on_dtls(data)

    def _on_stun(self, data: bytes) -> None:
        if self.state != "stun" or self._request is None:
            return  # the answer to a retransmitted check
        try:
            message = stun.parse_message(data)  # checks FINGERPRINT
        except (ValueError, struct.error) as error:
            self._fail(f"stun response: {error}")
            return
        if message.transaction_id != self._request.transaction_id:
            return
        if not message.check_message_integrity(self.ice_pwd.encode()):
            self._fail("stun response: MESSAGE-INTEGRITY does not verify")
            return
        if message.message_class != stun.Class.RESPONSE:
            self._fail(f"stun: {message.message_class.name}")
            return
        self.stun_done = time.monotonic()
        self.state = "dtls"
        for datagram in self._hello:
            self._send(datagram)
        timeout = self.connection.DTLSv1_get_timeout()
        self.next_timer = self.stun_done + (timeout if timeout is not None else 1.0)

    def _on_dtls(self, data: bytes) -> None:
        if self.state != "dtls":
            return
        self.connection.bio_write(data)
        self._handshake()

    def _handshake(self) -> None:
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            self._flush()
            timeout = self.connection.DTLSv1_get_timeout()
            self.next_timer = time.monotonic() + (timeout if timeout is not None else 1.0)
            return
        except SSL.Error as error:
            self._fail(f"dtls: {error}")
            return
        self._flush()
        profile = self.connection.get_selected_srtp_profile()
        if profile != PROFILE:
            self._fail(f"dtls: SRTP profile {profile!r}")
            return
        material = bytes(self.connection.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (KEY + SALT)))
        client_key, server_key = material[:KEY], material[KEY:2 * KEY]
        client_salt, server_salt = material[2 * KEY:2 * KEY + SALT], material[2 * KEY + SALT:]
        self.keys = (client_key + client_salt, server_key + server_salt)
        self.finished = time.monotonic()
        self.state = "done"

    def _flush(self) -> None:
        for datagram in self._pending():
            self._send(datagram)

    def _pending(self) -> list[bytes]:
        """What OpenSSL wrote, packed into datagrams as the daemon packs its own."""
        return pending_datagrams(self.connection)

    def on_timer(self, now: float) -> None:
        if now >= self.deadline:
            self._fail(f"no answer in {HANDSHAKE_TIMEOUT:g} s (state {self.state})")
        elif self.state == "stun":
            self._send_check(now)
        elif self.state == "dtls":
            if self.connection.DTLSv1_handle_timeout():
                self.dtls_retransmits += 1
                self._flush()
            timeout = self.connection.DTLSv1_get_timeout()
            self.next_timer = now + (timeout if timeout is not None else 0.1)

    def _fail(self, error: str) -> None:
        self.error = error
        self.finished = time.monotonic()
        self.state = "failed"

    def record(self) -> dict[str, Any]:
        return {
            "ok": self.state == "done",
            "started": self.started,
            "ice_ms": 1e3 * (self.stun_done - self.started) if self.stun_done else None,
            "total_ms": 1e3 * (self.finished - self.started),
            "stun_sent": self.stun_sent,
            "dtls_retransmits": self.dtls_retransmits,
            "error": self.error,
        }

    def close(self) -> None:
        self.sock.close()


def run(handshakes: list[Handshake], concurrency: int, start_at: float | None = None) -> None:
    """Run every handshake, at most `concurrency` in flight (the next one starts as one
    ends), the first ones at `start_at`; returns when all are done or failed."""
    waiting = deque(handshakes)
    active: dict[int, Handshake] = {}
    selector = selectors.DefaultSelector()
    if start_at is not None:
        while (delay := start_at - time.monotonic()) > 0:
            time.sleep(min(delay, 0.05) if delay > 0.002 else 0)
    try:
        while waiting or active:
            now = time.monotonic()
            while waiting and len(active) < concurrency:
                h = waiting.popleft()
                selector.register(h.sock, selectors.EVENT_READ, h)
                active[h.index] = h
                h.start(now)
            timeout = max(0.0, min(h.next_timer for h in active.values()) - time.monotonic())
            for key, _ in selector.select(timeout):
                key.data.on_readable()
            now = time.monotonic()
            for h in list(active.values()):
                if h.state in ("stun", "dtls") and now >= h.next_timer:
                    h.on_timer(now)
                if h.state in ("done", "failed"):
                    selector.unregister(h.sock)
                    del active[h.index]
    finally:
        selector.close()


def serve() -> None:
    """The client process: a certificate, then one job per stdin line (see the docstring)."""
    certificate = Certificate.generate("bench-browser")
    context = dtls_context(certificate)
    print(json.dumps({"pid": os.getpid(), "fingerprint": [certificate.fingerprint.algorithm,
                                                          certificate.fingerprint.value]}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        handshakes = [
            Handshake(i, (job["target_ip"], port), ufrag, pwd, remote_ufrag, context)
            for i, (port, ufrag, pwd, remote_ufrag) in enumerate(job["endpoints"])
        ]
        try:
            if job.get("prebuild"):
                for h in handshakes:
                    h.prepare()
            start_at = job.get("start_at")
            late = time.monotonic() - start_at if start_at is not None else 0.0
            cpu0 = time.process_time()
            run(handshakes, job["concurrency"], start_at)
            cpu = time.process_time() - cpu0
        finally:
            for h in handshakes:
                h.close()
        print(json.dumps({"cpu_s": cpu, "late_ms": 1e3 * max(0.0, late),
                          "handshakes": [h.record() for h in handshakes]}), flush=True)

if __name__ == "__main__":
    serve()
