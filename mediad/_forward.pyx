# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The forwarding core: SRTP in, per-subscriber rewrite and re-protect, fanned out.

Per received batch, with no Python object created: recvmmsg -> demultiplex by first byte
(RFC 7983) -> look up the track by SSRC -> SRTP unprotect with the endpoint's inbound
session -> for every subscription of the track: copy, rewrite sequence number, timestamp
and SSRC, SRTP protect with the subscriber endpoint's outbound session -> sendmmsg from
the subscriber endpoint's socket. A route may carry options of its receiver (a browser's
negotiated numbers: payload type, no header extensions, an RFC 4588 RTX stream, forwarding
only from a key frame); a route without them pays one test of a flag for each.

Endpoint, Track and Subscription are owned here; the control side changes them only
through the methods declared in _forward.pyi. Everything runs on one event loop thread,
so the flat arrays the per-packet loop reads are rebuilt on change and never locked.
libsrtp is called through C function pointers exported by pylibsrtp's cffi module
(its wheel links libsrtp 2.7 with OpenSSL), not through Python.
"""
import asyncio as _asyncio
import secrets as _secrets
import socket as _socket

from cpython.ref cimport Py_DECREF, Py_XINCREF, PyObject
from libc.stdint cimport int8_t, int16_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from mediad._net cimport (
    AF_INET, CLOCK_MONOTONIC, EINTR, MSG_DONTWAIT, MSG_TRUNC, clock_seconds, errno, htons, iovec, load16, load32,
    mmsghdr, ntohs, recvmmsg, sendmmsg, sendto, sockaddr_in, srtp_call, store16, store32,
)

from mediad import srtp as _srtp


# libsrtp 2.x srtp_err_status_t values the hot path tells apart.
cdef enum:
    SRTP_OK = 0
    SRTP_BAD_PARAM = 2
    SRTP_AUTH_FAIL = 7
    SRTP_REPLAY_FAIL = 9
    SRTP_REPLAY_OLD = 10
    SRTP_PARSE_ERR = 21

cdef enum:
    # Room for a datagram: a 1500-byte MTU with margin; larger ones are dropped as oversize.
    RX_SLOT = 2048
    # Protect appends at most SRTP_MAX_TRAILER_LEN (16-byte tag + 128-byte MKI) bytes.
    TX_SLOT = RX_SLOT + 160
    MAX_BATCH = 256
    # Batches read per wake-up before yielding to other sockets, so one busy endpoint
    # cannot stall the rest (the loop is level-triggered and calls again).
    ROUNDS_PER_WAKEUP = 4
    RTP_HEADER = 12
    RTCP_HEADER = 8
    SRTCP_INDEX = 4
    # RFC 3550 appendix A.1: a forward jump beyond this is a restart, not loss.
    MAX_DROPOUT = 3000
    # A slot of the retransmission cache: a packet of a 1500-byte MTU; larger ones are
    # not cached.
    CACHE_SLOT = 1500
    MAX_CACHE_PACKETS = 4096

# STUN and DTLS reach Python at most at this rate per endpoint (a token bucket): a check
# every few hundred ms and a handshake's few flights fit easily; a flood is cut off in C.
cdef double HANDSHAKE_RATE = 100.0
cdef double HANDSHAKE_BURST = 200.0

DROP_REASONS = (
    "too_short", "oversize", "bad_version", "stun", "dtls", "malformed",
    "unknown_ssrc", "auth_failed", "replayed", "srtp_error", "not_keyed", "handshake_flood",
)

# Authentication tag lengths per suite, (SRTP, SRTCP): what a packet needs beyond its
# header. SRTCP keeps the 80-bit tag under AES_CM_128_HMAC_SHA1_32 (RFC 4568 6.2.1).
_TAG_LENGTHS = {
    _srtp.SrtpSuite.AES_CM_128_HMAC_SHA1_80: (10, 10),
    _srtp.SrtpSuite.AES_CM_128_HMAC_SHA1_32: (4, 10),
    _srtp.SrtpSuite.AEAD_AES_128_GCM: (16, 16),
}

cdef srtp_call _srtp_protect = <srtp_call><uintptr_t>_srtp.function_pointer("srtp_protect")
cdef srtp_call _srtp_unprotect = <srtp_call><uintptr_t>_srtp.function_pointer("srtp_unprotect")
cdef srtp_call _srtp_protect_rtcp = <srtp_call><uintptr_t>_srtp.function_pointer("srtp_protect_rtcp")
cdef srtp_call _srtp_unprotect_rtcp = <srtp_call><uintptr_t>_srtp.function_pointer("srtp_unprotect_rtcp")


# --- sequence and timestamp rewrite -------------------------------------------------------

cdef inline bint _rewrite(RewriteState *s, uint32_t source, uint16_t seq, uint32_t ts,
                          double now, uint32_t clock_rate,
                          uint16_t *out_seq, uint32_t *out_ts) noexcept nogil:
    """Map one packet; 0 when it must not be sent (paused, or older than the mapping)."""
    cdef int16_t delta
    cdef double ticks
    cdef uint32_t step
    if s.paused:
        return 0
    if not s.started:
        s.started = 1
        s.resync = 0
        s.source = source
        s.max_in = seq
        s.epoch_start = seq
        s.seq_offset = 0
        s.ts_offset = 0
    else:
        delta = <int16_t><uint16_t>(seq - s.max_in)
        if s.resync or source != s.source or delta > MAX_DROPOUT:
            # Rebase: continue right after the last packet sent, timestamp advanced by
            # the wall time since then, so receivers see one continuous stream.
            s.seq_offset = <uint16_t>(s.last_out_seq + 1 - seq)
            step = 1
            ticks = (now - s.last_time) * clock_rate
            if ticks >= 1.0:
                step = <uint32_t><uint64_t>ticks
            s.ts_offset = <uint32_t>(s.last_out_ts + step - ts)
            s.resync = 0
            s.source = source
            s.max_in = seq
            s.epoch_start = seq
        elif delta > 0:
            s.max_in = seq
        else:
            # Late or reordered: same mapping, unless it predates the current one, where
            # its number could collide with one already sent.
            if <int16_t><uint16_t>(seq - s.epoch_start) < 0:
                return 0
            out_seq[0] = <uint16_t>(seq + s.seq_offset)
            out_ts[0] = <uint32_t>(ts + s.ts_offset)
            return 1
    out_seq[0] = <uint16_t>(seq + s.seq_offset)
    out_ts[0] = <uint32_t>(ts + s.ts_offset)
    s.last_out_seq = out_seq[0]
    s.last_out_ts = out_ts[0]
    s.last_time = now
    return 1


cdef class Rewriter:
    """The per-subscription sequence/timestamp rewrite, exposed for table-driven tests."""

    def __init__(self, uint32_t ssrc=0):
        memset(&self.state, 0, sizeof(RewriteState))
        self.ssrc = ssrc

    def rewrite(self, uint32_t source, uint16_t seq, uint32_t timestamp, double now,
                uint32_t clock_rate=90000):
        cdef uint16_t out_seq
        cdef uint32_t out_ts
        if _rewrite(&self.state, source, seq, timestamp, now, clock_rate, &out_seq, &out_ts):
            return (out_seq, out_ts)
        return None

    def pause(self):
        self.state.paused = 1

    def resume(self):
        if self.state.paused:
            self.state.paused = 0
            self.state.resync = 1


# --- key frames -----------------------------------------------------------------------------
# A receiver can decode from a key frame on: a route that waits for one reads the codec's
# payload header of the decrypted packet, in C, at most once per packet (Forwarder.rx_key).

_CODECS = {"VP8": CODEC_VP8, "VP9": CODEC_VP9, "H264": CODEC_H264}


cdef int _payload_start(const uint8_t *p, int length, int *end) noexcept nogil:
    """Offset of the payload of a plaintext RTP packet, its end (padding excluded) in
    end[0]; -1 when the header does not fit the packet."""
    cdef int start, padding
    if length < RTP_HEADER:
        return -1
    start = RTP_HEADER + 4 * (p[0] & 0x0f)
    if p[0] & 0x10:
        if start + 4 > length:
            return -1
        start += 4 + 4 * load16(p + start + 2)
    if start > length:
        return -1
    end[0] = length
    if p[0] & 0x20:
        padding = p[length - 1] if length > start else 0
        if padding == 0 or start + padding > length:
            return -1
        end[0] = length - padding
    return start


cdef bint _vp8_key_frame(const uint8_t *d, int n) noexcept nogil:
    # RFC 7741 4.2: the payload descriptor X|R|N|S|R|PID, its extensions (I: a 7 or 15-bit
    # PictureID, L: TL0PICIDX, T or K: TID|Y|KEYIDX); at the start of partition 0 (S=1,
    # PID=0) comes the VP8 payload header, whose P bit (bit 0) is 0 in a key frame (4.3).
    cdef int i = 1
    cdef uint8_t x
    if n < 1 or not d[0] & 0x10 or d[0] & 0x07:
        return 0
    if d[0] & 0x80:
        if n < 2:
            return 0
        x = d[1]
        i = 2
        if x & 0x80:
            if i >= n:
                return 0
            i += 2 if d[i] & 0x80 else 1
        if x & 0x40:
            i += 1
        if x & 0x30:
            i += 1
    return i < n and not d[i] & 0x01


cdef bint _vp9_key_frame(const uint8_t *d, int n) noexcept nogil:
    # RFC 9628 4.2: the descriptor I|P|L|F|B|E|V|Z; a key frame starts with B (start of a
    # frame) set and P (inter-picture predicted) clear, in spatial layer 0: with L, the
    # layer indices TID|U|SID|D follow the PictureID (I: 7 or 15 bits).
    cdef int i = 1
    if n < 1 or not d[0] & 0x08 or d[0] & 0x40:
        return 0
    if d[0] & 0x20:
        if d[0] & 0x80:
            if i >= n:
                return 0
            i += 2 if d[i] & 0x80 else 1
        if i >= n or (d[i] >> 1) & 0x07:
            return 0
    return 1


cdef inline bint _h264_key_nal(uint8_t header) noexcept nogil:
    # An IDR slice (5) or a sequence parameter set (7), which opens a key frame.
    return (header & 0x1f) == 5 or (header & 0x1f) == 7


cdef bint _h264_key_frame(const uint8_t *d, int n) noexcept nogil:
    # RFC 6184 5.2: a single NAL unit (types 1-23), an aggregation (STAP-A, 24, 5.7.1:
    # 16-bit sizes each before a NAL unit) or a fragment (FU-A, 28, 5.8: the FU header's
    # S bit starts the NAL unit, its type is the fragmented unit's).
    cdef int t, i, size
    if n < 1:
        return 0
    t = d[0] & 0x1f
    if t == 24:
        i = 1
        while i + 2 < n:
            size = load16(d + i)
            if size == 0 or i + 2 + size > n:
                return 0
            if _h264_key_nal(d[i + 2]):
                return 1
            i += 2 + size
        return 0
    if t == 28:
        return n >= 2 and d[1] & 0x80 and _h264_key_nal(d[1])
    return _h264_key_nal(d[0])


cdef bint _key_frame(int codec, const uint8_t *p, int length) noexcept nogil:
    """Whether a plaintext RTP packet starts a key frame of `codec` (CODEC_*)."""
    cdef int end
    cdef int start = _payload_start(p, length, &end)
    if start < 0:
        return 0
    if codec == CODEC_VP8:
        return _vp8_key_frame(p + start, end - start)
    if codec == CODEC_VP9:
        return _vp9_key_frame(p + start, end - start)
    if codec == CODEC_H264:
        return _h264_key_frame(p + start, end - start)
    return 0


def is_key_frame(str codec not None, bytes packet not None):
    """Whether a plaintext RTP packet of `codec` starts a key frame, as a route that waits for
    one decides; exposed for table-driven tests."""
    return bool(_key_frame(_CODECS.get(codec.upper(), CODEC_OTHER), <const uint8_t *><const char *>packet,
                           <int>len(packet)))


# --- per-route copies -------------------------------------------------------------------------

cdef int _route_copy(Subscription sub, uint8_t *out, const uint8_t *src, int length) noexcept:
    """Copy a plaintext packet for a route with options: with its payload type, without its
    header extension (RFC 8285: the block after the CSRCs, one-byte or two-byte). The new
    length, or -1 when the header does not fit the packet (never after Forwarder._accept,
    which drops such packets as malformed)."""
    cdef int start, size
    if sub.strip_extensions and src[0] & 0x10:
        start = RTP_HEADER + 4 * (src[0] & 0x0f)
        if start + 4 > length:
            return -1
        size = 4 + 4 * load16(src + start + 2)
        if start + size > length or (src[0] & 0x20 and start + size + src[length - 1] > length):
            return -1
        memcpy(out, src, start)
        memcpy(out + start, src + start + size, length - start - size)
        out[0] = src[0] & 0xEF
        length -= size
    else:
        memcpy(out, src, length)
    if sub.payload_type >= 0:
        out[1] = (src[1] & 0x80) | sub.payload_type
    return length


cdef inline int _protect_for(Subscription sub, uint8_t *out, const uint8_t *src, int length, uint16_t seq,
                             uint32_t ts) noexcept:
    """`src` as the route sends it, into `out`: its numbers, its options, protected with its
    target's key; the length, or -1 (counted in send_errors)."""
    if sub.transform:
        length = _route_copy(sub, out, src, length)
        if length < 0:
            sub.send_errors += 1
            return -1
    else:
        memcpy(out, src, length)
    store16(out + 2, seq)
    store32(out + 4, ts)
    store32(out + 8, sub._ssrc)
    if _srtp_protect(sub._target.tx_ctx, out, &length) != SRTP_OK:
        sub.send_errors += 1
        return -1
    return length


