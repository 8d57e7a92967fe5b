"""SRTP suites and sessions for the control side.

Sessions are created here through pylibsrtp's Python API (once per endpoint, off the hot
path); the hot path then calls libsrtp's C functions on the session's raw `srtp_t`.
"""
from __future__ import annotations

import enum
import secrets

import pylibsrtp
from pylibsrtp._binding import ffi, lib

if not pylibsrtp.__version__.startswith("1."):
    # libsrtp 3 (pylibsrtp 2) changed srtp_protect/srtp_unprotect's C signatures.
    raise ImportError(f"Charter needs pylibsrtp 1.x (libsrtp 2), found {pylibsrtp.__version__}")


class SrtpSuite(str, enum.Enum):
    """The SDES crypto suites (RFC 4568, RFC 7714) an endpoint can use."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"

    @property
    def profile(self) -> int:
        return _PROFILES[self]

    @property
    def key_length(self) -> int:
        """Master key plus master salt, in bytes: 30 for AES-CM, 28 for AES-128-GCM."""
        return _KEY_LENGTHS[self]

    @classmethod
    def parse(cls, name: str) -> "SrtpSuite":
        try:
            return cls(name.upper())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown SRTP suite {name!r}; use one of {names}") from None


_PROFILES = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    SrtpSuite.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
_KEY_LENGTHS = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: 30,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: 30,
    SrtpSuite.AEAD_AES_128_GCM: 28,
}

# Replay window of inbound sessions: libsrtp's default (128) rejects reordering beyond it.
REPLAY_WINDOW = 1024


def generate_key(suite: SrtpSuite | str) -> bytes:
    """A fresh master key and salt for `suite`, from `secrets`."""
    return secrets.token_bytes(SrtpSuite.parse(suite).key_length)


def check_key(suite: SrtpSuite | str, key: bytes) -> None:
    suite = SrtpSuite.parse(suite)
    if len(key) != suite.key_length:
        raise ValueError(
            f"{suite.value} needs a {suite.key_length}-byte master key and salt, got {len(key)} bytes"
        )


def create_session(suite: SrtpSuite | str, key: bytes, *, inbound: bool) -> pylibsrtp.Session:
    """A libsrtp session for one direction of an endpoint, matching any SSRC.

    Outbound sessions allow repeated sequence numbers so that retransmissions can be
    protected again.
    """
    suite = SrtpSuite.parse(suite)
    check_key(suite, key)
    policy = pylibsrtp.Policy(
        key=bytes(key),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=suite.profile,
    )
    if inbound:
        policy.window_size = REPLAY_WINDOW
    else:
        policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


def session_pointer(session: pylibsrtp.Session) -> int:
    """The raw `srtp_t` of a pylibsrtp session, as an integer the hot path casts back."""
    return int(ffi.cast("uintptr_t", session._srtp[0]))


def function_pointer(name: str) -> int:
    """Address of a libsrtp C function exported by pylibsrtp's cffi module."""
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
