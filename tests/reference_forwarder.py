"""A small pure-Python reference of the forwarding semantics of mediad._forward.

It has no sockets: `ReferenceForwarder.receive` takes one datagram as an endpoint's socket
would receive it and returns the datagrams the forwarder would send. SRTP goes through
pylibsrtp's Python API. The compiled forwarder is tested against it differentially.

Where the contract leaves an order open, the choice made here is noted; differential tests
only use inputs on which the contract is exact.
"""
from __future__ import annotations

import dataclasses
import struct

import pylibsrtp

from rtp import SRTCP_TRAILER_LENGTHS, TAG_LENGTHS, receiver_session, sender_session

DROP_REASONS = (
    "too_short",
    "oversize",
    "bad_version",
    "stun",
    "dtls",
    "malformed",
    "unknown_ssrc",
    "auth_failed",
    "replayed",
    "srtp_error",
    "not_keyed",
    "handshake_flood",
)
MAX_DROPOUT = 3000
RECEIVE_BUFFER = 2048

Address = tuple[str, int]


def int16(value: int) -> int:
    value &= 0xFFFF
    return value - 0x10000 if value >= 0x8000 else value


class Rewriter:
    """Sequence/timestamp rewrite of one subscription, as the contract states it."""

    def __init__(self, ssrc: int = 0) -> None:
        self.ssrc = ssrc
        self.paused = False
        self._started = False
        self._rebase_pending = False
        self.source = 0
        self.max_in = 0
        self.epoch_start = 0
        self.seq_offset = 0
        self.ts_offset = 0
        self.last_out_seq = 0
        self.last_out_ts = 0
        self.last_time = 0.0
        # How the last rewrite() mapped: a rebase, and whether it advanced last_out_*.
        self.rebased = False
        self.advanced = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._rebase_pending = True

    def rebase(self) -> None:
        """The next packet starts a new mapping (a route that skipped to a key frame)."""
        if self._started:
            self._rebase_pending = True

    def rewrite(
        self, source: int, seq: int, timestamp: int, now: float, clock_rate: int = 90000
    ) -> tuple[int, int] | None:
        self.rebased = self.advanced = False
        if self.paused:
            return None
        if not self._started:
            self._started = True
            self._rebase_pending = False
            self.seq_offset = 0
            self.ts_offset = 0
            return self._advance(source, seq, timestamp, now, epoch=True)
        delta = int16(seq - self.max_in)
        if source != self.source or self._rebase_pending or delta > MAX_DROPOUT:
            self._rebase_pending = False
            out_seq = (self.last_out_seq + 1) & 0xFFFF
            out_ts = (self.last_out_ts + max(1, int((now - self.last_time) * clock_rate))) & 0xFFFFFFFF
            self.seq_offset = (out_seq - seq) & 0xFFFF
            self.ts_offset = (out_ts - timestamp) & 0xFFFFFFFF
            self.rebased = True
            return self._advance(source, seq, timestamp, now, epoch=True)
        if delta > 0:
            return self._advance(source, seq, timestamp, now, epoch=False)
        if int16(seq - self.epoch_start) < 0:
            return None
        return (seq + self.seq_offset) & 0xFFFF, (timestamp + self.ts_offset) & 0xFFFFFFFF

    def _advance(self, source: int, seq: int, timestamp: int, now: float, *, epoch: bool) -> tuple[int, int]:
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (timestamp + self.ts_offset) & 0xFFFFFFFF
        self.max_in = seq
        if epoch:
            self.epoch_start = seq
            self.source = source
        self.last_out_seq = out_seq
        self.last_out_ts = out_ts
        self.last_time = now
        self.advanced = True
        return out_seq, out_ts


@dataclasses.dataclass
class Sent:
    """One datagram the forwarder sends: from `endpoint`'s socket to `address`."""

    endpoint: RefEndpoint
    address: Address
    datagram: bytes
    subscription: RefSubscription
    rebased: bool  # its mapping started a new epoch
    advanced: bool  # it moved the subscription's last sent sequence/timestamp


KEY_FRAME_CODECS = ("VP8", "VP9", "H264")


def payload_of(plain: bytes) -> bytes:
    """The payload of a consistent plaintext RTP packet, padding excluded."""
    start = 12 + 4 * (plain[0] & 0x0F)
    if plain[0] & 0x10:
        start += 4 + 4 * struct.unpack_from("!H", plain, start + 2)[0]
    end = len(plain) - (plain[-1] if plain[0] & 0x20 else 0)
    return plain[start:end]


def _h264_key(nal_header: int) -> bool:
    return nal_header & 0x1F in (5, 7)  # IDR slice, sequence parameter set


def key_frame(codec: str, plain: bytes) -> bool:
    """Whether a plaintext RTP packet starts a key frame (RFC 7741, RFC 9628, RFC 6184)."""
    codec = codec.upper()
    payload = payload_of(plain)
    if not payload or codec not in KEY_FRAME_CODECS:
        return False
    first = payload[0]
    if codec == "VP8":
        if not first & 0x10 or first & 0x07:  # S, PID
            return False
        at = 1
        if first & 0x80:  # X
            if len(payload) < 2:
                return False
            x, at = payload[1], 2
            if x & 0x80:  # I: PictureID, 15 bits when its M bit is set
                if at >= len(payload):
                    return False
                at += 2 if payload[at] & 0x80 else 1
            at += bool(x & 0x40) + bool(x & 0x30)  # L: TL0PICIDX; T or K: TID|Y|KEYIDX
        return at < len(payload) and not payload[at] & 0x01
    if codec == "VP9":
        if not first & 0x08 or first & 0x40:  # B, P
            return False
        if first & 0x20:  # L: the spatial layer must be 0
            at = 1
            if first & 0x80:
                if at >= len(payload):
                    return False
                at += 2 if payload[at] & 0x80 else 1
            return at < len(payload) and not (payload[at] >> 1) & 0x07
        return True
    kind = first & 0x1F
    if kind == 24:  # STAP-A
        rest = payload[1:]
        while len(rest) >= 3:
            size = struct.unpack_from("!H", rest)[0]
            if size == 0 or size + 2 > len(rest):
                return False
            if _h264_key(rest[2]):
                return True
            rest = rest[2 + size :]
        return False
    if kind == 28:  # FU-A
        return len(payload) >= 2 and bool(payload[1] & 0x80) and _h264_key(payload[1])
    return _h264_key(first)


def strip_extension(plain: bytes) -> bytes:
    """The packet without its header extension (X bit cleared)."""
    if not plain[0] & 0x10:
        return plain
    start = 12 + 4 * (plain[0] & 0x0F)
    size = 4 + 4 * struct.unpack_from("!H", plain, start + 2)[0]
    return bytes([plain[0] & ~0x10]) + plain[1:start] + plain[start + size :]


class RefSubscription:
    def __init__(
        self,
        track: RefTrack,
        target: RefEndpoint,
        ssrc: int,
        paused: bool,
        payload_type: int | None = None,
        strip_extensions: bool = False,
        wait_for_key_frame: bool = False,
    ) -> None:
        self.track = track
        self.target = target
        self.ssrc = ssrc
        self.rewriter = Rewriter(ssrc)
        if paused:
            self.rewriter.pause()
        self.payload_type = payload_type
        self.strip_extensions = strip_extensions
        self.wait_for_key_frame = wait_for_key_frame
        self.waiting = False
        self.active = True
        self.counters = dict.fromkeys(
            (
                "packets", "bytes", "dropped_paused", "dropped_no_remote", "dropped_stale", "send_errors",
                "dropped_waiting_key_frame",
            ),
            0,
        )
        if wait_for_key_frame:
            self.skip_to_key_frame()

    @property
    def paused(self) -> bool:
        return self.rewriter.paused

    def pause(self) -> None:
        self.rewriter.pause()

    def resume(self) -> None:
        if self.paused and self.wait_for_key_frame:
            self.skip_to_key_frame()
        self.rewriter.resume()

    def skip_to_key_frame(self) -> bool:
        if self.track.codec.upper() not in KEY_FRAME_CODECS:
            return False
        self.waiting = True
        self.rewriter.rebase()
        return True

    def copy(self, plain: bytes) -> bytes:
        """The plaintext as this route sends it, before its header is rewritten."""
        if self.strip_extensions:
            plain = strip_extension(plain)
        if self.payload_type is not None:
            plain = plain[:1] + bytes([plain[1] & 0x80 | self.payload_type]) + plain[2:]
        return plain


