"""Shared fixtures."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from forward_harness import Harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A mediad._forward Forwarder on a fresh uvloop loop, closed after the test; fails the
    test if the loop reported any exception (nothing may escape the hot path)."""
    import uvloop

    from forward_harness import Harness

    h = Harness(uvloop.new_event_loop())
    try:
        yield h
        h.check_errors()
    finally:
        h.close()


# The suite by layer (docs/architecture.md), with the time each took, in the summary.
LAYERS = {
    "in process: the controller's domain and pure modules": (
        "test_conference_", "test_placement.py", "test_registry.py", "test_store.py", "test_sdp.py",
        "test_rtcp_packets.py", "test_layers.py", "test_webrtc_sdp.py", "test_ice.py", "test_dtls.py",
        "test_sqlite_store.py", "test_fuzz.py",
    ),
    "the forwarding core and its slow paths, RTCP and WebRTC (real sockets, one process)": (
        "test_forward_", "test_rtcp_router.py", "test_webrtc_transports.py", "test_publisher_reports.py",
    ),
    "real processes: controller, daemons, grpcurl, the double's contract": (
        "test_control_", "test_limits.py", "test_grpcurl.py", "test_daemon_contract.py", "test_mediad_", "test_bench_",
        "test_web_gateway.py", "test_auth.py", "test_tls.py", "test_redis_",
    ),
    "real media peers: ffmpeg, GStreamer, aiortc, the demo": (
        "test_peers_", "test_demo.py", "test_webrtc_conference", "test_webrtc_cascade", "test_webrtc_bad_input.py",
        "test_secrets.py", "test_sdp_command.py",
    ),
    "real browsers: headless Chromium": ("test_browser",),
}


def _layer(nodeid: str) -> str:
    name = nodeid.split("::")[0].rsplit("/", 1)[-1]
    for layer, prefixes in LAYERS.items():
        if name.startswith(prefixes):
            return layer
    return "other"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    totals: dict[str, list[float]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                layer = totals.setdefault(_layer(report.nodeid), [0.0, 0])
                layer[0] += report.duration
                layer[1] += report.when == "call"
    if not totals:
        return
    terminalreporter.section("time by layer")
    for layer, (seconds, count) in sorted(totals.items(), key=lambda item: item[1][0]):
        terminalreporter.write_line(f"{seconds:8.2f} s  {int(count):4d} tests  {layer}")
