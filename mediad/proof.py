"""Which receivers must prove they want the media before they get more than a few packets.

A Join names where its media goes, and the daemon believes it; without a check, anyone who
may join could aim a conference's media at a host that never asked for it. A receiver
proves itself by sending: a packet that authenticates with its key, from its own address
(RTP of its own, or RTCP; browsers prove it with ICE before they get anything). Until
then it gets at most `budget` packets. Receivers on `trusted` networks (the operator's
recorders and media tools, which only listen: ffmpeg and GStreamer send nothing back)
need no proof."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from charter.addresses import Address

LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"),)


@dataclass(frozen=True)
class ReceiverProof:
    budget: int = 500
    """Packets (RTP, RTCP and retransmissions) an unproven receiver is sent at most."""
    trusted: tuple[ipaddress.IPv4Network, ...] = LOOPBACK
    """Receivers in these networks are sent everything from the start."""

    @classmethod
    def parse(cls, budget: int, trusted: str) -> ReceiverProof:
        """From --unproven-budget and --trusted-receivers (comma-separated networks, empty
        for none); ValueError with what is wrong."""
        if budget < 0:
            raise ValueError(f"the budget is a number of packets, 0 or more, got {budget}")
        networks = tuple(ipaddress.IPv4Network(part.strip()) for part in trusted.split(",") if part.strip())
        return cls(budget, networks)

    def budget_for(self, remote: Address | None) -> int | None:
        """The packets a receiver at `remote` may be sent before it proves itself; None when
        it need not (trusted, or no fixed address: the address is learned from what it sends)."""
        if remote is None:
            return None
        ip = ipaddress.IPv4Address(remote[0])
        if any(ip in network for network in self.trusted):
            return None
        return self.budget
