"""Who may use `pneumoscan serve`: the API key check and the per-key rate limit, as one pure ASGI middleware.

It sits outside the admission middleware (pneumoscan.serving.admission), so the checks run in this order:
no valid key -> 401 (with `WWW-Authenticate: Bearer`); over the key's rate limit -> 429 (with Retry-After);
only then may admission answer 503. A client without a key therefore never takes a place in the admission
queue, nor learns how busy the server is. The open paths (the page and /health, which the page needs to learn
that a key is wanted) pass without a key. The id of the key that authenticated a request (never the key or its
digest) is left in the scope under KEY_ID, for the access log.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from pneumoscan.serving.admission import answer_json
from pneumoscan.serving.keys import KeyStore
from pneumoscan.serving.ratelimit import RateLimiter

KEY_ID = "pneumoscan.key"  # the scope key holding the authenticated key's id
OPEN_PATHS = frozenset({"/", "/health"})  # the page must load to ask for the key; /health says whether one is needed

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or None."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class KeyGate:
    """Pure ASGI middleware: 401 without a valid key, 429 over the key's rate limit, else on to the app."""

    def __init__(self, app: Any, keys: KeyStore, limiter: RateLimiter, open_paths: frozenset[str] = OPEN_PATHS
                 ) -> None:
        self.app, self.keys, self.limiter, self.open_paths = app, keys, limiter, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        key_id = None if token is None else self.keys.identify(token)
        if key_id is None:
            await self._refuse(scope, send, token is not None)
            return
        scope[KEY_ID] = key_id
        wait = self.limiter.take(key_id)
        if wait is not None and scope["type"] == "http":
            await answer_json(send, 429, f"rate limit of {self.limiter.per_minute:g} requests a minute for this "
                                         f"key; retry after {wait} s", [(b"retry-after", str(wait).encode())])
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, presented: bool) -> None:
        if scope["type"] == "websocket":  # closed before it is accepted: the server answers 403
            await send({"type": "websocket.close", "code": 1008})
            return
        challenge = b'Bearer realm="pneumoscan"' + (b', error="invalid_token"' if presented else b"")
        detail = ("invalid API key" if presented else "an API key is needed") + ": send the header " \
                 "'Authorization: Bearer <key>'"
        await answer_json(send, 401, detail, [(b"www-authenticate", challenge)])
