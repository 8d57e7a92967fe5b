"""A conference page as `charter web` sees it, for the tests: its WebSocket's JSON replies
(with the watch stream's events that come between set aside) and a real WebRTC offer."""
from __future__ import annotations

from typing import Any

import aiohttp

from aiortc_peer import moving_pattern_track

TIMEOUT = aiohttp.ClientTimeout(total=20)

EVENTS = ("participant_joined", "participant_left", "offer")
"""What the watch stream tells the page meanwhile, in no set order with the replies."""


async def reply_to(ws: aiohttp.ClientWebSocketResponse, message: Any) -> dict[str, Any]:
    """The gateway's reply to `message`, events of the watch stream that come between skipped."""
    await (ws.send_str(message) if isinstance(message, str) else ws.send_json(message))
    while True:
        reply = dict(await ws.receive_json(timeout=15))
        if reply.get("type") not in EVENTS:
            return reply


async def browser_offer() -> tuple[Any, str]:
    """A real WebRTC offer (aiortc): a camera, sent only."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver(moving_pattern_track(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp
