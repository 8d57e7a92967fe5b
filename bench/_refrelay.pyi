"""Types of the compiled reference relay (bench/_refrelay.pyx)."""
import socket

class RefRelay:
    packets_in: int
    packets_out: int
    dropped: int
    send_errors: int
    batches: int
    idle_wait_ms: int
    def __init__(
        self,
        pub_sock: socket.socket,
        suite: str,
        pub_key: bytes,
        subscribers: list[tuple[socket.socket, bytes, int, tuple[str, int]]],
    ) -> None: ...
    def run(self, seconds: float) -> None: ...