class RefTrack:
    def __init__(self, endpoint: RefEndpoint, ssrc: int, clock_rate: int, codec: str = "") -> None:
        self.endpoint = endpoint
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.codec = codec
        self.source = 0
        self.subscriptions: list[RefSubscription] = []
        self.packets = 0
        self.bytes = 0

    def set_ssrc(self, ssrc: int) -> None:
        del self.endpoint.tracks[self.ssrc]
        self.endpoint.tracks[ssrc] = self
        self.ssrc = ssrc
        self.source += 1

    def subscribe(
        self,
        target: RefEndpoint,
        ssrc: int,
        *,
        paused: bool = False,
        payload_type: int | None = None,
        strip_extensions: bool = False,
        wait_for_key_frame: bool = False,
    ) -> RefSubscription:
        subscription = RefSubscription(
            self, target, ssrc, paused, payload_type, strip_extensions, wait_for_key_frame
        )
        self.subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: RefSubscription) -> None:
        self.subscriptions.remove(subscription)
        subscription.active = False


class RefEndpoint:
    def __init__(
        self, rx_suite: str, rx_key: bytes, tx_suite: str, tx_key: bytes, remote: Address | None, name: str
    ) -> None:
        self.name = name
        self.rx_suite = rx_suite
        self.rx = receiver_session(rx_suite, rx_key)
        self.tx = sender_session(tx_suite, tx_key)
        self.remote = remote
        self.latching = remote is None
        self.tracks: dict[int, RefTrack] = {}
        self.counters = dict.fromkeys(("packets_in", "bytes_in", "packets_out", "bytes_out", "rtcp_in"), 0)
        self.drops = dict.fromkeys(DROP_REASONS, 0)

    def add_track(self, ssrc: int, *, clock_rate: int = 90000, codec: str = "") -> RefTrack:
        if ssrc in self.tracks:
            raise ValueError(f"SSRC {ssrc} is taken")
        track = RefTrack(self, ssrc, clock_rate, codec)
        self.tracks[ssrc] = track
        return track

    def remove_track(self, track: RefTrack) -> None:
        del self.tracks[track.ssrc]
        for subscription in list(track.subscriptions):
            track.unsubscribe(subscription)

    def stats(self) -> dict[str, object]:
        return {**self.counters, "drops": dict(self.drops)}


def _srtp_reason(error: pylibsrtp.Error) -> str:
    message = str(error)
    if message == "authentication failure":
        return "auth_failed"
    if message.startswith("replay check failed"):
        return "replayed"
    if message in ("unsupported parameter", "error parsing data"):
        return "malformed"
    return "srtp_error"


def _header_consistent(datagram: bytes) -> bool:
    # The same bound libsrtp's header validation uses: the whole datagram.
    count = datagram[0] & 0x0F
    length = 12 + 4 * count
    if datagram[0] & 0x10:
        if length + 4 > len(datagram):
            return False
        length += 4 + 4 * struct.unpack_from("!H", datagram, length + 2)[0]
    return length <= len(datagram)


class ReferenceForwarder:
    def __init__(self) -> None:
        self.endpoints: list[RefEndpoint] = []

    def create_endpoint(
        self,
        *,
        rx_suite: str,
        rx_key: bytes,
        tx_suite: str,
        tx_key: bytes,
        remote: Address | None = None,
        name: str = "",
    ) -> RefEndpoint:
        endpoint = RefEndpoint(rx_suite, rx_key, tx_suite, tx_key, remote, name)
        self.endpoints.append(endpoint)
        return endpoint

    def receive(self, endpoint: RefEndpoint, datagram: bytes, source: Address, now: float) -> list[Sent]:
        """Process one datagram received on `endpoint` from `source` at monotonic time `now`."""
        reason = self._classify(endpoint, datagram)
        if reason is not None:
            endpoint.drops[reason] += 1
            return []
        if 192 <= datagram[1] <= 223:
            try:
                endpoint.rx.unprotect_rtcp(datagram)
            except pylibsrtp.Error as error:
                endpoint.drops[_srtp_reason(error)] += 1
                return []
            endpoint.counters["rtcp_in"] += 1
            self._latch(endpoint, source)
            return []
        ssrc = struct.unpack_from("!I", datagram, 8)[0]
        track = endpoint.tracks.get(ssrc)
        if track is None:
            endpoint.drops["unknown_ssrc"] += 1
            return []
        try:
            plain = endpoint.rx.unprotect(datagram)
        except pylibsrtp.Error as error:
            endpoint.drops[_srtp_reason(error)] += 1
            return []
        self._latch(endpoint, source)
        endpoint.counters["packets_in"] += 1
        endpoint.counters["bytes_in"] += len(plain)
        track.packets += 1
        track.bytes += len(plain)
        seq, timestamp = struct.unpack_from("!HI", plain, 2)
        sent = []
        for subscription in track.subscriptions:
            if subscription.paused:
                subscription.counters["dropped_paused"] += 1
                continue
            # Open in the contract: whether a subscriber without a remote advances the
            # rewrite state. Here it does not (checked before rewriting).
            target = subscription.target
            if target.remote is None:
                subscription.counters["dropped_no_remote"] += 1
                continue
            if subscription.waiting:
                if not key_frame(track.codec, plain):
                    subscription.counters["dropped_waiting_key_frame"] += 1
                    continue
                subscription.waiting = False
            mapped = subscription.rewriter.rewrite(track.source, seq, timestamp, now, track.clock_rate)
            if mapped is None:
                subscription.counters["dropped_stale"] += 1
                continue
            copy = subscription.copy(plain)
            out = copy[:2] + struct.pack("!HII", mapped[0], mapped[1], subscription.ssrc) + copy[12:]
            protected = target.tx.protect(out)
            subscription.counters["packets"] += 1
            subscription.counters["bytes"] += len(protected)
            target.counters["packets_out"] += 1
            target.counters["bytes_out"] += len(protected)
            rewriter = subscription.rewriter
            sent.append(Sent(target, target.remote, protected, subscription, rewriter.rebased, rewriter.advanced))
        return sent

    @staticmethod
    def _classify(endpoint: RefEndpoint, datagram: bytes) -> str | None:
        """The drop reason decided before any SSRC lookup or crypto, or None."""
        # Open in the contract: an empty datagram, and where "oversize" sits among the
        # first-byte checks. Here both come first.
        if not datagram:
            return "too_short"
        if len(datagram) > RECEIVE_BUFFER:
            return "oversize"
        first = datagram[0]
        if first <= 3:
            return "stun"
        if 20 <= first <= 63:
            return "dtls"
        if not 128 <= first <= 191:
            return "bad_version"
        if len(datagram) >= 2 and 192 <= datagram[1] <= 223:
            if len(datagram) < 8 + SRTCP_TRAILER_LENGTHS[endpoint.rx_suite]:
                return "too_short"
            return None
        if len(datagram) < 12 + TAG_LENGTHS[endpoint.rx_suite]:
            return "too_short"
        if not _header_consistent(datagram):
            return "malformed"
        return None

    @staticmethod
    def _latch(endpoint: RefEndpoint, source: Address) -> None:
        if endpoint.latching:
            endpoint.remote = source
