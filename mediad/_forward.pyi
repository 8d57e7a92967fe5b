"""Typed control API of the compiled forwarding core (mediad/_forward.pyx).

The hot path owns Endpoint, Track and Subscription; the control side creates, changes and
reads them only through the methods below. Nothing here is called per packet. Counters and
statistics are read-only: only the hot path changes them.
"""
import asyncio
import socket
from collections.abc import Callable

from typing_extensions import disjoint_base

DROP_REASONS: tuple[str, ...]
"""Names of the per-endpoint drop counters, in the order the hot path keeps them."""

def is_key_frame(codec: str, packet: bytes) -> bool:
    """Whether a plaintext RTP packet of `codec` (VP8, VP9, H264; any other never) starts a key
    frame, as a route that waits for one decides. Exposed for table-driven tests."""

@disjoint_base
class Counters:
    """Packet counters of an endpoint (Endpoint.counters) or of a forwarder (Forwarder.totals())."""

    @property
    def packets_in(self) -> int:
        """SRTP packets received that authenticated."""
    @property
    def bytes_in(self) -> int: ...
    @property
    def packets_out(self) -> int:
        """SRTP packets sent."""
    @property
    def bytes_out(self) -> int: ...
    @property
    def rtcp_in(self) -> int:
        """SRTCP packets received that authenticated."""
    @property
    def rtcp_out(self) -> int: ...
    @property
    def rtcp_errors(self) -> int:
        """RTCP not sent (protect or send failed) or that the RTCP handler failed on."""
    @property
    def handshakes_in(self) -> int:
        """STUN and DTLS datagrams given to the handshake handler."""
    @property
    def handshake_errors(self) -> int:
        """Of those, the ones the handler raised on."""
    @property
    def drops(self) -> tuple[int, ...]:
        """Packets dropped, by reason: one count per name in DROP_REASONS."""
    def dropped(self, reason: str) -> int:
        """The count of one reason of DROP_REASONS."""

@disjoint_base
class Forwarder:
    """Owns the shared packet buffers and drives every endpoint's socket on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *, batch_size: int = 32) -> None: ...
    @property
    def endpoints(self) -> list[Endpoint]: ...
    def create_endpoint(
        self,
        sock: socket.socket,
        *,
        rx_suite: str | None = None,
        rx_key: bytes | None = None,
        tx_suite: str | None = None,
        tx_key: bytes | None = None,
        remote: tuple[str, int] | None = None,
        name: str = "",
        buffer_bytes: int = 1 << 20,
        description: object = None,
        latch: bool = True,
        handshakes: bool = False,
    ) -> Endpoint:
        """Start forwarding on a bound UDP socket (the endpoint owns and closes it).

        rx_* is the SRTP key and salt the remote peer protects with (inbound), tx_* the one
        the endpoint protects with (outbound); without keys (a DTLS-SRTP endpoint before its
        handshake) media is dropped as not_keyed until Endpoint.set_keys. Without `remote`, the
        endpoint latches onto the source of the first packet that authenticates (and follows
        later authenticated ones), unless `latch` is False (ICE sets the remote instead).
        With `handshakes`, its STUN and DTLS go to the handshake handler.
        The socket's receive and send buffers are raised to at least `buffer_bytes`.
        `description` is kept as Endpoint.description for the control side (opaque here).
        """
    def set_handshake_handler(self, handler: Callable[[Endpoint, bytes, tuple[str, int]], None] | None) -> None:
        """STUN and DTLS datagrams of endpoints made with `handshakes` are handed to `handler`
        with their source address, on the event loop, at most 100 a second per endpoint (a
        burst of 200); beyond that they are dropped as handshake_flood. An exception in the
        handler is counted in handshake_errors and reported to the loop's exception handler."""
    def set_rtcp_handler(self, handler: Callable[[Endpoint, bytes], None] | None) -> None:
        """Every RTCP packet that authenticates is handed, decrypted, to `handler` on the
        event loop (the RTCP slow path); None stops it. An exception in the handler is
        counted in the endpoint's rtcp_errors and reported to the loop's exception handler."""
    def totals(self) -> Counters:
        """Counters since the forwarder started, closed endpoints included."""
    @property
    def batches(self) -> int:
        """recvmmsg calls that returned packets."""
    @property
    def batch_packets(self) -> int:
        """Packets those calls returned."""
    def close(self) -> None:
        """Close every endpoint."""

