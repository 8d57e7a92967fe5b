# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Reference relay: the forwarding work of an SFU with nothing else around it.

recvmmsg on the publisher socket; per packet srtp_unprotect with the publisher's key, then
per subscriber a copy with SSRC, sequence number and timestamp rewritten (constant offsets),
srtp_protect with the subscriber's key; one sendmmsg per subscriber socket per batch. A plain
loop: recvmmsg until the socket is empty, then poll(); no event loop, no Python per packet.
This is what this machine can do, the ceiling the forwarding core is measured against.
"""
import socket

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from mediad._net cimport (
    AF_INET, CLOCK_MONOTONIC, EAGAIN, EINTR, MSG_DONTWAIT, POLLIN, clock_seconds, errno,
    htonl, htons, iovec, load16, load32, mmsghdr, poll, pollfd, recvmmsg, sendmmsg,
    sockaddr_in, srtp_call, store16, store32,
)

from mediad import srtp as _srtp

cdef enum:
    BATCH = 32
    SLOT = 2048
    MAX_SUBSCRIBERS = 32
    HEADER = 12


cdef class RefRelay:
    """Forwards everything the publisher socket receives to every subscriber."""

    cdef object _pub_sock
    cdef list _sub_socks
    cdef list _sessions          # keeps the pylibsrtp sessions (and their srtp_t) alive
    cdef int pub_fd
    cdef int n_sub
    cdef int sub_fd[MAX_SUBSCRIBERS]
    cdef void* tx_ctx[MAX_SUBSCRIBERS]
    cdef sockaddr_in sub_addr[MAX_SUBSCRIBERS]
    cdef uint32_t sub_ssrc[MAX_SUBSCRIBERS]
    cdef uint16_t seq_offset[MAX_SUBSCRIBERS]
    cdef uint32_t ts_offset[MAX_SUBSCRIBERS]
    cdef void* rx_ctx
    cdef srtp_call unprotect_fn
    cdef srtp_call protect_fn
    cdef uint8_t* in_buf
    cdef uint8_t* out_buf
    cdef mmsghdr in_msgs[BATCH]
    cdef iovec in_iov[BATCH]
    cdef mmsghdr* out_msgs
    cdef iovec* out_iov
    cdef readonly int64_t packets_in
    cdef readonly int64_t packets_out
    cdef readonly int64_t dropped
    cdef readonly int64_t send_errors
    cdef readonly int64_t batches
    cdef public int idle_wait_ms     # poll() timeout when idle; 0 busy-polls (lowest latency, 100 % CPU)

    def __cinit__(self):
        self.in_buf = NULL
        self.out_buf = NULL
        self.out_msgs = NULL
        self.out_iov = NULL

    def __dealloc__(self):
        free(self.in_buf)
        free(self.out_buf)
        free(self.out_msgs)
        free(self.out_iov)

    def __init__(self, pub_sock: socket.socket, str suite, bytes pub_key, list subscribers):
        """subscribers: (bound socket, key, ssrc, (host, port)) per subscriber."""
        if not 1 <= len(subscribers) <= MAX_SUBSCRIBERS:
            raise ValueError(f"1..{MAX_SUBSCRIBERS} subscribers")
        self._pub_sock = pub_sock
        self.pub_fd = pub_sock.fileno()
        self.unprotect_fn = <srtp_call><uintptr_t>_srtp.function_pointer("srtp_unprotect")
        self.protect_fn = <srtp_call><uintptr_t>_srtp.function_pointer("srtp_protect")
        rx = _srtp.create_session(suite, pub_key, inbound=True)
        self._sessions = [rx]
        self.rx_ctx = <void*><uintptr_t>_srtp.session_pointer(rx)
        self._sub_socks = []
        self.n_sub = len(subscribers)
        self.idle_wait_ms = 20
        cdef int s
        for s, (sock, key, ssrc, remote) in enumerate(subscribers):
            tx = _srtp.create_session(suite, key, inbound=False)
            self._sessions.append(tx)
            self._sub_socks.append(sock)
            self.sub_fd[s] = sock.fileno()
            self.tx_ctx[s] = <void*><uintptr_t>_srtp.session_pointer(tx)
            self.sub_ssrc[s] = ssrc
            self.seq_offset[s] = <uint16_t>(1000 * (s + 1))
            self.ts_offset[s] = <uint32_t>(90000 * (s + 1))
            memset(&self.sub_addr[s], 0, sizeof(sockaddr_in))
            self.sub_addr[s].sin_family = AF_INET
            self.sub_addr[s].sin_port = htons(remote[1])
            self.sub_addr[s].sin_addr.s_addr = htonl(0x7F000001 if remote[0] == "127.0.0.1" else _ipv4(remote[0]))
        self.in_buf = <uint8_t*>malloc(BATCH * SLOT)
        self.out_buf = <uint8_t*>malloc(self.n_sub * BATCH * SLOT)
        self.out_msgs = <mmsghdr*>malloc(self.n_sub * BATCH * sizeof(mmsghdr))
        self.out_iov = <iovec*>malloc(self.n_sub * BATCH * sizeof(iovec))
        if self.in_buf == NULL or self.out_buf == NULL or self.out_msgs == NULL or self.out_iov == NULL:
            raise MemoryError()
        cdef int i, j
        for i in range(BATCH):
            memset(&self.in_msgs[i], 0, sizeof(mmsghdr))
            self.in_iov[i].iov_base = self.in_buf + i * SLOT
            self.in_iov[i].iov_len = SLOT
            self.in_msgs[i].msg_hdr.msg_iov = &self.in_iov[i]
            self.in_msgs[i].msg_hdr.msg_iovlen = 1
        for s in range(self.n_sub):
            for i in range(BATCH):
                j = s * BATCH + i
                memset(&self.out_msgs[j], 0, sizeof(mmsghdr))
                self.out_iov[j].iov_base = self.out_buf + j * SLOT
                self.out_msgs[j].msg_hdr.msg_iov = &self.out_iov[j]
                self.out_msgs[j].msg_hdr.msg_iovlen = 1
                self.out_msgs[j].msg_hdr.msg_name = &self.sub_addr[s]
                self.out_msgs[j].msg_hdr.msg_namelen = sizeof(sockaddr_in)

    def run(self, double seconds) -> None:
        """Forward for `seconds` (returns early never; idles in poll() when there is nothing)."""
        with nogil:
            self._run(seconds)

    cdef void _run(self, double seconds) noexcept nogil:
        cdef double deadline = clock_seconds(CLOCK_MONOTONIC) + seconds
        cdef pollfd pfd
        pfd.fd = self.pub_fd
        pfd.events = POLLIN
        cdef int count, m, s, good, status, sent, length, out_length, off
        cdef uint8_t* packet
        cdef uint8_t* out
        cdef int loops = 0
        while True:
            count = recvmmsg(self.pub_fd, self.in_msgs, BATCH, MSG_DONTWAIT, NULL)
            if count <= 0:
                if clock_seconds(CLOCK_MONOTONIC) >= deadline:
                    return
                if self.idle_wait_ms:
                    poll(&pfd, 1, self.idle_wait_ms)
                continue
            self.batches += 1
            good = 0
            for m in range(count):
                packet = self.in_buf + m * SLOT
                length = self.in_msgs[m].msg_len
                if length < HEADER + 4 or (packet[0] & 0xC0) != 0x80:
                    self.dropped += 1
                    continue
                if self.unprotect_fn(self.rx_ctx, packet, &length) != 0:
                    self.dropped += 1
                    continue
                self.packets_in += 1
                for s in range(self.n_sub):
                    off = s * BATCH + good
                    out = self.out_buf + off * SLOT
                    memcpy(out, packet, length)
                    store16(out + 2, <uint16_t>(load16(packet + 2) + self.seq_offset[s]))
                    store32(out + 4, load32(packet + 4) + self.ts_offset[s])
                    store32(out + 8, self.sub_ssrc[s])
                    out_length = length
                    if self.protect_fn(self.tx_ctx[s], out, &out_length) != 0:
                        out_length = 0    # sent as an empty datagram: counted at the receiver as malformed
                    self.out_iov[off].iov_len = out_length
                good += 1
            if good == 0:
                continue
            for s in range(self.n_sub):
                sent = 0
                while sent < good:
                    status = sendmmsg(self.sub_fd[s], self.out_msgs + s * BATCH + sent, good - sent, 0)
                    if status > 0:
                        sent += status
                    elif errno == EAGAIN or errno == EINTR:
                        continue
                    else:
                        self.send_errors += 1
                        sent += 1
                self.packets_out += good
            loops += 1
            if loops & 63 == 0 and clock_seconds(CLOCK_MONOTONIC) >= deadline:
                return


cdef uint32_t _ipv4(str host) except? 0:
    a, b, c, d = (int(x) for x in socket.inet_aton(host))
    return (a << 24) | (b << 16) | (c << 8) | d