cdef int _rtx_copy(Subscription sub, uint8_t *out, const uint8_t *src, int length, uint16_t osn) noexcept:
    """An RFC 4588 (4) retransmission of a plaintext packet: its header (CSRCs, and its
    extension unless the route strips it), the RTX payload type with its marker bit, the
    original sequence number `osn` before its payload, no padding. Sequence number,
    timestamp and SSRC are the caller's to set. The new length, or -1 as _route_copy."""
    cdef int header = RTP_HEADER + 4 * (src[0] & 0x0f)
    cdef int extension = 0, end = length, keep, size
    if header > length:
        return -1
    if src[0] & 0x10:
        if header + 4 > length:
            return -1
        extension = 4 + 4 * load16(src + header + 2)
        if header + extension > length:
            return -1
    if src[0] & 0x20:
        if length == header + extension or src[length - 1] == 0 or header + extension + src[length - 1] > length:
            return -1
        end = length - src[length - 1]
    keep = header if sub.strip_extensions else header + extension
    size = end - header - extension
    memcpy(out, src, keep)
    store16(out + keep, osn)
    memcpy(out + keep + 2, src + header + extension, size)
    out[0] = src[0] & (0xCF if sub.strip_extensions else 0xDF)
    out[1] = (src[1] & 0x80) | sub.rtx_payload_type
    return keep + 2 + size


