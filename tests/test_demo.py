"""`charter demo`: its RFC 3550 reception statistics, and whole runs as a newcomer starts it
(no terminal: progress lines and the summary)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cli.demo_media import StreamStats
from media_processes import FFMPEG


def test_loss_counts_gaps_across_the_sequence_wrap() -> None:
    stats = StreamStats(90000)
    for i, seq in enumerate([65533, 65534, 65535, 0, 2, 3]):  # 1 is missing
        stats.add(seq, 1000 * i, i * 0.01, 100)
    assert (stats.packets, stats.expected, stats.lost) == (6, 7, 1)
    assert stats.loss_fraction == pytest.approx(1 / 7)


def test_late_and_duplicate_packets_do_not_move_the_highest_sequence() -> None:
    stats = StreamStats(90000)
    for seq in [10, 12, 11, 12]:
        stats.add(seq, 0, 0.0, 100)
    assert (stats.expected, stats.packets, stats.lost) == (3, 4, -1)
    assert stats.loss_fraction == 0.0


def test_steady_stream_has_no_jitter_and_a_late_packet_shows() -> None:
    stats = StreamStats(48000)
    for i in range(100):
        stats.add(i, 960 * i, 0.020 * i, 100)
    assert stats.jitter_ms == pytest.approx(0.0, abs=1e-6)
    stats.add(100, 960 * 100, 0.020 * 100 + 0.016, 100)  # 16 ms late
    assert stats.jitter_ms == pytest.approx(1.0, rel=1e-3)  # J += (D - J) / 16


def test_timestamp_wrap_is_not_jitter() -> None:
    stats = StreamStats(90000)
    stats.add(1, (1 << 32) - 3000, 0.0, 100)
    stats.add(2, 0, 3000 / 90000, 100)
    assert stats.jitter_ms < 1.0


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "demo", *args],
        capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "120"},
    )


def test_demo_with_the_built_in_source_ends_cleanly_with_a_summary() -> None:
    result = run_demo("--participants", "3", "--duration", "4", "--source", "builtin")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "built-in RTP source" in output
    # Where a person joins the running demo from a browser: the embedded web gateway's page.
    assert any(line.startswith("join from your browser: http://127.0.0.1:") and "?conference=demo-" in line
               for line in output.splitlines()), output
    assert "Summary" in output
    for receiver, sender in [("alice", "bob"), ("bob", "carol"), ("carol", "alice")]:
        assert any(receiver in line and sender in line and "camera" in line for line in output.splitlines()), output
    assert "OK: every participant received every other participant's tracks" in output
    # Every stream's summary row has the daemon's RTT after the jitter (the built-in source
    # sends a sender report every second, each receiver answers it).
    rows = [line for line in output.splitlines() if "camera" in line or "microphone" in line]
    assert len(rows) == 12 and all(line.count(" ms") == 2 for line in rows), output
    assert "Charter stopped cleanly." in output


@pytest.mark.peers
@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")
def test_demo_with_ffmpeg_sources() -> None:
    result = run_demo("--participants", "2", "--duration", "4")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ffmpeg test sources (VP8 + Opus)" in output
    assert "OK: every participant received" in output and "Charter stopped cleanly." in output


def test_bad_arguments_are_refused_before_anything_starts() -> None:
    result = run_demo("--participants", "1")
    assert result.returncode == 2
    assert "--participants must be 2 to 16" in result.stdout + result.stderr