@disjoint_base
class Endpoint:
    @property
    def counters(self) -> Counters: ...
    @property
    def last_activity(self) -> float:
        """time.monotonic() of the last packet that authenticated; 0.0 if none."""
    description: object
    """What the control side made it from (Forwarder.create_endpoint)."""
    @property
    def name(self) -> str: ...
    @property
    def local_address(self) -> tuple[str, int] | None:
        """The socket's bound address; None once closed."""
    @property
    def remote(self) -> tuple[str, int] | None: ...
    @property
    def latching(self) -> bool:
        """True while the remote address follows authenticated packets (none was given)."""
    @property
    def closed(self) -> bool: ...
    @property
    def tracks(self) -> list[Track]: ...
    @property
    def subscriptions(self) -> list[Subscription]:
        """Subscriptions that send to this endpoint."""
    def set_remote(self, remote: tuple[str, int] | None, *, latch: bool = True) -> None:
        """Fix the remote address, or None: no remote, latching again unless `latch` is False."""
    def require_proof(self, budget: int) -> None:
        """Send the remote at most `budget` packets (RTP, RTCP, retransmissions) until a
        packet that authenticates arrives from its address."""
    @property
    def proven(self) -> bool:
        """False while the remote owes the proof require_proof asked for."""
    @property
    def budget_left(self) -> int | None:
        """Packets it may still be sent before it proves itself; None once it has."""
    @property
    def keyed(self) -> bool:
        """False until SRTP keys are installed."""
    @property
    def handshakes(self) -> bool:
        """True when its STUN and DTLS go to the handshake handler."""
    def send_datagram(self, data: bytes, address: tuple[str, int]) -> bool:
        """Send `data` as it is (a STUN answer, a DTLS record) to `address`; False when the
        socket refuses it or the endpoint is closed."""
    def set_keys(self, *, rx_suite: str, rx_key: bytes, tx_suite: str, tx_key: bytes) -> None:
        """Install new SRTP sessions for both directions (rekey, or keys from DTLS later)."""
    def add_track(
        self,
        ssrc: int,
        *,
        clock_rate: int = 90000,
        kind: str = "video",
        name: str = "",
        cache_packets: int = 0,
        description: object = None,
        codec: str = "",
    ) -> Track:
        """An inbound stream of this endpoint, by SSRC. ValueError if the SSRC is taken.
        With `cache_packets` (up to 4096), the plaintext of that many recent packets is kept
        to answer NACKs (Subscription.retransmit); each takes 1500 bytes. `description` is
        kept as Track.description. `codec` (an rtpmap encoding name, any case) tells the
        routes that wait for a key frame how to recognize one: VP8, VP9 and H264 are known;
        for any other (audio, unknown) a route never waits."""
    def find_track(self, ssrc: int) -> Track | None:
        """Its inbound track with this SSRC."""
    def find_subscription(self, ssrc: int) -> Subscription | None:
        """The subscription that sends to this endpoint with this SSRC."""
    def remove_track(self, track: Track) -> None:
        """Stop forwarding `track`; its subscriptions are removed."""
    def send_rtcp(self, packet: bytes) -> bool:
        """Protect a plaintext RTCP packet with the outbound session and send it to the
        remote. False when there is no remote yet or sending failed (counted in rtcp_errors)."""
    def close(self) -> None:
        """Stop the socket, remove its tracks (and their subscriptions) and the subscriptions
        sending to it. Idempotent."""

