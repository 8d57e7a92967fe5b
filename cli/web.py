"""`charter web`: the conference page and its signalling gateway, for browsers.

An aiohttp server that is a gRPC client of the controller and nothing more. It serves the
page (cli/static/) and, per browser, one WebSocket of JSON messages that it translates into
the controller's API:

    page -> gateway                          gateway -> page
    {type: join, conference, name, offer}    {type: joined, conference, participant, name, answer}
        GetConference (CreateConference          then, from WatchConference as that participant:
        when NOT_FOUND), Join with the offer     {type: participant_joined, participant, name, initial}
    {type: answer, sdp, version}  -> Answer  {type: participant_left, participant, reason}
    {type: leave}                 -> Leave   {type: offer, sdp, version}      (session_offer)
    the WebSocket closes          -> Leave   {type: ended, reason}            (conference_ended)
                                             {type: removed, reason}  (this participant left: "gone")
                                             {type: moved, daemon, reason}  (join again: the
                                                 conference is on another media daemon)
                                             {type: left}             (after its leave)
                                             {type: error, call, code, detail}  (status name and detail)

It keeps no state beyond its open sockets: what a socket joined as, and that watch stream.
On SIGTERM it closes every socket, which makes each of their participants Leave, and exits 0.
Given several controllers (sharing one store), it uses one and moves to the next when that
one stops answering; a page's watch stream then resumes there after the last event it had
(WatchConferenceRequest.after_sequence), so the page misses nothing and sees nothing twice.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import grpc
from aiohttp import WSMsgType, web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charter import logs
from charter.config import LOG_FORMATS, LOG_LEVELS, env
from charter.controllers import controller_target
from charter.serving import stop_event
from charter.tokens import ApiKeys, Grant, call_metadata
from charter.v1 import controller_pb2 as pb
from charter.v1 import controller_pb2_grpc

log = logging.getLogger("cli.web")

STATIC = Path(__file__).with_name("static")
PREFIX = "CHARTER_WEB_"
CALL_TIMEOUT = 10.0
RESUME_SECONDS = 30.0
"""How long a broken watch stream is tried again (a controller gone: another takes over)."""
RESUME_PAUSE = (0.2, 2.0)
# The largest message a page sends: an SDP offer of a few kilobytes.
MAX_MESSAGE = 1 << 20

SESSIONS: web.AppKey[set[BrowserSession]] = web.AppKey("sessions")
KEYS: web.AppKey[ApiKeys | None] = web.AppKey("keys")
API: web.AppKey[controller_pb2_grpc.ConferenceServiceStub] = web.AppKey(
    "api", controller_pb2_grpc.ConferenceServiceStub
)
CHANNEL: web.AppKey[grpc.aio.Channel] = web.AppKey("channel", grpc.aio.Channel)
SEVERAL: web.AppKey[bool] = web.AppKey("several controllers", bool)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=env(PREFIX, "LISTEN", "127.0.0.1:8080"),
                        help=f"HTTP address of the page, host:port [{PREFIX}LISTEN, default %(default)s]")
    parser.add_argument("--api-keys", default=env(PREFIX, "API_KEYS", ""),
                        help=f"the controller's API keys file: the gateway signs each page a token for the conference "
                        f"it joins; empty: calls carry no token (a controller with --auth none) [{PREFIX}API_KEYS]")
    parser.add_argument("--controller", default=env(PREFIX, "CONTROLLER", "127.0.0.1:50051"),
                        help=f"the controller's gRPC address, or several (IP:port,IP:port: controllers sharing one "
                        f"store, used in turn) [{PREFIX}CONTROLLER, default %(default)s]")
    parser.add_argument("--log-level", default=env(PREFIX, "LOG_LEVEL", "info"), choices=LOG_LEVELS,
                        help=f"[{PREFIX}LOG_LEVEL, default %(default)s]")
    parser.add_argument("--log-format", default=env(PREFIX, "LOG_FORMAT", "json"), choices=LOG_FORMATS,
                        help=f"[{PREFIX}LOG_FORMAT, default %(default)s]")


class GatewayError(Exception):
    """Why a message or a call failed, as the page is told: the status name and its detail."""

    def __init__(self, call: str, code: str, detail: str) -> None:
        super().__init__(f"{call}: {code}: {detail}")
        self.call = call
        self.code = code
        self.detail = detail


class BrowserSession:
    """One browser's WebSocket: at most one participant at a time, and its watch stream."""

    def __init__(
        self, ws: web.WebSocketResponse, api: controller_pb2_grpc.ConferenceServiceStub, keys: ApiKeys | None = None,
        *, wait_for_ready: bool = False,
    ) -> None:
        self.keys = keys
        self.token = ""
        """What this page's calls carry: a token for its conference (and then its participant)."""
        self.ws = ws
        self.api = api
        self.conference_id = ""
        self.participant_id = ""
        self.watch: asyncio.Task[None] | None = None
        self.wait_for_ready = wait_for_ready
        """With several controllers: a call made while the channel moves to the next waits for it."""

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_json(message)

    async def call(self, method: str, request: Any) -> Any:
        """A unary call of ConferenceService; GatewayError naming it and its status if it fails."""
        try:
            return await getattr(self.api, method)(request, timeout=CALL_TIMEOUT, metadata=call_metadata(self.token),
                                                   wait_for_ready=self.wait_for_ready)
        except grpc.aio.AioRpcError as error:
            raise GatewayError(method, error.code().name, error.details() or "") from None

    async def serve(self) -> None:
        """Every message of the socket, one at a time, until it closes; then Leave."""
        try:
            async for message in self.ws:
                if message.type == WSMsgType.TEXT:
                    await self.handle(message.data)
        finally:
            try:
                await self.leave(reply=False)
            except GatewayError as error:
                log.warning("Leave of a closed page failed", extra={"code": error.code, "detail": error.detail})

    async def handle(self, text: str) -> None:
        try:
            try:
                message = json.loads(text)
            except ValueError:
                raise GatewayError("gateway", "INVALID_ARGUMENT", "message: not JSON") from None
            if not isinstance(message, dict):
                raise GatewayError("gateway", "INVALID_ARGUMENT", "message: not a JSON object")
            kind = message.get("type")
            if kind == "join":
                await self.join(_text(message, "conference"), _text(message, "name", required=False),
                                _text(message, "offer"))
            elif kind == "answer":
                await self.answer(_text(message, "sdp"), message.get("version"))
            elif kind == "leave":
                await self.leave(reply=True)
            else:
                raise GatewayError("gateway", "INVALID_ARGUMENT", f"type: {kind!r} is not join, answer or leave")
        except GatewayError as error:
            log.info("error reported to the page", extra={"call": error.call, "code": error.code,
                                                           "detail": error.detail})
            await self.send({"type": "error", "call": error.call, "code": error.code, "detail": error.detail})

    async def join(self, conference_id: str, name: str, offer: str) -> None:
        if self.participant_id:
            raise GatewayError("Join", "FAILED_PRECONDITION",
                               f"this page already joined {self.conference_id} as {self.participant_id}: leave first")
        self._grant(Grant(conference_id, ("create", "read", "join", "end")))
        created = await self._ensure_conference(conference_id)
        try:
            reply = await self.call("Join", pb.JoinRequest(conference_id=conference_id, display_name=name,
                                                           offer=offer))
        except GatewayError:
            if created:  # an empty conference would stay: it ends only when its last participant leaves
                with contextlib.suppress(GatewayError):
                    await self.call("EndConference", pb.EndConferenceRequest(conference_id=conference_id))
            raise
        participant = reply.participant
        if not participant.webrtc:
            # A controller that does not know JoinRequest.offer joined a participant without media.
            with contextlib.suppress(GatewayError):
                await self.call("Leave", pb.LeaveRequest(conference_id=conference_id,
                                                         participant_id=participant.participant_id))
            raise GatewayError("Join", "UNIMPLEMENTED", "the controller did not take the offer (the participant "
                               "it joined is not WebRTC: Participant.webrtc is false), so it does not serve browsers")
        self.conference_id, self.participant_id = conference_id, participant.participant_id
        # From now on the page acts as its participant only; it is handed the token too.
        self._grant(Grant(conference_id, ("join", "watch", "read"), self.participant_id))
        log.info("joined", extra={"conference_id": conference_id, "participant_id": self.participant_id,
                                  "conference_created": created})
        await self.send({"type": "joined", "conference": conference_id, "participant": self.participant_id,
                         "name": participant.display_name, "answer": participant.sdp, "token": self.token})
        self.watch = asyncio.create_task(self._watch(conference_id, self.participant_id))

    def _grant(self, grant: Grant) -> None:
        """The token the page's calls carry from now on (none without API keys)."""
        if self.keys is not None:
            self.token = self.keys.token(grant, ttl=12 * 3600)

    async def _ensure_conference(self, conference_id: str) -> bool:
        """Create the conference if it does not exist; True when this call created it."""
        try:
            await self.call("GetConference", pb.GetConferenceRequest(conference_id=conference_id))
            return False
        except GatewayError as error:
            if error.code != "NOT_FOUND":
                raise
        try:
            await self.call("CreateConference", pb.CreateConferenceRequest(conference_id=conference_id))
            return True
        except GatewayError as error:
            if error.code == "ALREADY_EXISTS":  # another page created it meanwhile
                return False
            raise

    async def answer(self, sdp: str, version: object) -> None:
        if not self.participant_id:
            raise GatewayError("Answer", "FAILED_PRECONDITION", "this page has not joined")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise GatewayError("Answer", "INVALID_ARGUMENT", "version: the version of the offer answered, an integer")
        await self.call("Answer", pb.AnswerRequest(conference_id=self.conference_id,
                                                   participant_id=self.participant_id, sdp=sdp, version=version))

    async def leave(self, *, reply: bool) -> None:
        """Leave (the page asked, or its socket closed) and stop watching."""
        conference_id, participant_id = self.conference_id, self.participant_id
        self._forget()
        if participant_id:
            try:
                await self.call("Leave", pb.LeaveRequest(conference_id=conference_id, participant_id=participant_id))
                log.info("left", extra={"conference_id": conference_id, "participant_id": participant_id})
            except GatewayError as error:
                if error.code != "NOT_FOUND":  # NOT_FOUND: gone already, nothing to leave
                    raise
        if reply:
            await self.send({"type": "left"})

    def _forget(self) -> None:
        self.conference_id = self.participant_id = ""
        if self.watch is not None and self.watch is not asyncio.current_task():
            self.watch.cancel()
        self.watch = None

    async def _watch(self, conference_id: str, participant_id: str) -> None:
        """Forward the conference's events to the page. A stream that breaks because its
        controller went away is opened again (on another controller, or the same one back)
        after the last event forwarded, for up to RESUME_SECONDS."""
        last = 0
        broken_since: float | None = None
        pause = RESUME_PAUSE[0]
        loop = asyncio.get_running_loop()
        while True:
            request = pb.WatchConferenceRequest(conference_id=conference_id, participant_id=participant_id,
                                                after_sequence=last)
            try:
                stream: Any = self.api.WatchConference(request, metadata=call_metadata(self.token),
                                                       wait_for_ready=self.wait_for_ready)  # an async iterator
                async for event in stream:
                    broken_since, pause = None, RESUME_PAUSE[0]
                    last = max(last, event.sequence)  # initial events carry the state's sequence
                    if not await self._forward(event, participant_id):
                        return
                return
            except grpc.aio.AioRpcError as error:
                now = loop.time()
                if broken_since is None:
                    broken_since = now
                if error.code() == grpc.StatusCode.UNAVAILABLE and last and now - broken_since < RESUME_SECONDS:
                    log.info("watch stream broken: opening it again", extra={
                        "conference_id": conference_id, "after_sequence": last, "detail": error.details() or ""})
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, RESUME_PAUSE[1])
                    continue
                if error.code() != grpc.StatusCode.CANCELLED:
                    await self.send({"type": "error", "call": "WatchConference", "code": error.code().name,
                                     "detail": error.details() or ""})
                return

    async def _forward(self, event: pb.ConferenceEvent, participant_id: str) -> bool:
        """Tell the page of one event; False when the participant is no longer in the conference."""
        kind = event.WhichOneof("event")
        if kind == "participant_joined":
            summary = event.participant_joined.participant
            await self.send({"type": "participant_joined", "participant": summary.participant_id,
                             "name": summary.display_name, "initial": event.initial})
        elif kind == "participant_left":
            left = event.participant_left
            if left.participant_id == participant_id:
                self._forget()
                await self.send({"type": "removed", "reason": left.reason or "left"})
                return False
            await self.send({"type": "participant_left", "participant": left.participant_id,
                             "reason": left.reason})
        elif kind == "session_offer":
            offer = event.session_offer
            await self.send({"type": "offer", "sdp": offer.sdp, "version": offer.version})
        elif kind == "participant_moved" and event.participant_moved.participant_id == participant_id:
            # Its conference went to another media daemon: the page joins again (new ICE and
            # DTLS with that daemon).
            moved = event.participant_moved
            await self.send({"type": "moved", "daemon": moved.daemon_id, "reason": moved.reason})
        elif kind == "conference_ended":
            self._forget()
            await self.send({"type": "ended", "reason": event.conference_ended.reason})
            return False
        return True


