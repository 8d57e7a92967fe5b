"""SRTP suites as charter.v1 numbers them (media.proto SrtpSuite): one table for the
controller and the media daemons."""
from __future__ import annotations

from charter.errors import InvalidArgument
from charter.v1 import media_pb2
from mediad.srtp import SrtpSuite

SUITES: dict[int, SrtpSuite] = {
    media_pb2.SRTP_SUITE_UNSPECIFIED: SrtpSuite.AES_CM_128_HMAC_SHA1_80,
    media_pb2.AES_CM_128_HMAC_SHA1_80: SrtpSuite.AES_CM_128_HMAC_SHA1_80,
    media_pb2.AES_CM_128_HMAC_SHA1_32: SrtpSuite.AES_CM_128_HMAC_SHA1_32,
    media_pb2.AEAD_AES_128_GCM: SrtpSuite.AEAD_AES_128_GCM,
}
SUITE_NUMBERS: dict[str, int] = {v.value: k for k, v in SUITES.items() if k != media_pb2.SRTP_SUITE_UNSPECIFIED}
"""Suite name -> its number in charter.v1."""


def parse_suite(field: str, value: int) -> SrtpSuite:
    try:
        return SUITES[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown SRTP suite number {value}") from None
