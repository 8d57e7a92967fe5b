"""Drives rtpengine (Debian rtpengine-daemon, userspace forwarding only) as the SRTP relay
to measure against, over its ng control protocol (bencode over UDP).

rtpengine re-keys only when it must: it hands the subscriber the publisher's own keys, so a
call where both sides pick the same crypto line is passed through without decryption. Here
the publisher offers two a=crypto lines of the same suite with different keys and the
subscriber answers the second: rtpengine answers the publisher with the first, so it really
decrypts with key 1 and encrypts with key 2, the work an SFU does per subscriber.
"""
from __future__ import annotations

import base64
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from charter.processes import die_with_parent, free_port, stop
from charter.suites import generate_key

RTPENGINE = "/usr/bin/rtpengine"

Bencodable = int | str | bytes | list[Any] | dict[str, Any]


def bencode(value: Bencodable) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    value, end = _bdecode(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after bencoded value")
    return value


def _bdecode(data: bytes, i: int) -> tuple[Any, int]:
    head = data[i:i + 1]
    if head == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1:end]), end + 1
    if head in (b"l", b"d"):
        i += 1
        items: list[Any] = []
        while data[i:i + 1] != b"e":
            item, i = _bdecode(data, i)
            items.append(item)
        if head == b"l":
            return items, i + 1
        return {items[k].decode(): items[k + 1] for k in range(0, len(items), 2)}, i + 1
    colon = data.index(b":", i)
    length = int(data[i:colon])
    return data[colon + 1:colon + 1 + length], colon + 1 + length


def _inline(key: bytes) -> str:
    """The inline key of an a=crypto line, base64 without padding as rtpengine writes it."""
    return base64.b64encode(key).decode().rstrip("=")


def _sdp(port: int, cryptos: list[tuple[int, str, bytes]]) -> str:
    lines = [
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=charter-bench", "c=IN IP4 127.0.0.1", "t=0 0",
        f"m=video {port} RTP/SAVP 96", "a=rtpmap:96 VP8/90000", "a=sendrecv", "a=rtcp-mux",
    ]
    lines += [f"a=crypto:{tag} {suite} inline:{_inline(key)}" for tag, suite, key in cryptos]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class Call:
    """One publisher -> subscriber call through rtpengine."""

    call_id: str
    publisher_key: bytes          # what the publisher protects with (its crypto line 1)
    subscriber_key: bytes         # what rtpengine protects with towards the subscriber (line 2)
    relay_address: tuple[str, int]  # where the publisher sends


class RtpEngine:
    """An rtpengine daemon in the foreground, userspace only (--table=-1), pinned to `cpu`."""

    def __init__(self, *, ng_port: int | None = None, port_min: int = 61000, port_max: int = 61999,
                 cpu: int | None = None, nice: int = 0, threads: int = 1) -> None:
        """Media ports default to a range above the ephemeral ports and outside Charter's
        media range, so that a daemon or test running beside the benchmark is not disturbed."""
        if not os.path.exists(RTPENGINE):
            raise FileNotFoundError(f"{RTPENGINE} is missing: apt-get install rtpengine-daemon")
        self.ng_address = ("127.0.0.1", ng_port or free_port(socket.SOCK_DGRAM))
        self._workdir = tempfile.mkdtemp(prefix="charter-rtpengine-")
        self._log = open(os.path.join(self._workdir, "rtpengine.log"), "wb")
        args = [
            RTPENGINE, "--table=-1", "--foreground", "--log-stderr", "--log-level=4",
            "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{self.ng_address[1]}",
            f"--port-min={port_min}", f"--port-max={port_max}", f"--num-threads={threads}",
            "--delete-delay=0", "--timeout=60",
        ]
        def preexec() -> None:
            die_with_parent()
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            if nice:
                os.nice(nice)

        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self._workdir, preexec_fn=preexec)
        self.pid = self.process.pid
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.settimeout(1.0)
        self._ids = itertools.count(1)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rtpengine exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if self.ng({"command": "ping"}).get("result") == b"pong":
                    return
            except (TimeoutError, OSError):
                time.sleep(0.1)
        raise TimeoutError(f"rtpengine did not answer ping within {timeout} s: {self.log_tail()}")

    def log_tail(self, size: int = 2000) -> str:
        with open(os.path.join(self._workdir, "rtpengine.log"), "rb") as f:
            return f.read()[-size:].decode(errors="replace")

    def ng(self, command: dict[str, Any]) -> dict[str, Any]:
        cookie = secrets.token_hex(6).encode()
        self._sock.sendto(cookie + b" " + bencode(command), self.ng_address)
        while True:
            data = self._sock.recv(65535)
            got, _, body = data.partition(b" ")
            if got == cookie:
                return bdecode(body)

    def _checked(self, command: dict[str, Any]) -> dict[str, Any]:
        answer = self.ng(command)
        if answer.get("result") != b"ok":
            raise RuntimeError(f"rtpengine {command['command']} failed: {answer.get('error-reason')!r}")
        return answer

    def call(self, suite: str, publisher: tuple[str, int], subscriber: tuple[str, int]) -> Call:
        """A new call where rtpengine decrypts the publisher's packets and re-encrypts them
        with another key for the subscriber."""
        call_id = f"bench-{next(self._ids)}"
        key1, key2, answer_key = generate_key(suite), generate_key(suite), generate_key(suite)
        offer = self._checked({
            "command": "offer", "call-id": call_id, "from-tag": "publisher",
            "sdp": _sdp(publisher[1], [(1, suite, key1), (2, suite, key2)]),
        })
        offered = offer["sdp"].decode()
        line2 = f"a=crypto:2 {suite} inline:{_inline(key2)}"
        if line2 not in offered:
            raise RuntimeError(f"rtpengine did not offer the publisher's second key to the subscriber:\n{offered}")
        answer = self._checked({
            "command": "answer", "call-id": call_id, "from-tag": "publisher", "to-tag": "subscriber",
            "sdp": _sdp(subscriber[1], [(2, suite, answer_key)]),
        })
        answered = answer["sdp"].decode()
        if f"a=crypto:1 {suite} " not in answered:
            raise RuntimeError(f"rtpengine did not answer the publisher's first crypto line:\n{answered}")
        port = next(int(line.split()[1]) for line in answered.splitlines() if line.startswith("m=video "))
        return Call(call_id, key1, key2, ("127.0.0.1", port))

    def delete(self, call: Call) -> None:
        self.ng({"command": "delete", "call-id": call.call_id, "from-tag": "publisher"})

    def close(self) -> None:
        try:
            self._sock.close()
            stop(self.process, 5)
        finally:
            self._log.close()
            shutil.rmtree(self._workdir, ignore_errors=True)
