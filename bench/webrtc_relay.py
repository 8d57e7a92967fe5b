"""Charter's forwarding core for the benchmark with its endpoints and routes made as the
media daemon makes a browser's (bench/charter_relay.py, `webrtc`)."""
from __future__ import annotations

import uvloop

from bench.charter_relay import serve
from bench.relay_process import load_config


def main() -> None:
    uvloop.run(serve(load_config(), webrtc=True))


if __name__ == "__main__":
    main()
