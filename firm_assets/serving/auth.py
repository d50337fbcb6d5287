"""Bearer-token check in front of everything else: a request to a guarded path without the token is
answered 401 from its headers alone, before its body is read, so an unauthenticated client cannot
make the server receive, buffer or parse a large or malformed body."""

from __future__ import annotations

import json
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send


class BearerMiddleware:
    """Rejects requests to the scoring paths that lack the server's bearer token."""

    def __init__(self, app: ASGIApp, token: str, paths: tuple[str, ...]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and scope.get("path", "").startswith(self.paths)
        sent = dict(scope["headers"]).get(b"authorization", b"") if guarded else b""
        if guarded and not secrets.compare_digest(sent, self.expected):
            body = json.dumps({"detail": "missing or wrong bearer token"}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
