"""What the forwarding benchmark holds fixed: the suites and fan-outs it measures, the packet
size, the loss limit of a passing trial, the load process's ceilings and the targets."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM")
SHORT_SUITE = {"AES_CM_128_HMAC_SHA1_80": "AES-CM", "AEAD_AES_128_GCM": "GCM"}
FANOUTS = (1, 3, 10)
RTP_SIZE = 1200
LOSS_LIMIT = 0.005
PUBLISHER_SSRC = 0x5EED0001
# Offered input rates the load process sustains (send + receive on one core), per fan-out.
CEILING = {1: 300_000, 3: 160_000, 10: 64_000}

# Targets the issue sets.
TARGET_VS_REFERENCE = 0.9
TARGET_VS_RTPENGINE = 3.0
TARGET_P99_MS = 0.5
TARGET_SCALE = 0.85
