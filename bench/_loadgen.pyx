# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Load generator and receivers of the forwarding benchmark, in one compiled process.

The generator sends pre-protected SRTP packets from one socket, in bursts with sendmmsg,
paced to an offered rate; the receivers drain their sockets with recvmmsg in the same busy
loop (run_together: several generators, each to its own target with its own key, in one
loop). Each packet carries its generator index in its single CSRC (plaintext, forwarded
byte-identical by every relay under test), so a receiver knows exactly which packet it got
without decrypting it. Receive times are the kernel's (SO_TIMESTAMPNS, CLOCK_REALTIME, taken
when the relay's send reached the socket); send times are CLOCK_REALTIME read just before
each sendmmsg.
"""
import socket

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from mediad._net cimport (
    CMSG_DATA, CMSG_FIRSTHDR, CMSG_NXTHDR, CMSG_SPACE, CLOCK_MONOTONIC, CLOCK_REALTIME,
    EAGAIN, EINTR, EWOULDBLOCK, MSG_DONTWAIT, SCM_TIMESTAMPNS, SOL_SOCKET, SO_RXQ_OVFL,
    SO_TIMESTAMPNS, clock_gettime, clock_seconds, cmsghdr, errno, iovec, load16, load32, mmsghdr, recvmmsg,
    sendmmsg, setsockopt, srtp_call, store16, store32, timespec,
)

from mediad import srtp as _srtp


cdef extern from "<time.h>" nogil:
    int nanosleep(const timespec* request, timespec* remaining)

cdef enum:
    BATCH = 64          # datagrams per recvmmsg / sendmmsg call
    SLOT = 2048         # receive buffer per datagram
    CONTROL = 64        # ancillary data per datagram: a timespec and a uint32 drop counter
    MAX_RECEIVERS = 32
    SRTP_TRAILER = 144  # SRTP_MAX_TRAILER_LEN: what protect may append

SOCKET_BUFFER = 4 * 1024 * 1024  # net.core.rmem_max / wmem_max on this machine
PAYLOAD_TYPE = 96


cdef inline uint8_t payload_byte(Py_ssize_t offset) noexcept nogil:
    # It begins as the first packet of a VP8 key frame does (RFC 7741: descriptor S=1 PID=0,
    # payload header P=0): a daemon's video route, which waits for a key frame, takes it.
    if offset < 2:
        return 0x10 if offset == 0 else 0x00
    return <uint8_t>((offset * 7 + 13) & 0xFF)


def expected_payload(int rtp_size) -> bytes:
    """The plaintext payload every generated packet carries (after its 16-byte header)."""
    return bytes(payload_byte(j) for j in range(rtp_size - 16))


cdef class LoadGen:
    """One SRTP publisher socket and `receivers` receiving sockets on 127.0.0.1."""

    cdef object _tx_sock
    cdef list _rx_socks
    cdef int tx_fd
    cdef int n_rx
    cdef int rx_fd[MAX_RECEIVERS]
    cdef uint32_t rx_drops_base[MAX_RECEIVERS]
    cdef uint32_t rx_drops[MAX_RECEIVERS]
    cdef readonly int rtp_size
    cdef readonly uint32_t ssrc
    cdef int stride
    # Packets of the current trial: `capacity` slots of `stride` bytes.
    cdef uint8_t* packets
    cdef int* lengths
    cdef Py_ssize_t capacity
    cdef double* send_times
    cdef double* recv_times        # n_rx rows of `capacity`
    cdef uint8_t* samples          # n_rx rows of `max_samples` slots
    cdef int* sample_lengths
    cdef int max_samples
    cdef int sample_count[MAX_RECEIVERS]
    # Receive state
    cdef uint8_t* rx_buf
    cdef uint8_t* rx_control
    cdef mmsghdr rx_msgs[BATCH]
    cdef iovec rx_iov[BATCH]
    cdef mmsghdr tx_msgs[BATCH]
    cdef iovec tx_iov[BATCH]
    # SRTP
    cdef object _session
    cdef void* srtp_ctx
    cdef srtp_call protect_fn
    cdef readonly uint64_t next_index
    cdef Py_ssize_t prepared
    cdef double prepared_rate
    cdef object _suite
    cdef long epoch          # whole seconds subtracted from CLOCK_REALTIME stamps (precision)
    # The current run (_begin, _step, _finish)
    cdef Py_ssize_t r_n, r_sent, r_got, r_expected
    cdef double r_rate, r_drain, r_next_time, r_deadline, r_t_first, r_t_last
    cdef double r_max_lag, r_max_send_call, r_max_drain, r_catch_up
    cdef int r_burst
    cdef bint r_capture, r_done, r_backlog
    cdef uint32_t r_base
    cdef int64_t r_send_errors
    cdef int64_t r_counters[5]
    cdef int r_seq_delta[MAX_RECEIVERS]
    cdef uint32_t r_ssrcs[MAX_RECEIVERS]

    def __cinit__(self):
        self.packets = NULL
        self.lengths = NULL
        self.send_times = NULL
        self.recv_times = NULL
        self.samples = NULL
        self.sample_lengths = NULL
        self.rx_buf = NULL
        self.rx_control = NULL
        self.capacity = 0
        self.prepared = 0

    def __init__(self, int receivers, *, int rtp_size=1200, uint32_t ssrc=0x5EED0001, int max_samples=4):
        if not 1 <= receivers <= MAX_RECEIVERS:
            raise ValueError(f"receivers must be 1..{MAX_RECEIVERS}")
        if not 64 <= rtp_size <= 1400:
            raise ValueError("rtp_size must be 64..1400 bytes")
        self.n_rx = receivers
        self.rtp_size = rtp_size
        self.ssrc = ssrc
        self.stride = (rtp_size + SRTP_TRAILER + 63) & ~63
        self.max_samples = max_samples
        self._tx_sock = self._udp_socket()
        self.tx_fd = self._tx_sock.fileno()
        self._rx_socks = []
        cdef int one = 1
        cdef int i
        for i in range(receivers):
            sock = self._udp_socket()
            self._rx_socks.append(sock)
            self.rx_fd[i] = sock.fileno()
            if setsockopt(self.rx_fd[i], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) != 0:
                raise OSError(errno, "setsockopt(SO_TIMESTAMPNS)")
            if setsockopt(self.rx_fd[i], SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one)) != 0:
                raise OSError(errno, "setsockopt(SO_RXQ_OVFL)")
            self.rx_drops[i] = 0
        self.rx_buf = <uint8_t*>malloc(BATCH * SLOT)
        self.rx_control = <uint8_t*>malloc(BATCH * CONTROL)
        self.samples = <uint8_t*>malloc(receivers * max(max_samples, 1) * SLOT)
        self.sample_lengths = <int*>calloc(receivers * max(max_samples, 1), sizeof(int))
        if self.rx_buf == NULL or self.rx_control == NULL or self.samples == NULL or self.sample_lengths == NULL:
            raise MemoryError()
        for i in range(BATCH):
            self.rx_iov[i].iov_base = self.rx_buf + i * SLOT
            self.rx_iov[i].iov_len = SLOT
            memset(&self.rx_msgs[i], 0, sizeof(mmsghdr))
            self.rx_msgs[i].msg_hdr.msg_iov = &self.rx_iov[i]
            self.rx_msgs[i].msg_hdr.msg_iovlen = 1
            memset(&self.tx_msgs[i], 0, sizeof(mmsghdr))
            self.tx_msgs[i].msg_hdr.msg_iov = &self.tx_iov[i]
            self.tx_msgs[i].msg_hdr.msg_iovlen = 1
        self._session = None
        self.srtp_ctx = NULL
        self.protect_fn = <srtp_call><uintptr_t>_srtp.function_pointer("srtp_protect")

    @staticmethod
    def _udp_socket():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def __dealloc__(self):
        free(self.packets)
        free(self.lengths)
        free(self.send_times)
        free(self.recv_times)
        free(self.samples)
        free(self.sample_lengths)
        free(self.rx_buf)
        free(self.rx_control)

    @property
    def receiver_addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname() for s in self._rx_socks]

    @property
    def source_address(self) -> tuple[str, int]:
        return self._tx_sock.getsockname()

    def close(self) -> None:
        self._tx_sock.close()
        for s in self._rx_socks:
            s.close()

    def set_target(self, str host, int port) -> None:
        """Send to (host, port) from now on (connects the publisher socket)."""
        self._tx_sock.connect((host, port))

    def set_key(self, suite: str, key: bytes, *, uint64_t first_index=1000) -> None:
        """Protect with a new outbound session from now on, starting at packet index
        `first_index` (sequence number first_index mod 2^16, rollover counter above)."""
        self._session = _srtp.create_session(suite, key, inbound=False)
        self.srtp_ctx = <void*><uintptr_t>_srtp.session_pointer(self._session)
        self.next_index = first_index
        self.prepared = 0
        self._suite = suite

    def save_session(self) -> tuple:
        """The current outbound session and packet index, to resume later with
        restore_session() (a relay's replay window and rollover counter stay in step)."""
        return (self._session, self.next_index, self._suite)

    def restore_session(self, tuple state) -> None:
        self._session, self.next_index, self._suite = state
        self.srtp_ctx = <void*><uintptr_t>_srtp.session_pointer(self._session)
        self.prepared = 0

    cdef void _ensure_capacity(self, Py_ssize_t n) except *:
        if n <= self.capacity:
            return
        free(self.packets)
        free(self.lengths)
        free(self.send_times)
        free(self.recv_times)
        self.packets = <uint8_t*>malloc(n * self.stride)
        self.lengths = <int*>malloc(n * sizeof(int))
        self.send_times = <double*>malloc(n * sizeof(double))
        self.recv_times = <double*>malloc(self.n_rx * n * sizeof(double))
        if self.packets == NULL or self.lengths == NULL or self.send_times == NULL or self.recv_times == NULL:
            self.capacity = 0
            raise MemoryError()
        self.capacity = n

    cdef int _prepare(self, Py_ssize_t n) except -1:
        """Build and protect packets next_index .. next_index + n - 1 (before the trial)."""
        cdef Py_ssize_t i, j
        cdef uint8_t* p
        cdef uint64_t index
        cdef int length, status
        cdef uint8_t[2048] template
        for j in range(self.rtp_size - 16):
            template[16 + j] = payload_byte(j)
        template[0] = 0x81                 # V=2, one CSRC
        template[1] = PAYLOAD_TYPE
        store32(template + 8, self.ssrc)
        with nogil:
            for i in range(n):
                index = self.next_index + i
                p = self.packets + i * self.stride
                memcpy(p, template, self.rtp_size)
                store16(p + 2, <uint16_t>(index & 0xFFFF))
                store32(p + 4, <uint32_t>((index // 8) * 3000))  # 8 packets per 30 fps frame
                store32(p + 12, <uint32_t>index)
                length = self.rtp_size
                status = self.protect_fn(self.srtp_ctx, p, &length)
                if status != 0:
                    break
                self.lengths[i] = length
        if status != 0:
            raise RuntimeError(f"srtp_protect failed with status {status} at index {index}")
        return 0

    cdef void _reset_rx_msgs(self) noexcept nogil:
        cdef int i
        for i in range(BATCH):
            self.rx_msgs[i].msg_hdr.msg_control = self.rx_control + i * CONTROL
            self.rx_msgs[i].msg_hdr.msg_controllen = CONTROL
            self.rx_msgs[i].msg_hdr.msg_flags = 0

    cdef Py_ssize_t _drain(self, uint32_t base, Py_ssize_t n, int64_t* counters,
                           int* seq_delta, uint32_t* ssrcs) noexcept nogil:
        """One non-blocking pass over every receiver; returns the packets newly received.

        counters: strays, duplicates, malformed, seq_breaks, ssrc_changes.
        """
        cdef Py_ssize_t got = 0
        cdef int r, m, count, rounds, delta
        cdef unsigned int length
        cdef uint8_t* buf
        cdef uint32_t i, ssrc
        cdef double ts
        cdef double* slot
        cdef cmsghdr* cm
        cdef timespec* tsp
        for r in range(self.n_rx):
            rounds = 0
            while rounds < 4:   # bounded, so that one busy socket cannot starve the sender
                rounds += 1
                self._reset_rx_msgs()
                count = recvmmsg(self.rx_fd[r], self.rx_msgs, BATCH, MSG_DONTWAIT, NULL)
                if count <= 0:
                    break
                for m in range(count):
                    length = self.rx_msgs[m].msg_len
                    buf = self.rx_buf + m * SLOT
                    ts = 0.0
                    cm = CMSG_FIRSTHDR(&self.rx_msgs[m].msg_hdr)
                    while cm != NULL:
                        if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SCM_TIMESTAMPNS:
                            tsp = <timespec*>CMSG_DATA(cm)
                            ts = (tsp.tv_sec - self.epoch) + tsp.tv_nsec * 1e-9
                        elif cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SO_RXQ_OVFL:
                            memcpy(&self.rx_drops[r], CMSG_DATA(cm), 4)
                        cm = CMSG_NXTHDR(&self.rx_msgs[m].msg_hdr, cm)
                    if length < 16 or (buf[0] & 0xC0) != 0x80 or (buf[0] & 0x0F) < 1:
                        counters[2] += 1
                        continue
                    i = load32(buf + 12) - base
                    if i >= <uint32_t>n:
                        counters[0] += 1
                        continue
                    slot = self.recv_times + r * n + i
                    if slot[0] != 0.0:
                        counters[1] += 1
                        continue
                    slot[0] = ts
                    got += 1
                    delta = <uint16_t>(load16(buf + 2) - <uint16_t>(base + i))
                    ssrc = load32(buf + 8)
                    if seq_delta[r] < 0:
                        seq_delta[r] = delta
                        ssrcs[r] = ssrc
                    else:
                        if delta != seq_delta[r]:
                            counters[3] += 1
                        if ssrc != ssrcs[r]:
                            counters[4] += 1
                    if self.sample_count[r] < self.max_samples:
                        memcpy(self.samples + (r * self.max_samples + self.sample_count[r]) * SLOT, buf, length)
                        self.sample_lengths[r * self.max_samples + self.sample_count[r]] = length
                        self.sample_count[r] += 1
                if count < BATCH:
                    break
                if rounds == 4:
                    self.r_backlog = True   # more may wait: no sleep before the next pass
        return got

    def flush(self) -> int:
        """Discard whatever waits on the receivers (late packets of an earlier trial)."""
        cdef int r, count
        cdef int total = 0
        for r in range(self.n_rx):
            while True:
                self._reset_rx_msgs()
                count = recvmmsg(self.rx_fd[r], self.rx_msgs, BATCH, MSG_DONTWAIT, NULL)
                if count <= 0:
                    break
                total += count
        return total

    def prepare(self, double rate, double duration) -> int:
        """Build and protect the packets of the next trial (`rate` packets/s for `duration`
        seconds), off the clock; returns their count."""
        if self._session is None:
            raise RuntimeError("set_key() first")
        if rate <= 0 or duration <= 0:
            raise ValueError("rate and duration must be positive")
        cdef Py_ssize_t n = max(1, <Py_ssize_t>(rate * duration))
        self._ensure_capacity(n)
        self._prepare(n)
        self.prepared = n
        self.prepared_rate = rate
        return n

    def run(self, *, int burst=8, double drain=0.3, bint capture=False) -> dict:
        """Send the prepared packets at their rate in bursts of `burst`, then wait up to
        `drain` s for the last ones; returns counts and latencies (microseconds)."""
        self._begin(burst, drain, capture, -1.0, 1e300)
        with nogil:
            while not self.r_done:
                self._step()
        return self._finish()

    # --- one run, in steps (run() drives one generator, run_together() several) ---------

    cdef int _begin(self, int burst, double drain, bint capture, double start, double catch_up) except -1:
        """Reset the receivers and counters for the prepared packets; the first burst goes
        at `start` (CLOCK_MONOTONIC; negative: in 2 ms). Behind schedule by more than
        `catch_up` s, the schedule slips rather than the late packets going out at once."""
        if self.prepared <= 0:
            raise RuntimeError("prepare() first")
        if burst < 1 or burst > BATCH:
            raise ValueError("burst must be 1..64")
        cdef Py_ssize_t n = self.prepared
        self.r_n = n
        self.r_rate = self.prepared_rate
        self.r_burst = burst
        self.r_drain = drain
        self.r_catch_up = catch_up
        self.r_capture = capture
        self.prepared = 0
        self.flush()
        memset(self.recv_times, 0, self.n_rx * n * sizeof(double))
        memset(self.send_times, 0, n * sizeof(double))
        cdef int r
        for r in range(self.n_rx):
            self.sample_count[r] = self.max_samples if not capture else 0
            self.rx_drops_base[r] = self.rx_drops[r]
        memset(self.r_counters, 0, sizeof(self.r_counters))
        for r in range(MAX_RECEIVERS):
            self.r_seq_delta[r] = -1
            self.r_ssrcs[r] = 0
        self.r_base = <uint32_t>self.next_index
        self.r_sent = 0
        self.r_got = 0
        self.r_expected = n * self.n_rx
        self.r_send_errors = 0
        self.r_t_first = 0.0
        self.r_t_last = 0.0
        self.r_max_lag = 0.0
        self.r_deadline = 0.0
        self.r_max_send_call = 0.0
        self.r_max_drain = 0.0
        self.r_done = False
        cdef timespec wall
        clock_gettime(CLOCK_REALTIME, &wall)
        self.epoch = wall.tv_sec - 1
        self.r_next_time = start if start >= 0.0 else clock_seconds(CLOCK_MONOTONIC) + 0.002
        return 0

    cdef void _step(self) noexcept nogil:
        """Send the burst that is due, if one is, and drain the receivers once (r_backlog: a
        receiver had more than one pass takes). Sets r_done once every packet was received
        or the drain time after the last send is over."""
        cdef Py_ssize_t n = self.r_n
        cdef Py_ssize_t k, j
        cdef int status
        cdef double stamp, t_call
        cdef timespec wall
        cdef double now = clock_seconds(CLOCK_MONOTONIC)
        if self.r_sent < n and now >= self.r_next_time:
            if now - self.r_next_time > self.r_max_lag:
                self.r_max_lag = now - self.r_next_time
            if now - self.r_next_time > self.r_catch_up:
                self.r_next_time = now - self.r_catch_up
            k = n - self.r_sent
            if k > self.r_burst:
                k = self.r_burst
            for j in range(k):
                self.tx_iov[j].iov_base = self.packets + (self.r_sent + j) * self.stride
                self.tx_iov[j].iov_len = self.lengths[self.r_sent + j]
            clock_gettime(CLOCK_REALTIME, &wall)
            stamp = (wall.tv_sec - self.epoch) + wall.tv_nsec * 1e-9
            status = sendmmsg(self.tx_fd, self.tx_msgs, <unsigned int>k, 0)
            t_call = clock_seconds(CLOCK_MONOTONIC) - now
            if t_call > self.r_max_send_call:
                self.r_max_send_call = t_call
            if status > 0:
                for j in range(status):
                    self.send_times[self.r_sent + j] = stamp
                if self.r_sent == 0:
                    self.r_t_first = now
                self.r_sent += status
                self.r_next_time += status / self.r_rate
            elif errno != EAGAIN and errno != EINTR:
                self.r_send_errors += 1      # e.g. ECONNREFUSED: the packet is skipped
                self.r_sent += 1
                self.r_next_time += 1.0 / self.r_rate
            if self.r_sent >= n:
                self.r_t_last = now
                self.r_deadline = now + self.r_drain
        t_call = clock_seconds(CLOCK_MONOTONIC)
        self.r_backlog = False
        self.r_got += self._drain(self.r_base, n, self.r_counters, self.r_seq_delta, self.r_ssrcs)
        t_call = clock_seconds(CLOCK_MONOTONIC) - t_call
        if t_call > self.r_max_drain:
            self.r_max_drain = t_call
        if self.r_sent >= n and (self.r_got >= self.r_expected or clock_seconds(CLOCK_MONOTONIC) >= self.r_deadline):
            self.r_done = True

    cdef dict _finish(self):
        """The run's counts and latencies (microseconds)."""
        cdef Py_ssize_t n = self.r_n
        cdef double rate = self.r_rate
        cdef int r
        self.next_index += n
        send = np.array(<double[:n]>self.send_times)
        recv = np.array(<double[:self.n_rx * n]>self.recv_times).reshape(self.n_rx, n)
        received = [int(np.count_nonzero(recv[r])) for r in range(self.n_rx)]
        ok = (recv > 0) & (send > 0)[None, :]
        latency_us = ((recv - send[None, :])[ok]) * 1e6
        sent_ok = int(np.count_nonzero(send))
        result = {
            "offered_pps": rate,
            "duration_s": n / rate,
            "burst": self.r_burst,
            "sent": sent_ok,
            "send_errors": int(self.r_send_errors),
            "achieved_pps": (n - 1) / (self.r_t_last - self.r_t_first) if self.r_t_last > self.r_t_first else 0.0,
            "max_lag_ms": self.r_max_lag * 1e3,
            "max_send_call_ms": self.r_max_send_call * 1e3,
            "max_receive_pass_ms": self.r_max_drain * 1e3,
            "received": received,
            "loss": 1.0 - sum(received) / float(max(1, sent_ok * self.n_rx)),
            "strays": int(self.r_counters[0]),
            "duplicates": int(self.r_counters[1]),
            "malformed": int(self.r_counters[2]),
            "seq_breaks": int(self.r_counters[3]),
            "ssrc_changes": int(self.r_counters[4]),
            "seq_deltas": [int(self.r_seq_delta[r]) for r in range(self.n_rx)],
            "ssrcs": [int(self.r_ssrcs[r]) for r in range(self.n_rx)],
            "receiver_overflows": sum(<uint32_t>(self.rx_drops[r] - self.rx_drops_base[r]) for r in range(self.n_rx)),
            "first_index": int(self.r_base),
        }
        if latency_us.size:
            p = np.percentile(latency_us, [50, 90, 99, 99.9])
            result.update(latency_p50_us=float(p[0]), latency_p90_us=float(p[1]),
                          latency_p99_us=float(p[2]), latency_p999_us=float(p[3]),
                          latency_max_us=float(latency_us.max()))
        if self.r_capture:
            result["samples"] = [
                [bytes(<uint8_t[:self.sample_lengths[r * self.max_samples + s]]>(self.samples + (r * self.max_samples + s) * SLOT))
                 for s in range(self.sample_count[r])]
                for r in range(self.n_rx)
            ]
        return result


cdef double IDLE_MIN = 50e-6     # sleep only when the next burst is at least this far off (s)
cdef double IDLE_MARGIN = 20e-6  # and wake this much before it
cdef double IDLE_MAX = 1e-3      # at most this long: the receivers are drained every millisecond


def run_together(gens, *, int burst=8, double drain=0.3, bint capture=False, bint idle_sleep=False,
                 double max_catch_up=1e300) -> list:
    """Run several prepared generators at once from this thread, each at its own rate (for
    publishers of several conferences or daemons); their first bursts are spread over one
    burst interval. With `idle_sleep` the loop sleeps until the next burst is due (at most
    1 ms) unless a receiver has more waiting than one pass takes: the receivers are drained
    in larger batches, and the load uses only the CPU it needs on a core it shares. A generator
    more than `max_catch_up` s behind its schedule (this process waited for a core) lets
    the schedule slip instead of sending what is late in one burst; its achieved_pps says
    by how much. Returns each generator's run() result, in order."""
    cdef tuple all_gens = tuple(gens)
    cdef Py_ssize_t count = len(all_gens), i, running
    cdef bint backlog
    cdef LoadGen gen
    cdef double start, now, due, pause
    cdef timespec nap
    if count == 0:
        return []
    for gen in all_gens:
        if gen.prepared <= 0:
            raise RuntimeError("prepare() every generator first")
    start = clock_seconds(CLOCK_MONOTONIC) + 0.002
    for i in range(count):
        gen = all_gens[i]
        gen._begin(burst, drain, capture, start + i * burst / (gen.prepared_rate * count), max_catch_up)
    running = count
    while running:
        backlog = False
        running = 0
        due = 1e300
        for i in range(count):
            gen = all_gens[i]
            if gen.r_done:
                continue
            gen._step()
            backlog = backlog or gen.r_backlog
            if not gen.r_done:
                running += 1
                if gen.r_sent < gen.r_n and gen.r_next_time < due:
                    due = gen.r_next_time
        if idle_sleep and running and not backlog:
            now = clock_seconds(CLOCK_MONOTONIC)
            pause = min(due - now - IDLE_MARGIN, IDLE_MAX)
            if due - now >= IDLE_MIN and pause > 0:
                nap.tv_sec = 0
                nap.tv_nsec = <long>(pause * 1e9)
                with nogil:
                    nanosleep(&nap, NULL)
    return [gen._finish() for gen in all_gens]
