"""SRTP crypto suites (RFC 4568, RFC 7714): their names, their numbers in charter.v1
(media.proto SrtpSuite), the length of their master key and salt, and the one place a key is
generated or checked. The controller, the media daemons and the SDP all use this table."""
from __future__ import annotations

import base64
import binascii
import enum
import secrets

from charter.errors import InvalidArgument
from charter.v1 import media_pb2


class SrtpSuite(str, enum.Enum):
    """A crypto suite; both directions of an endpoint use the same one."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"

    @property
    def key_length(self) -> int:
        """Master key plus master salt, in bytes: 30 for AES-CM, 28 for AES-128-GCM."""
        return _KEY_LENGTHS[self]

    @property
    def number(self) -> media_pb2.SrtpSuite.ValueType:
        """Its value in charter.v1."""
        return _NUMBERS[self]

    @classmethod
    def parse(cls, name: str) -> SrtpSuite:
        """The suite of an SDES name (any case); ValueError naming the known ones."""
        try:
            return cls(name.upper())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown SRTP suite {name!r}; use one of {names}") from None

    @classmethod
    def from_number(cls, field: str, number: int) -> SrtpSuite:
        """The suite of a charter.v1 number (0, unset, is AES_CM_128_HMAC_SHA1_80)."""
        if number == media_pb2.SRTP_SUITE_UNSPECIFIED:
            return DEFAULT_SUITE
        for suite, value in _NUMBERS.items():
            if value == number:
                return suite
        raise InvalidArgument(field, f"unknown SRTP suite number {number}")


DEFAULT_SUITE = SrtpSuite.AES_CM_128_HMAC_SHA1_80

_KEY_LENGTHS = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: 30,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: 30,
    SrtpSuite.AEAD_AES_128_GCM: 28,
}
_NUMBERS = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: media_pb2.AES_CM_128_HMAC_SHA1_80,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: media_pb2.AES_CM_128_HMAC_SHA1_32,
    SrtpSuite.AEAD_AES_128_GCM: media_pb2.AEAD_AES_128_GCM,
}


def generate_key(suite: SrtpSuite | str) -> bytes:
    """A fresh master key and salt for `suite`, from `secrets`."""
    return secrets.token_bytes(SrtpSuite.parse(suite).key_length)


def check_key(field: str, suite: SrtpSuite | str, key: bytes) -> bytes:
    """`key` if it has the length of `suite`'s master key and salt; InvalidArgument otherwise."""
    suite = SrtpSuite.parse(suite)
    if len(key) != suite.key_length:
        raise InvalidArgument(
            field, f"is {len(key)} bytes; {suite.value} needs {suite.key_length} (master key and salt)"
        )
    if len(set(key)) == 1:
        # All zeros, or one byte repeated: anyone can guess it, so the media is not private.
        # (Which byte is not said: an error names no part of a key.)
        raise InvalidArgument(field, "is one byte repeated (all zeros, say), which anyone can guess: use random "
                              "bytes, or leave it out and Charter makes a key")
    return bytes(key)


def decode_key(field: str, suite: SrtpSuite | str, text: str) -> bytes:
    """The master key and salt of an SDES inline key (base64, RFC 4568 6.1)."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(field, "is not base64 (the inline key of an SDES a=crypto line)") from None
    return check_key(field, suite, key)


def encode_key(key: bytes) -> str:
    """The SDES inline form of a master key and salt."""
    return base64.b64encode(key).decode("ascii")