@disjoint_base
class Track:
    @property
    def packets(self) -> int:
        """Packets of the track received and authenticated."""
    @property
    def bytes(self) -> int: ...
    @property
    def last_activity(self) -> float: ...
    @property
    def description(self) -> object:
        """What the control side added it from (Endpoint.add_track)."""
    @property
    def ssrc(self) -> int: ...
    @property
    def clock_rate(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def codec(self) -> str:
        """As given to Endpoint.add_track."""
    @property
    def name(self) -> str: ...
    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint that receives it; None once removed (Endpoint.remove_track, close)."""
    @property
    def subscriptions(self) -> list[Subscription]: ...
    @property
    def cache_packets(self) -> int: ...
    @property
    def key_frames(self) -> int:
        """Key frames seen (their first packets), on a video track with a cache: the latest
        one is kept whole in the cache while it fits, for start_replay."""
    @property
    def highest_seq(self) -> int | None:
        """The extended highest sequence number received (wrap-arounds counted, RFC 3550
        A.1); None before the first packet."""
    @property
    def expected(self) -> int:
        """Packets expected since the statistics started (the first packet, or the last
        restart of the publisher's sequence): highest - first + 1."""
    @property
    def received(self) -> int:
        """Packets received since then (expected - received is the cumulative loss)."""
    @property
    def jitter(self) -> int:
        """Interarrival jitter (RFC 3550 A.8), in RTP timestamp units."""
    def set_ssrc(self, ssrc: int) -> None:
        """The publisher restarted with a new SSRC: its subscribers' outgoing streams stay
        continuous (sequence and timestamp carry on)."""
    def subscribe(
        self,
        target: Endpoint,
        ssrc: int,
        *,
        paused: bool = False,
        payload_type: int | None = None,
        strip_extensions: bool = False,
        rtx_ssrc: int = 0,
        rtx_payload_type: int = 0,
        wait_for_key_frame: bool = False,
    ) -> Subscription:
        """Send this track to `target` with outgoing SSRC `ssrc`. ValueError if `target`
        already sends that SSRC (or `rtx_ssrc`, as a route's SSRC or RTX SSRC) or already
        receives this track, or is this track's endpoint, or a payload type is not in 0..127.

        The route's options, for a receiver with numbers of its own (a browser):
        `payload_type` replaces the payload type of every packet sent (the marker bit kept;
        None: the publisher's); `strip_extensions` sends packets without their RTP header
        extension (RFC 8285); with `rtx_ssrc`, retransmissions go as RFC 4588 packets of that
        SSRC with `rtx_payload_type`; `wait_for_key_frame` forwards nothing until a packet
        that starts a key frame of the track's codec, at the start and after every resume
        (a no-op for codecs other than VP8, VP9, H264)."""
    def unsubscribe(self, subscription: Subscription) -> None: ...
    def find_subscription(self, target: Endpoint) -> Subscription | None:
        """The subscription sending this track to `target`."""

@disjoint_base
class Subscription:
    @property
    def packets(self) -> int:
        """Packets sent on this route."""
    @property
    def bytes(self) -> int: ...
    @property
    def dropped_paused(self) -> int: ...
    @property
    def dropped_no_remote(self) -> int:
        """Not sent: no remote address yet (nothing latched)."""
    @property
    def dropped_stale(self) -> int:
        """Not sent: from before a rebase of the mapping."""
    @property
    def send_errors(self) -> int: ...
    @property
    def dropped_waiting_key_frame(self) -> int:
        """Not sent: the route waited for a key frame (wait_for_key_frame, skip_to_key_frame)."""
    @property
    def dropped_unproven(self) -> int:
        """Not sent: the target spent its budget before proving it wants the media."""
    @property
    def retransmitted(self) -> int:
        """Packets sent again answering NACKs, RTX packets included."""
    @property
    def rtx_sent(self) -> int:
        """Of those, the ones sent as RTX packets (rtx_ssrc)."""
    @property
    def retransmit_misses(self) -> int: ...
    @property
    def replayed(self) -> int:
        """Packets sent from the track's key-frame cache (start_replay)."""
    @property
    def last_activity(self) -> float: ...
    @property
    def ssrc(self) -> int: ...
    @property
    def track(self) -> Track: ...
    @property
    def target(self) -> Endpoint: ...
    @property
    def paused(self) -> bool: ...
    @property
    def active(self) -> bool:
        """False once unsubscribed or either endpoint closed."""
    @property
    def payload_type(self) -> int | None:
        """The payload type every packet is sent with; None: the publisher's."""
    @property
    def strip_extensions(self) -> bool:
        """Packets are sent without their RTP header extension."""
    @property
    def rtx_ssrc(self) -> int:
        """The SSRC of the route's RFC 4588 retransmission stream; 0: none."""
    @property
    def rtx_payload_type(self) -> int: ...
    @property
    def wait_for_key_frame(self) -> bool:
        """The option: the route waits for a key frame at the start and after every resume."""
    @property
    def waiting_for_key_frame(self) -> bool:
        """True while the route forwards nothing until a packet that starts a key frame."""
    @property
    def replaying(self) -> bool:
        """True while the route is sent the key-frame cache (start_replay)."""
    def start_replay(self) -> bool:
        """Fast start: a route waiting for a key frame starts from the latest one its track's
        cache holds whole (its publisher ignored the request): from replay() on, it is sent
        that key frame and every packet after it, with the route's own numbers continuing
        without a gap; live packets wait in the cache meanwhile. False, and nothing changes,
        when it does not wait, is paused or has no remote, or no whole key frame is cached."""
    def replay(self, most: int) -> int:
        """Send up to `most` packets of the replay, oldest first (paced by the caller): how
        many are left; 0 once it caught up with the live stream, which it forwards again;
        -1 when the cache moved on past it, or it was paused: it waits for the next key
        frame again, as before start_replay. Packets never received are skipped."""
    def pause(self) -> None: ...
    def resume(self) -> None:
        """Resume; the outgoing sequence continues without a gap. With wait_for_key_frame,
        from the next key frame on."""
    def skip_to_key_frame(self) -> bool:
        """Forward nothing more until a packet that starts a key frame (the outgoing sequence
        then continues without a gap); False, and nothing changes, for a track whose codec's
        key frames are not known here (see Endpoint.add_track)."""
    def retransmit(self, sequence: int) -> bool:
        """Send again the packet this subscription sent with outgoing sequence number
        `sequence` (answering a NACK), from the track's plaintext cache, protected afresh,
        with the route's payload type and without its header extension if so set. With
        rtx_ssrc, as an RFC 4588 packet: rtx_payload_type, rtx_ssrc, the RTX stream's own
        sequence number, the original's timestamp, and its payload (padding removed) after
        `sequence` as the original sequence number.
        False when it is not in the cache (any more): counted in retransmit_misses.
        ValueError unless 0 <= sequence <= 65535."""
    def source_sequence(self, sequence: int) -> int | None:
        """The publisher's sequence number of what this route sent, or would have sent, as
        `sequence` in its current mapping (a NACK the cache cannot answer is passed on to the
        publisher with it); None outside the mapping or before the first packet. ValueError
        unless 0 <= sequence <= 65535."""
    def map_timestamp(self, timestamp: int) -> int | None:
        """The outgoing RTP timestamp for one of the publisher's (to translate sender
        reports), or None before the first packet was forwarded."""
    @property
    def last_seq(self) -> int | None:
        """The last outgoing sequence number; None before the first packet."""
    @property
    def last_timestamp(self) -> int | None: ...

@disjoint_base
class Rewriter:
    """The per-subscription sequence/timestamp rewrite, exposed for table-driven tests."""

    def __init__(self, ssrc: int = 0) -> None: ...
    @property
    def ssrc(self) -> int: ...
    def rewrite(
        self, source: int, seq: int, timestamp: int, now: float, clock_rate: int = 90000
    ) -> tuple[int, int] | None:
        """Map one incoming packet of `source` (a generation number of the track's SSRC) to
        (sequence, timestamp), or None when it is too old to forward."""
    def pause(self) -> None: ...
    def resume(self) -> None: ...