# --- counters -------------------------------------------------------------------------------

cdef class Counters:
    """Packet counters, read as typed attributes; `drops` lines up with DROP_REASONS."""

    def __cinit__(self):
        memset(self.drop_counts, 0, sizeof(self.drop_counts))

    @property
    def drops(self):
        cdef int i
        return tuple([self.drop_counts[i] for i in range(<int>N_DROP_REASONS)])

    def dropped(self, str reason):
        """The count of one drop reason (a name in DROP_REASONS)."""
        return self.drop_counts[DROP_REASONS.index(reason)]

    cdef void add(self, Counters other) noexcept:
        cdef int i
        self.packets_in += other.packets_in
        self.bytes_in += other.bytes_in
        self.packets_out += other.packets_out
        self.bytes_out += other.bytes_out
        self.rtcp_in += other.rtcp_in
        self.rtcp_out += other.rtcp_out
        self.rtcp_errors += other.rtcp_errors
        self.handshakes_in += other.handshakes_in
        self.handshake_errors += other.handshake_errors
        for i in range(<int>N_DROP_REASONS):
            self.drop_counts[i] += other.drop_counts[i]

    def __repr__(self):
        return (f"<Counters in={self.packets_in} out={self.packets_out} rtcp_in={self.rtcp_in} "
                f"rtcp_out={self.rtcp_out} dropped={sum(self.drops)}>")


# --- media objects -------------------------------------------------------------------------

cdef str _format_address(sockaddr_in *addr):
    cdef uint32_t a = addr.sin_addr.s_addr  # network order in memory
    cdef const uint8_t *b = <const uint8_t *>&a
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


cdef void _parse_address(object address, sockaddr_in *out) except *:
    host, port = address
    packed = _socket.inet_aton(_socket.gethostbyname(host))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    memset(out, 0, sizeof(sockaddr_in))
    out.sin_family = AF_INET
    out.sin_port = htons(port)
    memcpy(&out.sin_addr, <const char *>packed, 4)


cdef class Subscription:
    """A track routed to another endpoint with its own SSRC: the consumer side."""

    def __cinit__(self):
        memset(&self.rw, 0, sizeof(RewriteState))
        self.payload_type = -1

    @property
    def ssrc(self):
        return self._ssrc

    @property
    def track(self):
        return self._track

    @property
    def target(self):
        return self._target

    @property
    def paused(self):
        return bool(self.rw.paused)

    @property
    def active(self):
        return bool(self._active)

    @property
    def payload_type(self):
        return None if self.payload_type < 0 else self.payload_type

    @property
    def wait_for_key_frame(self):
        return bool(self.wait_key_frame)

    @property
    def waiting_for_key_frame(self):
        return self.waiting == WAIT_KEY_FRAME

    @property
    def replaying(self):
        """True while the route is sent the key-frame cache (start_replay)."""
        return self.waiting == WAIT_REPLAY

    def pause(self):
        self.rw.paused = 1

    def resume(self):
        if self.rw.paused:
            self.rw.paused = 0
            self.rw.resync = 1
            # What it missed while paused was lost: the receiver needs a key frame again.
            if self.wait_key_frame:
                self._arm()

    def skip_to_key_frame(self):
        """Forward nothing more until a packet that starts a key frame."""
        return bool(self._arm())

    cdef bint _arm(self) noexcept:
        if self._track.codec_id == CODEC_OTHER:
            return 0
        self.waiting = WAIT_KEY_FRAME
        # The key frame starts a new mapping that continues the outgoing numbers without a
        # gap: the receiver has nothing to ask again for what was skipped.
        if self.rw.started:
            self.rw.resync = 1
        return 1

    def start_replay(self):
        """Fast start: a route waiting for a key frame starts from the latest one in its
        track's cache instead (its publisher ignored the request), sent with replay() with
        the route's own numbers; live packets wait in the cache meanwhile. False, changing
        nothing, when it does not wait or the cache holds no whole key frame."""
        cdef Track track = self._track
        cdef Endpoint target = self._target
        cdef int k
        if (self.waiting != WAIT_KEY_FRAME or not self._active or self.rw.paused or not track.key_valid
                or track.key_source != track.source or not target.has_remote or target.tx_ctx == NULL):
            return False
        k = track.key_seq % track.cache_packets
        if track.cache_len[k] == 0 or track.cache_seq[k] != track.key_seq or track.cache_source[k] != track.source:
            return False
        self.waiting = WAIT_REPLAY
        self.replay_next = track.key_seq
        if self.rw.started:
            self.rw.resync = 1  # the numbers go on without a gap from the key frame
        return True

    def replay(self, int most):
        """Send up to `most` packets of the replay, oldest first: how many are left (0: it
        caught up with the live stream and forwards it again), or -1 when the cache moved on
        past it (then it waits for the next key frame, as before the replay)."""
        cdef Track track = self._track
        cdef int k, sent = 0
        cdef int16_t left
        cdef uint16_t seq
        cdef double now = clock_seconds(CLOCK_MONOTONIC)
        if self.waiting != WAIT_REPLAY:
            return 0
        if not self._active or self.rw.paused or track.source != track.key_source:
            self._arm()
            return -1
        while True:
            left = <int16_t><uint16_t>(track.rx.max_seq - self.replay_next + 1)
            if left <= 0:
                self.waiting = WAIT_NONE
                return 0
            if sent >= most:
                return left
            seq = self.replay_next
            k = seq % track.cache_packets
            if track.cache_len[k] == 0 or track.cache_seq[k] != seq or track.cache_source[k] != track.source:
                if track.cache_len[k] and <int16_t><uint16_t>(track.cache_seq[k] - seq) > 0:
                    self._arm()  # overwritten by a newer packet: the replay fell behind
                    return -1
                self.replay_next += 1  # never received (lost): the receiver may ask again
                continue
            if self._send_cached(track.cache + k * CACHE_SLOT, track.cache_len[k], now):
                sent += 1
            self.replay_next += 1

    cdef bint _send_cached(self, const uint8_t *src, int length, double now) noexcept:
        """One packet of the cache, mapped, protected and sent as the live path would."""
        cdef Endpoint target = self._target
        cdef uint8_t out[TX_SLOT]
        cdef uint16_t seq
        cdef uint32_t ts
        if not target.has_remote or target.tx_ctx == NULL:
            self.dropped_no_remote += 1
            return 0
        if not _take_budget(target):
            self.dropped_unproven += 1
            return 0
        if not _rewrite(&self.rw, self._track.source, load16(src + 2), load32(src + 4), now,
                        self._track._clock_rate, &seq, &ts):
            self.dropped_stale += 1
            return 0
        length = _protect_for(self, out, src, length, seq, ts)
        if length < 0:
            return 0
        if sendto(target.fd, out, length, MSG_DONTWAIT, &target.remote_addr, sizeof(sockaddr_in)) != length:
            self.send_errors += 1
            return 0
        self.packets += 1
        self.bytes += length
        self.replayed += 1
        self.last_activity = now
        target.counters.packets_out += 1
        target.counters.bytes_out += length
        return 1

    def retransmit(self, int sequence):
        """Send again the packet this subscription sent with outgoing sequence number
        `sequence` (a NACK, RFC 4585 6.2.1), from the track's plaintext cache, protected
        afresh with the target's key; with an RTX stream, as an RFC 4588 packet of it.
        False when it is not in the cache (any more)."""
        cdef Track track = self._track
        cdef Endpoint target = self._target
        cdef uint16_t out_seq = <uint16_t>sequence
        cdef uint16_t in_seq
        cdef int k, length
        cdef const uint8_t *src
        cdef uint32_t ts
        cdef uint8_t out[TX_SLOT]
        if not 0 <= sequence <= 0xFFFF:
            raise ValueError(f"an RTP sequence number is in 0..65535, got {sequence}")
        if (not self._active or not self.rw.started or track.cache_packets == 0
                or not target.has_remote or target.tx_ctx == NULL):
            self.retransmit_misses += 1
            return False
        if not _take_budget(target):
            self.dropped_unproven += 1
            return False
        in_seq = <uint16_t>(out_seq - self.rw.seq_offset)
        k = in_seq % track.cache_packets
        # Only packets of the current mapping that were already forwarded map back.
        if (<int16_t><uint16_t>(in_seq - self.rw.epoch_start) < 0
                or <int16_t><uint16_t>(in_seq - self.rw.max_in) > 0
                or track.cache_len[k] == 0 or track.cache_seq[k] != in_seq
                or track.cache_source[k] != self.rw.source):
            self.retransmit_misses += 1
            return False
        length = track.cache_len[k]
        src = track.cache + k * CACHE_SLOT
        ts = <uint32_t>(load32(src + 4) + self.rw.ts_offset)
        if self.rtx_ssrc:
            length = _rtx_copy(self, out, src, length, out_seq)
            store16(out + 2, self.rtx_seq)
            store32(out + 8, self.rtx_ssrc)
        elif self.transform:
            length = _route_copy(self, out, src, length)
            store16(out + 2, out_seq)
            store32(out + 8, self._ssrc)
        else:
            memcpy(out, src, length)
            store16(out + 2, out_seq)
            store32(out + 8, self._ssrc)
        store32(out + 4, ts)
        if length < 0 or _srtp_protect(target.tx_ctx, out, &length) != SRTP_OK:
            self.send_errors += 1
            return False
        if self.rtx_ssrc:
            # The RTX stream's own sequence (RFC 4588 4): one number per packet protected.
            self.rtx_seq += 1
        if sendto(target.fd, out, length, MSG_DONTWAIT, &target.remote_addr, sizeof(sockaddr_in)) != length:
            self.send_errors += 1
            return False
        self.retransmitted += 1
        if self.rtx_ssrc:
            self.rtx_sent += 1
        target.counters.packets_out += 1
        target.counters.bytes_out += length
        return True

    def source_sequence(self, int sequence):
        """The publisher's sequence number of what this route sent, or would have sent, as
        `sequence` in its current mapping (to pass on a NACK the cache cannot answer); None
        outside it, or before the first packet."""
        cdef uint16_t in_seq
        if not 0 <= sequence <= 0xFFFF:
            raise ValueError(f"an RTP sequence number is in 0..65535, got {sequence}")
        if not self.rw.started:
            return None
        in_seq = <uint16_t>(<uint16_t>sequence - self.rw.seq_offset)
        if (<int16_t><uint16_t>(in_seq - self.rw.epoch_start) < 0
                or <int16_t><uint16_t>(in_seq - self.rw.max_in) > 0):
            return None
        return in_seq

    def map_timestamp(self, uint32_t timestamp):
        """The outgoing RTP timestamp for a publisher's one (for sender reports), or None
        before the first packet was forwarded."""
        if not self.rw.started:
            return None
        return <uint32_t>(timestamp + self.rw.ts_offset)

    @property
    def last_seq(self):
        """The last outgoing sequence number, None before the first packet."""
        return self.rw.last_out_seq if self.rw.started else None

    @property
    def last_timestamp(self):
        return self.rw.last_out_ts if self.rw.started else None

    def __repr__(self):
        return f"<Subscription ssrc={self._ssrc:#010x} active={bool(self._active)}>"


