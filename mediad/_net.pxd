# C declarations of the compiled packet code (the forwarding core, and the benchmark's load
# generator and reference relay): batched UDP I/O, clocks, poll, big-endian field access and
# libsrtp's protect/unprotect signature.
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    enum:
        CLOCK_MONOTONIC
        CLOCK_REALTIME


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t htonl(uint32_t)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(msghdr* msg)
    cmsghdr* CMSG_NXTHDR(msghdr* msg, cmsghdr* cmsg)
    unsigned char* CMSG_DATA(cmsghdr* cmsg)
    size_t CMSG_SPACE(size_t length)
    int recvmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags, timespec* tmo)
    int sendmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags)
    ssize_t sendto(int fd, const void* buf, size_t length, int flags, const void* addr, socklen_t addrlen)
    int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen)
    enum:
        AF_INET
        MSG_DONTWAIT
        MSG_TRUNC
        SOL_SOCKET
        SO_TIMESTAMPNS
        SCM_TIMESTAMPNS
        SO_RXQ_OVFL


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    enum:
        POLLIN


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR


# libsrtp 2.x: srtp_protect / srtp_unprotect (and the _rtcp variants) all have this shape;
# protect writes up to SRTP_MAX_TRAILER_LEN (144) bytes past the packet.
ctypedef int (*srtp_call)(void* ctx, void* packet, int* length) noexcept nogil


cdef inline double clock_seconds(int clk_id) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk_id, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline uint16_t load16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t load32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void store16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void store32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF
