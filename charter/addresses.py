"""UDP transport addresses (charter.v1.Address): the one check of an address in a request and
its proto conversion. Media is IPv4 only: the media daemons' sockets are IPv4, and a host
name would need a blocking lookup on the event loop."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from charter.errors import InvalidArgument
from charter.v1 import media_pb2

Address = tuple[str, int]
"""(IPv4 address in dotted form, UDP port)."""


def check_address(field: str, ip: str, port: int) -> Address:
    """(ip, port) if ip is an IPv4 literal and port 1-65535; InvalidArgument otherwise."""
    try:
        ip = str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise InvalidArgument(f"{field}.ip", f"{ip[:60]!r} is not an IPv4 address") from None
    if not 0 < port <= 65535:
        raise InvalidArgument(f"{field}.port", f"is {port}; use a UDP port 1-65535")
    return ip, port


def parse_address(field: str, address: media_pb2.Address) -> Address:
    return check_address(field, address.ip, address.port)


def address_to_proto(address: Address) -> media_pb2.Address:
    return media_pb2.Address(ip=address[0], port=address[1])


NEVER = (
    ipaddress.IPv4Network("0.0.0.0/8"),  # "this network": 0.0.0.0 sends nowhere (or everywhere)
    ipaddress.IPv4Network("224.0.0.0/4"),  # multicast
    ipaddress.IPv4Network("240.0.0.0/4"),  # reserved, and 255.255.255.255 (broadcast)
)
"""Where media never goes, whatever the settings: not one receiver's address."""


@dataclass(frozen=True)
class MediaDestinations:
    """Where a participant may ask its media to be sent (Join's receive_address): inside
    `networks`, never to the addresses in NEVER, never to a port of Charter's own services.
    Without it, anyone allowed to join could aim the daemons' output at any host and port."""

    networks: tuple[ipaddress.IPv4Network, ...] = (ipaddress.IPv4Network("0.0.0.0/0"),)

    @classmethod
    def parse(cls, text: str) -> MediaDestinations:
        """From a comma-separated list of networks ("127.0.0.0/8,10.0.0.0/8"); ValueError."""
        networks = tuple(ipaddress.IPv4Network(part.strip()) for part in text.split(",") if part.strip())
        if not networks:
            raise ValueError("no network given")
        return cls(networks)

    def check(self, field: str, address: Address, services: Iterable[tuple[str, int, int]] = ()) -> Address:
        """`address` if media may go there; InvalidArgument naming why not. `services`: (ip or
        "" for any, first port, last port) of Charter's own sockets (gRPC, media ranges)."""
        ip, port = address
        parsed = ipaddress.IPv4Address(ip)
        for network in NEVER:
            if parsed in network:
                raise InvalidArgument(f"{field}.ip", f"{ip} is not one receiver's address (unspecified, "
                                      "multicast, broadcast or reserved): give the participant's unicast address")
        if not any(parsed in network for network in self.networks):
            allowed = ", ".join(str(n) for n in self.networks)
            raise InvalidArgument(f"{field}.ip", f"{ip} is outside the networks media may be sent to ({allowed}; "
                                  "the controller's --receive-networks)")
        for service_ip, first, last in services:
            if (not service_ip or service_ip == ip) and first <= port <= last:
                raise InvalidArgument(f"{field}.port", f"{ip}:{port} is a port of Charter itself: give the port "
                                      "the participant receives on")
        return address