cdef enum:
    # RFC 3550 A.1: a sequence number this far behind the highest is late or repeated.
    MAX_MISORDER = 100


cdef inline void _receive(ReceptionState *rx, uint16_t seq, uint32_t timestamp, double now, uint32_t clock_rate,
                          uint64_t packets) noexcept:
    """Reception statistics of one packet of a track (RFC 3550 A.1 sequence, A.8 jitter);
    `packets` counts it already."""
    cdef uint16_t delta
    cdef int32_t transit, d
    if not rx.started or rx.bad_seq == seq:
        # The first packet, or a second one confirming a jump: the publisher restarted.
        rx.started = 1
        rx.max_seq = seq
        rx.cycles = 0
        rx.base_seq = seq
        rx.bad_seq = 0x10000
        rx.base_packets = packets - 1
        rx.transit = <int32_t>(<uint32_t><uint64_t>(now * clock_rate) - timestamp)
        return
    delta = seq - rx.max_seq
    if delta < MAX_DROPOUT:
        if seq < rx.max_seq:
            rx.cycles += 0x10000
        rx.max_seq = seq
        rx.bad_seq = 0x10000
    elif delta <= 0x10000 - MAX_MISORDER:
        rx.bad_seq = <uint16_t>(seq + 1)  # a jump: wait for the next one to tell
        return
    # else late or repeated: counts, changes nothing of the order
    transit = <int32_t>(<uint32_t><uint64_t>(now * clock_rate) - timestamp)
    d = transit - rx.transit
    rx.transit = transit
    rx.jitter += ((d if d >= 0 else -d) - rx.jitter) / 16.0


