"""Runs the reference relay (bench/_refrelay.pyx) in its own process for the benchmark."""
from __future__ import annotations

import signal
import sys
import threading

from bench._refrelay import RefRelay
from bench.relay_process import announce, load_config, reply, udp_socket


def main() -> None:
    config = load_config()
    publisher = udp_socket()
    subscribers = [(udp_socket(), s.key, s.ssrc, s.remote) for s in config.subscribers]
    relay = RefRelay(publisher, config.suite, config.publisher_key, subscribers)
    relay.idle_wait_ms = int(config.extra.get("idle_wait_ms", 20))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def serve_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stats":
                reply({
                    "packets_in": relay.packets_in,
                    "packets_out": relay.packets_out,
                    "dropped": relay.dropped,
                    "send_errors": relay.send_errors,
                    "batches": relay.batches,
                })
        stop.set()

    threading.Thread(target=serve_stdin, daemon=True).start()
    announce(publisher.getsockname())
    while not stop.is_set():
        relay.run(0.2)


if __name__ == "__main__":
    main()
