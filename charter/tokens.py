"""Access tokens of the public API (ConferenceService): a JWT (RFC 7519, HS256, PyJWT)
signed with an API key's secret, naming the key in its header (`kid`), with an expiry and
the grants of its holder, as the best SFUs' access tokens do:

    {"kid": "default"} . {"exp": ..., "iat": ..., "grants": {"conference": "standup",
                          "actions": ["join", "watch"], "participant": "alice"}}

`conference` "*" is every conference; `participant` (optional) is the one participant the
holder may act as. Actions: create, end, read (Get/ListConferences), join (Join, Answer,
GetParticipant, Leave of its participant), watch. A client sends it as gRPC metadata
`authorization: Bearer <token>`."""
from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt

from charter.errors import PermissionDenied, Unauthenticated

ACTIONS = ("create", "end", "read", "join", "watch")
ALGORITHM = "HS256"
MAX_TTL = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Grant:
    conference: str
    """A conference id, or "*" for every one."""
    actions: tuple[str, ...]
    participant: str = ""
    """The one participant the holder acts as; empty: any."""
    key_id: str = ""
    """The API key that signed it (set when a token is verified)."""

    @property
    def holder(self) -> str:
        """Who holds it, as the controller's limits count callers: the signing key and what
        the grant names (every page of a gateway is its own caller; an operator's token of
        one key is one caller wherever it calls from)."""
        return f"token {self.key_id}:{self.conference}" + (f"/{self.participant}" if self.participant else "")

    def allows(self, action: str, conference_id: str, participant_id: str = "") -> None:
        """PermissionDenied saying why unless the grant covers this."""
        if self.conference not in ("*", conference_id):
            raise PermissionDenied(f"the token grants conference {self.conference!r}, not {conference_id!r}")
        if action not in self.actions:
            raise PermissionDenied(f"the token grants {', '.join(self.actions) or 'nothing'} on conference "
                                   f"{self.conference!r}, not {action}")
        if self.participant and participant_id != self.participant:
            raise PermissionDenied(f"the token acts as participant {self.participant!r}, not "
                                   f"{participant_id or 'an unnamed one'!r}")


def issue(key_id: str, secret: bytes, grant: Grant, ttl: float = 3600.0, now: float | None = None) -> str:
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be 1 s to {MAX_TTL:.0f} s")
    unknown = [a for a in grant.actions if a not in ACTIONS]
    if unknown:
        raise ValueError(f"unknown actions {unknown}: one of {', '.join(ACTIONS)}")
    issued = int(time.time() if now is None else now)
    claims = {"iat": issued, "exp": issued + int(ttl),
              "grants": {"conference": grant.conference, "actions": list(grant.actions),
                         "participant": grant.participant}}
    return str(jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": key_id}))


def verify(token: str, keys: dict[str, bytes]) -> Grant:
    """The grant of a valid token; Unauthenticated saying what is wrong with it otherwise."""
    try:
        key_id = jwt.get_unverified_header(token).get("kid", "")
    except jwt.PyJWTError:
        raise Unauthenticated("the authorization token is not a JWT: get one with `charter token`") from None
    secret = keys.get(str(key_id))
    if secret is None:
        raise Unauthenticated(f"the token's API key {str(key_id)[:40]!r} is not one this controller knows")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("the token has expired: get a new one") from None
    except jwt.InvalidSignatureError:
        raise Unauthenticated("the token's signature does not verify") from None
    except jwt.PyJWTError as error:
        raise Unauthenticated(f"the token is not valid: {error}") from None
    grants = claims.get("grants")
    if not isinstance(grants, dict):
        raise Unauthenticated("the token carries no grants")
    actions = grants.get("actions", [])
    return Grant(str(grants.get("conference", "")), tuple(str(a) for a in actions if isinstance(a, str)),
                 str(grants.get("participant", "")), str(key_id))


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The token of `authorization: Bearer <token>` metadata; Unauthenticated without one."""
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("authorization must be 'Bearer <token>'")
    raise Unauthenticated("this call needs a token: metadata 'authorization: Bearer <token>' (charter token)")


class ApiKeys:
    """The API keys (id -> secret) a controller accepts tokens of, in a JSON file readable by
    its owner only; made with one key, "default", on first use."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as f:
                json.dump({"default": base64.b64encode(secrets.token_bytes(32)).decode()}, f)
        try:
            data = json.loads(self.path.read_text())
            self.keys = {str(k): base64.b64decode(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError) as error:
            raise ValueError(f"{self.path} is not a file of API keys ({error})") from None
        if not self.keys:
            raise ValueError(f"{self.path} holds no API key")

    def token(self, grant: Grant, ttl: float = 3600.0, key_id: str = "") -> str:
        key_id = key_id or next(iter(self.keys))
        return issue(key_id, self.keys[key_id], grant, ttl)


Metadata = tuple[tuple[str, str | bytes], ...]


def call_metadata(token: str) -> Metadata | None:
    """The gRPC metadata a client sends its token in (None without one)."""
    return (("authorization", f"Bearer {token}"),) if token else None


class _WithToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.metadata = call_metadata(token) or ()

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + self.metadata))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def with_token(token: str) -> list[Any]:
    """Interceptors of a grpc.aio channel whose every call carries `token` (none: [])."""
    return [_WithToken(token)] if token else []