cdef class Track:
    """An inbound stream of an endpoint, by SSRC: the producer side."""

    def __dealloc__(self):
        free(self.subs)
        free(self.cache)
        free(self.cache_len)
        free(self.cache_seq)
        free(self.cache_source)

    cdef void _allocate_cache(self, int packets) except *:
        if packets == 0:
            return
        self.cache = <uint8_t *>malloc(<size_t>packets * CACHE_SLOT)
        self.cache_len = <int *>calloc(packets, sizeof(int))
        self.cache_seq = <uint16_t *>calloc(packets, sizeof(uint16_t))
        self.cache_source = <uint32_t *>calloc(packets, sizeof(uint32_t))
        if self.cache == NULL or self.cache_len == NULL or self.cache_seq == NULL or self.cache_source == NULL:
            raise MemoryError()
        self.cache_packets = packets

    @property
    def cache_packets(self):
        return self.cache_packets

    @property
    def highest_seq(self):
        if not self.rx.started:
            return None
        return (self.rx.cycles + self.rx.max_seq) & 0xFFFFFFFF

    @property
    def expected(self):
        if not self.rx.started:
            return 0
        return self.rx.cycles + self.rx.max_seq - self.rx.base_seq + 1

    @property
    def received(self):
        return self.packets - self.rx.base_packets if self.rx.started else 0

    @property
    def jitter(self):
        return int(self.rx.jitter)

    @property
    def ssrc(self):
        return self._ssrc

    @property
    def clock_rate(self):
        return self._clock_rate

    @property
    def kind(self):
        return self._kind

    @property
    def codec(self):
        return self._codec

    @property
    def name(self):
        return self._name

    @property
    def endpoint(self):
        return self._endpoint

    @property
    def subscriptions(self):
        return list(self._subscriptions)

    cdef void _rebuild(self) except *:
        cdef int n = len(self._subscriptions)
        cdef PyObject **flat = <PyObject **>malloc(max(n, 1) * sizeof(PyObject *))
        if flat == NULL:
            raise MemoryError()
        for i in range(n):
            flat[i] = <PyObject *>self._subscriptions[i]
        free(self.subs)
        self.subs = flat
        self.n_subs = n

    def set_ssrc(self, ssrc):
        cdef uint32_t value = _check_ssrc(ssrc)
        if value == self._ssrc:
            return
        if self._endpoint._find_track(value) is not None:
            raise ValueError(f"endpoint {self._endpoint._name!r} already has a track with SSRC {value}")
        self._ssrc = value
        self.source += 1
        self.rx.started = 0  # a new stream: its reception statistics start again
        self._endpoint._rebuild_tracks()

    def subscribe(self, Endpoint target not None, ssrc, *, paused=False, payload_type=None,
                  strip_extensions=False, rtx_ssrc=0, rtx_payload_type=0, wait_for_key_frame=False):
        cdef uint32_t value = _check_ssrc(ssrc)
        cdef uint32_t rtx = _check_ssrc(rtx_ssrc)
        cdef Subscription sub
        if self._endpoint is None:
            raise ValueError("track was removed")
        if target._closed:
            raise ValueError(f"endpoint {target._name!r} is closed")
        if target is self._endpoint:
            raise ValueError("an endpoint cannot subscribe to its own track")
        if payload_type is not None:
            _check_payload_type("payload_type", payload_type)
        _check_payload_type("rtx_payload_type", rtx_payload_type)
        if rtx and rtx == value:
            raise ValueError("rtx_ssrc must differ from ssrc")
        for other in target._subscriptions:
            sub = <Subscription>other
            if sub._track is self:
                raise ValueError(f"endpoint {target._name!r} already receives this track")
            if sub._ssrc == value or (sub.rtx_ssrc and sub.rtx_ssrc == value):
                raise ValueError(f"endpoint {target._name!r} already sends SSRC {value}")
            if rtx and (sub._ssrc == rtx or sub.rtx_ssrc == rtx):
                raise ValueError(f"endpoint {target._name!r} already sends SSRC {rtx}")
        sub = Subscription.__new__(Subscription)
        sub._track = self
        sub._target = target
        sub._ssrc = value
        sub._active = 1
        sub.rw.paused = 1 if paused else 0
        sub.payload_type = -1 if payload_type is None else payload_type
        sub.strip_extensions = 1 if strip_extensions else 0
        sub.transform = sub.payload_type >= 0 or sub.strip_extensions
        sub.rtx_ssrc = rtx
        sub.rtx_payload_type = rtx_payload_type
        # RFC 3550 5.1: a random initial sequence number, for the RTX stream too.
        sub.rtx_seq = _secrets.randbits(16)
        sub.wait_key_frame = 1 if wait_for_key_frame else 0
        if sub.wait_key_frame:
            sub._arm()
        self._subscriptions.append(sub)
        target._subscriptions.append(sub)
        self._rebuild()
        return sub

    def unsubscribe(self, Subscription subscription not None):
        if subscription._track is not self or not subscription._active:
            return
        self._subscriptions.remove(subscription)
        self._rebuild()
        subscription._target._subscriptions.remove(subscription)
        subscription._active = 0

    def find_subscription(self, Endpoint target not None):
        """The subscription sending this track to `target`, or None."""
        for sub in self._subscriptions:
            if (<Subscription>sub)._target is target:
                return sub
        return None

    def __repr__(self):
        return f"<Track {self._name!r} ssrc={self._ssrc:#010x} subscriptions={len(self._subscriptions)}>"


cdef uint32_t _check_ssrc(object ssrc) except? 0:
    if not isinstance(ssrc, int) or not 0 <= ssrc <= 0xFFFFFFFF:
        raise ValueError(f"SSRC must be an integer in 0..4294967295, got {ssrc!r}")
    return ssrc


cdef void _check_payload_type(str name, object value) except *:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 127:
        raise ValueError(f"{name} must be an RTP payload type in 0..127, got {value!r}")


