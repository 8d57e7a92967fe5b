"""UDP transport addresses (charter.v1.Address): the one check of an address in a request and
its proto conversion. Media is IPv4 only: the media daemons' sockets are IPv4, and a host
name would need a blocking lookup on the event loop."""
from __future__ import annotations

import ipaddress

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