def _text(message: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = message.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise GatewayError("gateway", "INVALID_ARGUMENT", f"{name}: text{' (required)' if required else ''}")
    return value


# --------------------------------------------------------------------------------------
# The HTTP server


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    """200 when the controller reports SERVING, 503 otherwise (what `charter up` waits for)."""
    stub = health_pb2_grpc.HealthStub(request.app[CHANNEL])
    check: grpc.aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    check = stub.Check  # type: ignore[attr-defined]
    try:
        reply = await check(health_pb2.HealthCheckRequest(), timeout=2.0)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as error:
        status = error.code().name
    return web.json_response({"gateway": "SERVING", "controller": status}, status=200 if status == "SERVING" else 503)


async def websocket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    session = BrowserSession(ws, request.app[API], request.app[KEYS], wait_for_ready=request.app[SEVERAL])
    sessions = request.app[SESSIONS]
    sessions.add(session)
    try:
        await session.serve()
    finally:
        sessions.discard(session)
    return ws


def make_app(controller: str, keys: ApiKeys | None = None) -> web.Application:
    app = web.Application()
    app[KEYS] = keys
    target, options = controller_target(controller)
    app[SEVERAL] = bool(options)
    sessions: set[BrowserSession] = set()
    app[SESSIONS] = sessions

    async def channel(app: web.Application) -> Any:
        app[CHANNEL] = grpc.aio.insecure_channel(target, options)
        app[API] = controller_pb2_grpc.ConferenceServiceStub(app[CHANNEL])
        yield
        await app[CHANNEL].close()

    async def close_sockets(app: web.Application) -> None:
        # Each socket's handler then Leaves for its participant, while the channel is open.
        open_sessions: set[BrowserSession] = app[SESSIONS]
        for session in list(open_sessions):
            await session.ws.close(code=1001, message=b"charter web is shutting down")

    app.cleanup_ctx.append(channel)
    app.on_shutdown.append(close_sockets)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", websocket)
    app.router.add_static("/static/", STATIC)
    return app


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--listen {listen!r} is not host:port")
    return host, int(port)


async def serve(args: argparse.Namespace) -> None:
    host, port = split_listen(args.listen)
    stop = stop_event()
    try:
        keys = ApiKeys(args.api_keys) if args.api_keys else None
    except ValueError as error:
        raise SystemExit(f"charter web: {error}") from None
    runner = web.AppRunner(make_app(args.controller, keys), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=CALL_TIMEOUT)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise SystemExit(f"charter web: cannot listen on {args.listen}: {error.strerror or error}") from None
    log.info("web gateway serving", extra={"listen": args.listen, "controller": args.controller,
                                           "url": f"http://{host}:{port}/"})
    await stop.wait()
    await runner.cleanup()
    log.info("web gateway stopped")


def run(args: argparse.Namespace) -> int:
    import uvloop

    logs.setup("web", args.log_level, args.log_format)
    uvloop.run(serve(args))
    return 0