cdef class Endpoint:
    """One UDP socket of a participant: its inbound tracks and the SRTP sessions of both
    directions. RTP and RTCP share the port (RFC 5761)."""

    def __cinit__(self):
        self.counters = Counters()

    def __dealloc__(self):
        free(self.track_ssrcs)
        free(self.track_ptrs)

    @property
    def name(self):
        return self._name

    @property
    def local_address(self):
        return self._sock.getsockname()[:2] if not self._closed else None

    @property
    def remote(self):
        if not self.has_remote:
            return None
        return (_format_address(&self.remote_addr), ntohs(self.remote_addr.sin_port))

    @property
    def latching(self):
        return bool(self._latching)

    @property
    def closed(self):
        return bool(self._closed)

    @property
    def tracks(self):
        return list(self._tracks)

    @property
    def subscriptions(self):
        return list(self._subscriptions)

    def set_remote(self, remote, *, latch=True):
        if remote is None:
            self.has_remote = 0
            self._latching = 1 if latch else 0
        else:
            _parse_address(remote, &self.remote_addr)
            self.has_remote = 1
            self._latching = 0

    def require_proof(self, int budget):
        """Send the remote at most `budget` packets (RTP, RTCP and retransmissions) until
        a packet that authenticates with this endpoint's key arrives from its address: only
        a receiver that sends shows it wants the media. A latched remote has proven itself."""
        if budget < 0:
            raise ValueError(f"the budget is a number of packets, 0 or more, got {budget}")
        self.unproven = 1
        self.budget = budget

    @property
    def proven(self):
        """False while the remote has not sent a packet that authenticated (require_proof)."""
        return not self.unproven

    @property
    def budget_left(self):
        """Packets it may still be sent before it proves itself; None once it has."""
        return self.budget if self.unproven else None

    def set_keys(self, *, rx_suite, rx_key, tx_suite, tx_key):
        rx_suite = _srtp.SrtpSuite.parse(rx_suite)
        tx_suite = _srtp.SrtpSuite.parse(tx_suite)
        rx = _srtp.create_session(rx_suite, rx_key, inbound=True)
        tx = _srtp.create_session(tx_suite, tx_key, inbound=False)
        # Packets never run between these statements: the loop is single-threaded.
        self._rx_session = rx
        self._tx_session = tx
        self.rx_ctx = <void *><uintptr_t>_srtp.session_pointer(rx)
        self.tx_ctx = <void *><uintptr_t>_srtp.session_pointer(tx)
        self.rx_tag_len, self.rx_rtcp_tag_len = _TAG_LENGTHS[rx_suite]

    @property
    def keyed(self):
        """False until SRTP keys are installed (a DTLS-SRTP endpoint before its handshake)."""
        return self.rx_ctx != NULL

    @property
    def handshakes(self):
        """True when its STUN and DTLS go to the forwarder's handshake handler."""
        return bool(self._handshakes)

    def send_datagram(self, bytes data not None, address):
        """Send `data` as it is (a STUN answer, a DTLS record) to `address` from this
        endpoint's socket; False when the socket refuses it."""
        cdef sockaddr_in to
        cdef Py_ssize_t length = len(data)
        if self._closed:
            return False
        _parse_address(address, &to)
        return sendto(self.fd, <const char *>data, length, MSG_DONTWAIT, &to, sizeof(sockaddr_in)) == length

    cdef object _find_track(self, uint32_t ssrc):
        for track in self._tracks:
            if (<Track>track)._ssrc == ssrc:
                return track
        return None

    cdef void _rebuild_tracks(self) except *:
        cdef int n = len(self._tracks)
        cdef uint32_t *ssrcs = <uint32_t *>malloc(max(n, 1) * sizeof(uint32_t))
        cdef PyObject **ptrs = <PyObject **>malloc(max(n, 1) * sizeof(PyObject *))
        if ssrcs == NULL or ptrs == NULL:
            free(ssrcs)
            free(ptrs)
            raise MemoryError()
        for i in range(n):
            ssrcs[i] = (<Track>self._tracks[i])._ssrc
            ptrs[i] = <PyObject *>self._tracks[i]
        free(self.track_ssrcs)
        free(self.track_ptrs)
        self.track_ssrcs = ssrcs
        self.track_ptrs = ptrs
        self.n_tracks = n

    def add_track(self, ssrc, *, clock_rate=90000, kind="video", name="", int cache_packets=0, description=None,
                  codec=""):
        cdef uint32_t value = _check_ssrc(ssrc)
        cdef Track track
        if self._closed:
            raise ValueError(f"endpoint {self._name!r} is closed")
        if not 0 <= cache_packets <= MAX_CACHE_PACKETS:
            raise ValueError(f"cache_packets must be in 0..{MAX_CACHE_PACKETS}, got {cache_packets}")
        if not isinstance(clock_rate, int) or not 0 < clock_rate <= 1_000_000:
            raise ValueError(f"clock_rate must be a positive integer in Hz, got {clock_rate!r}")
        if self._find_track(value) is not None:
            raise ValueError(f"endpoint {self._name!r} already has a track with SSRC {value}")
        track = Track.__new__(Track)
        track._endpoint = self
        track._ssrc = value
        track._clock_rate = clock_rate
        track._kind = str(kind)
        track._name = str(name)
        track._codec = str(codec)
        track.codec_id = _CODECS.get(track._codec.upper(), CODEC_OTHER)
        track.description = description
        track._subscriptions = []
        track._rebuild()
        track._allocate_cache(cache_packets)
        self._tracks.append(track)
        self._rebuild_tracks()
        return track

    def remove_track(self, Track track not None):
        if track._endpoint is not self:
            return
        for sub in list(track._subscriptions):
            track.unsubscribe(sub)
        self._tracks.remove(track)
        self._rebuild_tracks()
        track._endpoint = None

    def find_track(self, ssrc):
        """Its inbound track with this SSRC, or None."""
        return self._find_track(_check_ssrc(ssrc))

    def find_subscription(self, ssrc):
        """The subscription that sends to this endpoint with this SSRC, or None."""
        cdef uint32_t value = _check_ssrc(ssrc)
        for sub in self._subscriptions:
            if (<Subscription>sub)._ssrc == value:
                return sub
        return None

    def close(self):
        if self._closed:
            return
        self._closed = 1
        try:
            self._forwarder._loop.remove_reader(self.fd)
        except Exception:  # the loop may already be closed at shutdown
            pass
        for track in list(self._tracks):
            self.remove_track(track)
        for sub in list(self._subscriptions):
            (<Subscription>sub)._track.unsubscribe(sub)
        self._sock.close()
        self.fd = -1
        self._forwarder._endpoints.remove(self)
        # Forwarder totals keep counting what closed endpoints did.
        self._forwarder._retired.add(self.counters)

    def send_rtcp(self, bytes packet not None):
        """Protect a plaintext RTCP packet with the outbound session and send it to the
        remote; False when there is no remote yet or the socket refuses it."""
        cdef uint8_t out[TX_SLOT]
        cdef int length = len(packet)
        if self._closed or not self.has_remote or self.tx_ctx == NULL:
            return False
        if not RTCP_HEADER <= length <= RX_SLOT:
            raise ValueError(f"an RTCP packet has 8 to {RX_SLOT} bytes, got {length}")
        if not _take_budget(self):
            return False
        memcpy(out, <const char *>packet, length)
        if _srtp_protect_rtcp(self.tx_ctx, out, &length) != SRTP_OK:
            self.counters.rtcp_errors += 1
            return False
        if sendto(self.fd, out, length, MSG_DONTWAIT, &self.remote_addr, sizeof(sockaddr_in)) != length:
            self.counters.rtcp_errors += 1
            return False
        self.counters.rtcp_out += 1
        return True

    def _on_readable(self):
        self._forwarder._receive(self)

    def __repr__(self):
        return f"<Endpoint {self._name!r} tracks={len(self._tracks)} closed={bool(self._closed)}>"


cdef inline bint _take_budget(Endpoint ep) noexcept:
    """One packet of what `ep` may be sent before it proves itself (require_proof); False
    when its budget is spent."""
    if not ep.unproven:
        return 1
    if ep.budget == 0:
        return 0
    ep.budget -= 1
    return 1


cdef inline void _heard_from(Endpoint ep, sockaddr_in *source) noexcept:
    """A packet that authenticated came from `source`: a latching endpoint sends there from
    now on, and a remote at that address has proven it wants the media."""
    if ep._latching:
        ep.remote_addr = source[0]
        ep.has_remote = 1
    if ep.unproven and source.sin_addr.s_addr == ep.remote_addr.sin_addr.s_addr:
        ep.unproven = 0


cdef inline void _count_srtp_error(Endpoint ep, int err) noexcept:
    if err == SRTP_AUTH_FAIL:
        ep.counters.drop_counts[DROP_AUTH_FAILED] += 1
    elif err == SRTP_REPLAY_FAIL or err == SRTP_REPLAY_OLD:
        ep.counters.drop_counts[DROP_REPLAYED] += 1
    elif err == SRTP_BAD_PARAM or err == SRTP_PARSE_ERR:
        ep.counters.drop_counts[DROP_MALFORMED] += 1
    else:
        ep.counters.drop_counts[DROP_SRTP_ERROR] += 1


# --- the forwarder ---------------------------------------------------------------------------

cdef class Forwarder:
    """Owns the packet buffers shared by all endpoints and the event loop they run on."""

    def __cinit__(self, loop=None, *, int batch_size=32):
        cdef int i
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH}")
        self.batch = batch_size
        self.rx_msgs = <mmsghdr *>calloc(batch_size, sizeof(mmsghdr))
        self.rx_iov = <iovec *>calloc(batch_size, sizeof(iovec))
        self.rx_from = <sockaddr_in *>calloc(batch_size, sizeof(sockaddr_in))
        self.rx_buf = <uint8_t *>malloc(batch_size * RX_SLOT)
        self.rx_len = <int *>calloc(batch_size, sizeof(int))
        self.rx_track = <PyObject **>calloc(batch_size, sizeof(PyObject *))
        self.rx_key = <int8_t *>calloc(batch_size, sizeof(int8_t))
        self.tx_msgs = <mmsghdr *>calloc(batch_size, sizeof(mmsghdr))
        self.tx_iov = <iovec *>calloc(batch_size, sizeof(iovec))
        self.tx_buf = <uint8_t *>malloc(batch_size * TX_SLOT)
        if (self.rx_msgs == NULL or self.rx_iov == NULL or self.rx_from == NULL
                or self.rx_buf == NULL or self.rx_len == NULL or self.rx_track == NULL or self.rx_key == NULL
                or self.tx_msgs == NULL or self.tx_iov == NULL or self.tx_buf == NULL):
            raise MemoryError()
        for i in range(batch_size):
            self.rx_iov[i].iov_base = self.rx_buf + i * RX_SLOT
            self.rx_iov[i].iov_len = RX_SLOT
            self.rx_msgs[i].msg_hdr.msg_iov = &self.rx_iov[i]
            self.rx_msgs[i].msg_hdr.msg_iovlen = 1
            self.rx_msgs[i].msg_hdr.msg_name = &self.rx_from[i]
            self.tx_iov[i].iov_base = self.tx_buf + i * TX_SLOT
            self.tx_msgs[i].msg_hdr.msg_iov = &self.tx_iov[i]
            self.tx_msgs[i].msg_hdr.msg_iovlen = 1
            self.tx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)

    def __init__(self, loop=None, *, int batch_size=32):
        self._loop = loop if loop is not None else _asyncio.get_event_loop()
        self._endpoints = []
        self._retired = Counters()

    def __dealloc__(self):
        free(self.rx_msgs)
        free(self.rx_iov)
        free(self.rx_from)
        free(self.rx_buf)
        free(self.rx_len)
        free(self.rx_track)
        free(self.rx_key)
        free(self.tx_msgs)
        free(self.tx_iov)
        free(self.tx_buf)

    @property
    def endpoints(self):
        return list(self._endpoints)

    def set_handshake_handler(self, handler):
        if handler is not None and not callable(handler):
            raise TypeError("the handshake handler must be callable or None")
        self._handshake_handler = handler

    def set_rtcp_handler(self, handler):
        if handler is not None and not callable(handler):
            raise TypeError("the RTCP handler must be callable or None")
        self._rtcp_handler = handler

    def create_endpoint(self, sock, *, rx_suite=None, rx_key=None, tx_suite=None, tx_key=None, remote=None,
                        name="", int buffer_bytes=1 << 20, description=None, bint latch=True,
                        bint handshakes=False):
        cdef Endpoint ep
        if sock.family != _socket.AF_INET or sock.type != _socket.SOCK_DGRAM:
            raise ValueError("an endpoint needs an IPv4 UDP socket")
        # The default 208 KiB receive buffer holds under 2 ms of a busy publisher.
        for option in (_socket.SO_RCVBUF, _socket.SO_SNDBUF):
            if sock.getsockopt(_socket.SOL_SOCKET, option) < buffer_bytes:
                sock.setsockopt(_socket.SOL_SOCKET, option, buffer_bytes)
        ep = Endpoint.__new__(Endpoint)
        ep._forwarder = self
        ep._name = str(name)
        ep.description = description
        ep._tracks = []
        ep._subscriptions = []
        ep._rebuild_tracks()
        if rx_key is not None or tx_key is not None:
            ep.set_keys(rx_suite=rx_suite, rx_key=rx_key, tx_suite=tx_suite, tx_key=tx_key)
        ep.set_remote(remote, latch=latch)
        ep._handshakes = handshakes
        ep.handshake_tokens = ep.remote_tokens = HANDSHAKE_BURST
        sock.setblocking(False)
        ep._sock = sock
        ep.fd = sock.fileno()
        ep._on_readable_cb = ep._on_readable
        self._loop.add_reader(ep.fd, ep._on_readable_cb)
        self._endpoints.append(ep)
        return ep

    def totals(self):
        """Counters since the forwarder started, closed endpoints included."""
        cdef Counters totals = Counters()
        totals.add(self._retired)
        for ep in self._endpoints:
            totals.add((<Endpoint>ep).counters)
        return totals

    def close(self):
        for ep in list(self._endpoints):
            ep.close()

    # -- per packet: no Python objects below this line -------------------------------------

    cdef void _receive(self, Endpoint ep) noexcept:
        cdef int n, i, rounds
        cdef double now
        for rounds in range(ROUNDS_PER_WAKEUP):
            if ep._closed:
                return
            for i in range(self.batch):
                self.rx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                self.rx_msgs[i].msg_hdr.msg_flags = 0
            n = recvmmsg(ep.fd, self.rx_msgs, self.batch, MSG_DONTWAIT, NULL)
            if n <= 0:
                return
            now = clock_seconds(CLOCK_MONOTONIC)
            self.batches += 1
            self.batch_packets += n
            for i in range(n):
                self.rx_key[i] = -1  # before _accept, which may know it already
                self.rx_track[i] = self._accept(ep, i, now)
                # A strong reference until fan-out: the RTCP handler runs Python code
                # between two packets of the batch and may remove a track.
                Py_XINCREF(self.rx_track[i])
            self._fan_out(n, now)
            if n < self.batch:
                return

    cdef PyObject *_accept(self, Endpoint ep, int i, double now) noexcept:
        """Check and decrypt datagram i; its track, or NULL when it is dropped or consumed."""
        cdef uint8_t *p = self.rx_buf + i * RX_SLOT
        cdef int length = self.rx_msgs[i].msg_len
        cdef int header, end, err, k, padding
        cdef uint8_t first
        cdef uint16_t seq
        cdef uint32_t ssrc
        cdef Track track
        cdef PyObject *found = NULL
        if self.rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
            ep.counters.drop_counts[DROP_OVERSIZE] += 1
            return NULL
        if length < 1:
            ep.counters.drop_counts[DROP_TOO_SHORT] += 1
            return NULL
        first = p[0]
        if first < 128 or first > 191:
            # RFC 7983: 0-3 STUN, 20-63 DTLS; 128-191 RTP/RTCP (version 2).
            if first <= 3 or 20 <= first <= 63:
                if ep._handshakes and self._handshake_handler is not None:
                    self._accept_handshake(ep, i, length, now)
                elif first <= 3:
                    ep.counters.drop_counts[DROP_STUN] += 1
                else:
                    ep.counters.drop_counts[DROP_DTLS] += 1
            else:
                ep.counters.drop_counts[DROP_BAD_VERSION] += 1
            return NULL
        if ep.rx_ctx == NULL:
            ep.counters.drop_counts[DROP_NOT_KEYED] += 1
            return NULL
        if length >= 2 and 192 <= p[1] <= 223:
            self._accept_rtcp(ep, i, length, now)
            return NULL
        end = length - ep.rx_tag_len
        if end < RTP_HEADER:
            ep.counters.drop_counts[DROP_TOO_SHORT] += 1
            return NULL
        header = RTP_HEADER + 4 * (first & 0x0f)
        if first & 0x10:
            if header + 4 > end:
                ep.counters.drop_counts[DROP_MALFORMED] += 1
                return NULL
            header += 4 + 4 * load16(p + header + 2)
        if header > end:
            ep.counters.drop_counts[DROP_MALFORMED] += 1
            return NULL
        ssrc = load32(p + 8)
        for k in range(ep.n_tracks):
            if ep.track_ssrcs[k] == ssrc:
                found = ep.track_ptrs[k]
                break
        if found == NULL:
            ep.counters.drop_counts[DROP_UNKNOWN_SSRC] += 1
            return NULL
        err = _srtp_unprotect(ep.rx_ctx, p, &length)
        if err != SRTP_OK:
            _count_srtp_error(ep, err)
            return NULL
        if first & 0x20:
            # RFC 3550 5.1: the last octet counts the padding, itself included.
            padding = p[length - 1]
            if padding == 0 or header + padding > length:
                ep.counters.drop_counts[DROP_MALFORMED] += 1
                return NULL
        _heard_from(ep, &self.rx_from[i])
        self.rx_len[i] = length
        ep.counters.packets_in += 1
        ep.counters.bytes_in += length
        ep.last_activity = now
        track = <Track>found
        track.packets += 1
        track.bytes += length
        track.last_activity = now
        _receive(&track.rx, load16(p + 2), load32(p + 4), now, track._clock_rate, track.packets)
        if track.cache_packets and length <= CACHE_SLOT:
            # Cached with or without receivers: the first one may start from its key frame.
            seq = load16(p + 2)
            k = seq % track.cache_packets
            memcpy(track.cache + k * CACHE_SLOT, p, length)
            track.cache_len[k] = length
            track.cache_seq[k] = seq
            track.cache_source[k] = track.source
            if track.codec_id != CODEC_OTHER:
                self.rx_key[i] = _key_frame(track.codec_id, p, length)
                if self.rx_key[i]:
                    # Its first packet (an H.264 key frame's SPS, PPS and IDR share a timestamp).
                    if not (track.key_valid and track.key_source == track.source and track.key_ts == load32(p + 4)):
                        track.key_valid = 1
                        track.key_seq = seq
                        track.key_ts = load32(p + 4)
                        track.key_source = track.source
                        track.key_frames += 1
                elif track.key_valid and <int16_t><uint16_t>(seq - track.key_seq) >= track.cache_packets:
                    track.key_valid = 0  # its first packet's slot is taken: no whole key frame cached
        return found

    cdef void _accept_rtcp(self, Endpoint ep, int i, int length, double now) noexcept:
        cdef uint8_t *p = self.rx_buf + i * RX_SLOT
        cdef int err
        if length < RTCP_HEADER + SRTCP_INDEX + ep.rx_rtcp_tag_len:
            ep.counters.drop_counts[DROP_TOO_SHORT] += 1
            return
        err = _srtp_unprotect_rtcp(ep.rx_ctx, p, &length)
        if err != SRTP_OK:
            _count_srtp_error(ep, err)
            return
        _heard_from(ep, &self.rx_from[i])
        ep.counters.rtcp_in += 1
        ep.last_activity = now
        if self._rtcp_handler is not None:
            self._deliver_rtcp(ep, p, length)

    cdef void _accept_handshake(self, Endpoint ep, int i, int length, double now) noexcept:
        # The handshake slow path (ICE, DTLS): Python per packet, bounded per endpoint by a
        # token bucket so a flood costs one comparison per datagram, not a Python call.
        # The nominated remote has a bucket of its own: a stranger's flood must not starve the
        # browser's consent checks (RFC 7675), or anyone who knows the port could end its call.
        cdef uint8_t *p = self.rx_buf + i * RX_SLOT
        cdef sockaddr_in *source = &self.rx_from[i]
        if (ep.has_remote and source.sin_addr.s_addr == ep.remote_addr.sin_addr.s_addr
                and source.sin_port == ep.remote_addr.sin_port):
            ep.remote_tokens = min(HANDSHAKE_BURST, ep.remote_tokens + (now - ep.remote_refilled) * HANDSHAKE_RATE)
            ep.remote_refilled = now
            if ep.remote_tokens < 1.0:
                ep.counters.drop_counts[DROP_HANDSHAKE_FLOOD] += 1
                return
            ep.remote_tokens -= 1.0
        else:
            ep.handshake_tokens = min(HANDSHAKE_BURST,
                                      ep.handshake_tokens + (now - ep.handshake_refilled) * HANDSHAKE_RATE)
            ep.handshake_refilled = now
            if ep.handshake_tokens < 1.0:
                ep.counters.drop_counts[DROP_HANDSHAKE_FLOOD] += 1
                return
            ep.handshake_tokens -= 1.0
        ep.counters.handshakes_in += 1
        try:
            self._handshake_handler(ep, p[:length], (_format_address(source), ntohs(source.sin_port)))
        except Exception as error:
            ep.counters.handshake_errors += 1
            self._loop.call_exception_handler({"message": "handshake handler failed", "exception": error})

    cdef void _deliver_rtcp(self, Endpoint ep, uint8_t *p, int length) noexcept:
        # The RTCP slow path: a few percent of the traffic, and only packets that
        # authenticated get here, so one Python call per packet is affordable.
        try:
            self._rtcp_handler(ep, p[:length])
        except Exception as error:
            ep.counters.rtcp_errors += 1
            self._loop.call_exception_handler({"message": "RTCP handler failed", "exception": error})

    cdef void _fan_out(self, int n, double now) noexcept:
        """Send every accepted packet of the batch to its track's subscriptions, one
        sendmmsg per (track, subscription), in arrival order."""
        cdef int i, j, s
        cdef PyObject *t
        cdef Track track
        for i in range(n):
            t = self.rx_track[i]
            if t == NULL:
                continue
            track = <Track>t
            for s in range(track.n_subs):
                self._send_run(track, <Subscription>track.subs[s], i, n, now)
            for j in range(i, n):
                if self.rx_track[j] == t:
                    self.rx_track[j] = NULL
                    Py_DECREF(<object>t)

    cdef void _send_run(self, Track track, Subscription sub, int first, int n, double now) noexcept:
        cdef Endpoint target = sub._target
        cdef PyObject *t = <PyObject *>track
        cdef int j, count = 0, length, sent, k
        cdef uint8_t *out
        cdef uint16_t seq
        cdef uint32_t ts
        cdef uint64_t sent_bytes = 0
        # Locals, written back after the loop: the budget costs a register test per packet.
        cdef bint unproven = target.unproven
        cdef uint64_t budget = target.budget
        for j in range(first, n):
            if self.rx_track[j] != t:
                continue
            if sub.rw.paused:
                sub.dropped_paused += 1
                continue
            if not target.has_remote or target.tx_ctx == NULL:
                sub.dropped_no_remote += 1
                continue
            src = self.rx_buf + j * RX_SLOT
            if sub.waiting:
                if sub.waiting == WAIT_REPLAY:
                    continue  # in the cache: the replay sends it in its turn
                # Looked at once per packet, for the first route of its track that waits.
                if self.rx_key[j] < 0:
                    self.rx_key[j] = _key_frame(track.codec_id, src, self.rx_len[j])
                if not self.rx_key[j]:
                    sub.dropped_waiting_key_frame += 1
                    continue
                sub.waiting = WAIT_NONE
            if unproven:
                if budget == 0:
                    sub.dropped_unproven += 1
                    # Once it proves itself the numbers go on without a gap (nothing to ask
                    # again for), from a key frame where the route waits for one.
                    if not (sub.wait_key_frame and sub._arm()) and sub.rw.started:
                        sub.rw.resync = 1
                    continue
                budget -= 1
            if not _rewrite(&sub.rw, track.source, load16(src + 2), load32(src + 4), now,
                            track._clock_rate, &seq, &ts):
                sub.dropped_stale += 1
                continue
            out = self.tx_buf + count * TX_SLOT
            length = _protect_for(sub, out, src, self.rx_len[j], seq, ts)
            if length < 0:
                continue
            self.tx_iov[count].iov_len = length
            self.tx_msgs[count].msg_hdr.msg_name = &target.remote_addr
            count += 1
        if unproven:
            target.budget = budget
        if count == 0:
            return
        sent = 0
        while sent < count:
            k = sendmmsg(target.fd, self.tx_msgs + sent, count - sent, MSG_DONTWAIT)
            if k < 0:
                if errno == EINTR:
                    continue
                # Full socket buffer or an unreachable peer: these packets are lost.
                sub.send_errors += count - sent
                break
            sent += k
        for j in range(sent):
            sent_bytes += self.tx_iov[j].iov_len
        sub.packets += sent
        sub.bytes += sent_bytes
        sub.last_activity = now
        target.counters.packets_out += sent
        target.counters.bytes_out += sent_bytes
