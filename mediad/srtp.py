"""libsrtp sessions of the endpoints, for the control side.

Sessions are created here through pylibsrtp's Python API (once per endpoint, off the hot
path); the hot path then calls libsrtp's C functions on the session's raw `srtp_t`.
"""
from __future__ import annotations

import pylibsrtp
from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]  # pylibsrtp's cffi module has no stubs

from charter.suites import SrtpSuite, check_key

if not pylibsrtp.__version__.startswith("1."):
    # libsrtp 3 (pylibsrtp 2) changed srtp_protect/srtp_unprotect's C signatures.
    raise ImportError(f"Charter needs pylibsrtp 1.x (libsrtp 2), found {pylibsrtp.__version__}")


_PROFILES = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    SrtpSuite.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
# Replay window of inbound sessions: libsrtp's default (128) rejects reordering beyond it.
REPLAY_WINDOW = 1024


def create_session(suite: SrtpSuite | str, key: bytes, *, inbound: bool) -> pylibsrtp.Session:
    """A libsrtp session for one direction of an endpoint, matching any SSRC.

    Outbound sessions allow repeated sequence numbers so that retransmissions can be
    protected again.
    """
    suite = SrtpSuite.parse(suite)
    policy = pylibsrtp.Policy(
        key=check_key("key", suite, key),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=_PROFILES[suite],
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
