"""ICE-lite (RFC 8445 section 2.5) for one WebRTC endpoint: the daemon never sends checks,
it answers the browser's. A Binding request is answered only when its USERNAME is
"<daemon ufrag>:<browser ufrag>", its MESSAGE-INTEGRITY verifies with the daemon's password
and its FINGERPRINT is right (RFC 5389). The answer tells the browser its address as seen
here (XOR-MAPPED-ADDRESS). The pair the browser nominates (USE-CANDIDATE) becomes the
endpoint's remote; every valid check renews consent (RFC 7675).

STUN parsing and building is aioice's `stun` module; this module only decides."""
from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

from aioice import stun

CONSENT_SECONDS = 30.0
"""RFC 7675: consent expires 30 s after the last check that was answered."""


@dataclass
class IceOutcome:
    """What one datagram led to: the answer to send back (None: dropped), and whether its
    source is now the nominated address."""

    reply: bytes | None = None
    nominated: bool = False


class IceLite:
    def __init__(self, local_ufrag: str, local_pwd: str, remote_ufrag: str, counts: Counter[str]) -> None:
        self.username = f"{local_ufrag}:{remote_ufrag}"
        self._key = local_pwd.encode()
        self.counts = counts
        self.nominated: tuple[str, int] | None = None
        self.validated: set[tuple[str, int]] = set()
        """Addresses that sent a valid check: only they may start DTLS."""
        self.last_check: float | None = None
        """The clock's time of the last valid check (None: none yet)."""

    def handle(self, data: bytes, address: tuple[str, int], now: float) -> IceOutcome:
        try:
            message = stun.parse_message(data)
        except (ValueError, struct.error) as error:
            # aioice raises struct.error, not ValueError, for an attribute of the wrong length.
            self.counts["stun_bad_fingerprint" if "fingerprint" in str(error) else "stun_malformed"] += 1
            return IceOutcome()
        if message.message_method != stun.Method.BINDING or message.message_class != stun.Class.REQUEST:
            # An indication (a keepalive) or a response: a lite agent sends no requests.
            self.counts["stun_ignored"] += 1
            return IceOutcome()
        if "FINGERPRINT" not in message.attributes:
            self.counts["stun_bad_fingerprint"] += 1
            return IceOutcome()
        if message.attributes.get("USERNAME") != self.username:
            self.counts["stun_bad_ufrag"] += 1
            return IceOutcome()
        if not message.check_message_integrity(self._key):
            self.counts["stun_bad_integrity"] += 1
            return IceOutcome()
        self.counts["stun_checks"] += 1
        self.last_check = now
        self.validated.add(address)
        nominated = "USE-CANDIDATE" in message.attributes and address != self.nominated
        if nominated:
            self.nominated = address
        reply = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
        )
        reply.attributes["XOR-MAPPED-ADDRESS"] = address
        reply.add_message_integrity(self._key)  # and FINGERPRINT after it
        return IceOutcome(bytes(reply), nominated)

    def consent_expired(self, now: float, opened: float, timeout: float = CONSENT_SECONDS) -> bool:
        """No valid check for `timeout` seconds (counted from `opened` until the first)."""
        return now - (opened if self.last_check is None else self.last_check) > timeout
