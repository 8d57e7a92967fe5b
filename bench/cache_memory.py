"""Memory of the video cache (retransmissions and the key frame of fast start), per track.

In one process, a forwarding core on uvloop: `--tracks` publisher endpoints, each with one
video track made as the media daemon makes it (VIDEO_CACHE_PACKETS), each with a subscriber.
Every track is sent twice its cache's worth of full-size packets (1200-byte RTP, a key frame
first), so that every slot was written. The process's RSS before the tracks, after making
them (the cache is reserved, not yet touched), and after the packets: per track, the
measured growth against the bound (VIDEO_CACHE_PACKETS slots of 1500 bytes).

    python -m bench.cache_memory [--tracks 64]

Writes bench/results/cache-memory.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import uvloop

from charter.suites import generate_key
from mediad._forward import Forwarder
from mediad.media import VIDEO_CACHE_PACKETS
from mediad.srtp import create_session

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "cache-memory.json"
SUITE = "AES_CM_128_HMAC_SHA1_80"
PAGE = os.sysconf("SC_PAGE_SIZE")
SLOT = 1500  # bytes a cache slot takes (mediad/_forward.pyx CACHE_SLOT)
PAYLOAD = 1200 - 12


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE // 1024


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


async def measure(tracks: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    forwarder = Forwarder(loop)
    sink = udp()  # every subscriber sends here; nobody reads it (its buffer overflows)
    before = rss_kib()
    senders = []
    for i in range(tracks):
        key = generate_key(SUITE)
        publisher = forwarder.create_endpoint(udp(), rx_suite=SUITE, rx_key=key, tx_suite=SUITE,
                                              tx_key=generate_key(SUITE), name=f"p{i}")
        track = publisher.add_track(1000 + i, kind="video", codec="VP8", cache_packets=VIDEO_CACHE_PACKETS)
        viewer = forwarder.create_endpoint(udp(), rx_suite=SUITE, rx_key=generate_key(SUITE), tx_suite=SUITE,
                                           tx_key=generate_key(SUITE), remote=sink.getsockname()[:2], name=f"v{i}")
        track.subscribe(viewer, 5000 + i)
        sock = udp()
        senders.append((sock, create_session(SUITE, key, inbound=False), publisher.local_address, 1000 + i, track))
    made = rss_kib()
    for sock, session, address, ssrc, track in senders:
        for seq in range(2 * VIDEO_CACHE_PACKETS):
            start = b"\x10\x00" if seq == 0 else b"\x10\x01"
            header = (bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big")
                      + ssrc.to_bytes(4, "big"))
            sock.sendto(session.protect(header + start + bytes(PAYLOAD - 2)), address)
            if seq % 64 == 63:
                await asyncio.sleep(0.002)  # let the core read: the publisher's socket holds a few hundred
        deadline = time.monotonic() + 10
        while track.packets < 2 * VIDEO_CACHE_PACKETS and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    filled = rss_kib()
    received = sum(track.packets for *_, track in senders)
    forwarder.close()
    bound = VIDEO_CACHE_PACKETS * SLOT / 1024
    return {
        "tracks": tracks,
        "cache_packets": VIDEO_CACHE_PACKETS,
        "packets_received": received,
        "packets_sent": tracks * 2 * VIDEO_CACHE_PACKETS,
        "rss_kib": {"before": before, "tracks_made": made, "caches_filled": filled},
        "per_track_kib": {"made": (made - before) / tracks, "filled": (filled - before) / tracks},
        "bound_per_track_kib": bound,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=64)
    args = parser.parse_args()
    result = uvloop.run(measure(args.tracks))
    per = result["per_track_kib"]
    print(f"{result['tracks']} video tracks of {result['cache_packets']} cached packets, "
          f"{result['packets_received']} of {result['packets_sent']} packets received:")
    print(f"  RSS per track once made: {per['made']:.0f} KiB (the cache is reserved, not touched)")
    print(f"  RSS per track once every slot was written: {per['filled']:.0f} KiB "
          f"(bound: {result['bound_per_track_kib']:.0f} KiB of cache slots, plus the endpoints and sockets)")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
