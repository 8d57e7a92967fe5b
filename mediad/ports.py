"""UDP ports of a media daemon: one bound socket per endpoint, from a configured range."""
from __future__ import annotations

import collections
import errno
import socket

# Receive and send buffers per endpoint socket. The default 208 KiB holds under 2 ms of a busy
# publisher at 100k pps; net.core.rmem_max here is 4 MiB.
BUFFER_BYTES = 1 << 20


class PortsExhausted(Exception):
    pass


class PortAllocator:
    """Hands out bound, non-blocking UDP sockets on `ip`, ports `first`..`last`.

    Released ports go to the back of the queue, so a port is reused as late as possible (a
    late packet of a previous endpoint then rarely reaches a new one). A port some other
    process holds is skipped and tried again later.
    """

    def __init__(self, ip: str, first: int, last: int) -> None:
        if not 0 < first <= last <= 65535:
            raise ValueError(f"port range {first}-{last} is not within 1-65535")
        self.ip = ip
        self.first = first
        self.last = last
        self._free: collections.deque[int] = collections.deque(range(first, last + 1))
        self._used: set[int] = set()

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def allocate(self) -> socket.socket:
        for _ in range(len(self._free)):
            port = self._free.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
                sock.setblocking(False)
                sock.bind((self.ip, port))
            except OSError as error:
                sock.close()
                self._free.append(port)
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._used.add(port)
            return sock
        raise PortsExhausted(
            f"no free UDP port in {self.ip}:{self.first}-{self.last} ({len(self._used)} in use by endpoints)"
        )

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)
