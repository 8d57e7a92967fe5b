# The forwarding core's C-level interface (mediad/_forward.pyx): the typed state of its media
# objects, for Cython code of the daemon that cimports them. Python code uses the typed API
# in _forward.pyi instead. Ownership is noted on every object member: owned (this object
# keeps it alive) or borrowed (another object owns it).
from cpython.ref cimport PyObject
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from mediad._net cimport iovec, mmsghdr, sockaddr_in


cdef enum:  # drop reasons, indexes of Counters.drop_counts and DROP_REASONS
    DROP_TOO_SHORT = 0
    DROP_OVERSIZE
    DROP_BAD_VERSION
    DROP_STUN
    DROP_DTLS
    DROP_MALFORMED
    DROP_UNKNOWN_SSRC
    DROP_AUTH_FAILED
    DROP_REPLAYED
    DROP_SRTP_ERROR
    DROP_NOT_KEYED
    DROP_HANDSHAKE_FLOOD
    N_DROP_REASONS


cdef enum:  # Subscription.waiting
    WAIT_NONE = 0                   # live: every packet is forwarded
    WAIT_KEY_FRAME = 1              # nothing until a packet that starts a key frame
    WAIT_REPLAY = 2                 # the key-frame cache is being sent; live packets wait in it


cdef enum:  # codecs whose key frames the hot path recognizes (Track.codec_id)
    CODEC_OTHER = 0                 # audio, unknown: a route never waits for a key frame
    CODEC_VP8
    CODEC_VP9
    CODEC_H264


cdef struct RewriteState:
    bint started
    bint paused
    bint resync          # the next packet rebases (after resume)
    uint32_t source      # generation of the track's SSRC the mapping belongs to
    uint16_t max_in      # highest incoming sequence number of this mapping
    uint16_t epoch_start # incoming sequence number the mapping started at
    uint16_t seq_offset
    uint16_t last_out_seq
    uint32_t ts_offset
    uint32_t last_out_ts
    double last_time


cdef struct ReceptionState:
    bint started
    uint16_t max_seq               # highest sequence number received
    uint32_t cycles                # its wrap-arounds, times 65536
    uint32_t base_seq              # extended sequence number the statistics start at
    uint32_t bad_seq               # a jump waits for this number to confirm a restart
    uint64_t base_packets          # Track.packets before base_seq
    int32_t transit                # arrival minus RTP timestamp of the last packet, clock units
    double jitter                  # interarrival jitter estimate, clock units


cdef class Counters:
    """Packet counters of an endpoint, or the totals of a forwarder."""
    cdef readonly uint64_t packets_in, bytes_in, packets_out, bytes_out
    cdef readonly uint64_t rtcp_in, rtcp_out, rtcp_errors
    cdef readonly uint64_t handshakes_in, handshake_errors   # STUN and DTLS given to the handler
    cdef uint64_t drop_counts[N_DROP_REASONS]
    cdef void add(self, Counters other) noexcept


cdef class Rewriter:
    cdef RewriteState state
    cdef readonly uint32_t ssrc


cdef class Subscription:
    cdef Track _track               # borrowed: the track owns its subscriptions
    cdef Endpoint _target           # borrowed: the target lists it in its subscriptions
    cdef uint32_t _ssrc
    cdef bint _active
    cdef RewriteState rw
    # Options of the route (a WebRTC receiver's negotiated numbers). A route without them
    # costs the per-packet loop two tests of a flag: `transform` and `waiting`.
    cdef bint transform             # payload_type or strip_extensions is set
    cdef int payload_type           # -1: the publisher's, unchanged
    cdef readonly bint strip_extensions
    cdef readonly uint32_t rtx_ssrc  # 0: retransmissions reuse the route's SSRC and sequence
    cdef readonly uint8_t rtx_payload_type
    cdef uint16_t rtx_seq           # sequence number of the next RTX packet (RFC 4588)
    cdef bint wait_key_frame        # the option: wait for a key frame at the start and after resume
    cdef int waiting                # WAIT_*: live, waiting for a key frame, or replaying the cache
    cdef uint16_t replay_next       # while replaying: the next cached packet to send
    cdef readonly uint64_t packets, bytes, dropped_paused, dropped_no_remote, dropped_stale, send_errors
    cdef readonly uint64_t retransmitted, retransmit_misses
    cdef readonly uint64_t dropped_waiting_key_frame, rtx_sent
    cdef readonly uint64_t dropped_unproven   # the target had spent its budget before proving itself
    cdef readonly uint64_t replayed           # packets sent from the key-frame cache (fast start)
    cdef bint _arm(self) noexcept
    cdef bint _send_cached(self, const uint8_t *src, int length, double now) noexcept
    cdef readonly double last_activity


cdef class Track:
    cdef Endpoint _endpoint         # borrowed: the endpoint owns its tracks
    cdef uint32_t _ssrc
    cdef uint32_t source            # bumped when the publisher's SSRC changes
    cdef uint32_t _clock_rate
    cdef str _kind, _name, _codec
    cdef int codec_id               # CODEC_*: how to recognize its key frames
    cdef readonly object description  # owned: what the control side made it from (opaque here)
    cdef list _subscriptions        # owned; what the control side adds to and removes from
    cdef PyObject **subs            # owned flat copy of _subscriptions for the per-packet loop
    cdef int n_subs
    cdef readonly uint64_t packets, bytes
    cdef readonly double last_activity
    cdef ReceptionState rx          # RFC 3550 A.1/A.8 of what the publisher sends (its RRs)
    # Retransmission cache: plaintext of the last packets by sequence number, so a NACK
    # is answered by protecting a fresh copy (never re-encrypting a protected packet).
    cdef int cache_packets
    cdef uint8_t *cache
    cdef int *cache_len             # 0: empty slot
    cdef uint16_t *cache_seq
    cdef uint32_t *cache_source
    # The latest key frame, while the cache holds it from its first packet on: what a new
    # receiver can start from when the publisher does not answer a key-frame request.
    cdef bint key_valid
    cdef uint16_t key_seq
    cdef uint32_t key_ts, key_source
    cdef readonly uint64_t key_frames   # key frames seen (their first packets)
    cdef void _allocate_cache(self, int packets) except *
    cdef void _rebuild(self) except *


cdef class Endpoint:
    cdef Forwarder _forwarder       # borrowed: the forwarder lists its endpoints
    cdef object _sock               # owned: closed with the endpoint
    cdef object _on_readable_cb
    cdef int fd
    cdef str _name
    cdef public object description  # owned: what the control side made it from (opaque here)
    cdef object _rx_session, _tx_session   # owned pylibsrtp sessions behind rx_ctx / tx_ctx
    cdef void *rx_ctx
    cdef void *tx_ctx
    cdef int rx_tag_len, rx_rtcp_tag_len
    cdef sockaddr_in remote_addr
    cdef bint has_remote, _latching, _closed
    cdef bint _handshakes           # STUN and DTLS go to the forwarder's handshake handler
    cdef double handshake_tokens, handshake_refilled   # its rate limit (a token bucket)
    cdef double remote_tokens, remote_refilled         # the nominated remote's own bucket
    # A receiver that has not proven it wants the media (an authenticated packet from its
    # address) is sent at most `budget` packets: a Join cannot aim Charter at a stranger.
    cdef bint unproven
    cdef uint64_t budget
    cdef list _tracks               # owned
    cdef uint32_t *track_ssrcs      # owned flat copies of _tracks for the per-packet lookup
    cdef PyObject **track_ptrs
    cdef int n_tracks
    cdef list _subscriptions        # subscriptions that send to this endpoint (borrowed)
    cdef readonly Counters counters  # owned
    cdef readonly double last_activity
    cdef object _find_track(self, uint32_t ssrc)
    cdef void _rebuild_tracks(self) except *


cdef class Forwarder:
    cdef object _loop
    cdef list _endpoints            # owned
    cdef Counters _retired          # owned: what closed endpoints counted
    cdef object _rtcp_handler       # called with (endpoint, plaintext RTCP bytes)
    cdef object _handshake_handler  # called with (endpoint, STUN or DTLS bytes, source address)
    cdef int batch
    cdef mmsghdr *rx_msgs           # owned packet buffers, shared by every endpoint
    cdef iovec *rx_iov
    cdef sockaddr_in *rx_from
    cdef uint8_t *rx_buf
    cdef int *rx_len
    cdef PyObject **rx_track        # track of each packet of the batch; NULL once handled
    cdef int8_t *rx_key             # whether each packet starts a key frame; -1: not looked at yet
    cdef mmsghdr *tx_msgs
    cdef iovec *tx_iov
    cdef uint8_t *tx_buf
    cdef readonly uint64_t batches, batch_packets
    cdef void _receive(self, Endpoint ep) noexcept
    cdef PyObject *_accept(self, Endpoint ep, int i, double now) noexcept
    cdef void _accept_rtcp(self, Endpoint ep, int i, int length, double now) noexcept
    cdef void _deliver_rtcp(self, Endpoint ep, uint8_t *p, int length) noexcept
    cdef void _accept_handshake(self, Endpoint ep, int i, int length, double now) noexcept
    cdef void _fan_out(self, int n, double now) noexcept
    cdef void _send_run(self, Track track, Subscription sub, int first, int n, double now) noexcept
