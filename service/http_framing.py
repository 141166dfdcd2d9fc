"""HTTP/1.1 framing at the gateway's door: one reading of every request, and no body read past
the answer.

- **Content-Length with Transfer-Encoding.** A request may say how long its body is in one of
  the two, never both (RFC 9112 section 6.3): a proxy in front that honours the other one
  would see a different request in the same bytes (request smuggling). uvicorn's h11 server
  (what ``pip install megasr`` runs) reads such a body as chunked and passes both headers
  on; its httptools server refuses the request itself with a plain-text 400. The gateway
  refuses it (400 problem+json) whichever server runs it.
- **An answer before the body's end** (a refusal mid-upload: too large, too slow, malformed,
  busy) closes the connection. Otherwise uvicorn keeps it for the next request and reads
  and throws away the rest of the body, however long, first. A client still sending
  usually needs its last bytes taken to see the answer rather than a reset, so up to
  :data:`DRAIN_BYTES` already on their way are read first, for :data:`DRAIN_S` at most;
  an upload cut for its deadline (408) is closed at once, since it is slow anyway.
"""

from __future__ import annotations

import anyio
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from megasr.errors import MalformedRequestError
from megasr.service.problems import error_response

DRAIN_BYTES = 256 * 1024
DRAIN_S = 0.5


class RequestFraming:
    """Refuses ambiguous framing; closes a connection whose request body is left unread."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in scope["headers"]}  # ASGI header names are lower case
        if b"content-length" in names and b"transfer-encoding" in names:
            await _refuse_both_lengths(scope, receive, send)
            return
        body = _BodyProgress(receive, has_body=_has_body(scope))

        async def send_closing_unread(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.done:
                if message["status"] != 408:
                    await body.drain()
                if not body.done:
                    MutableHeaders(scope=message).append("Connection", "close")
            await send(message)

        await self.app(scope, body.receive, send_closing_unread)


class _BodyProgress:
    """Watches a request's body messages, so an answer knows whether all of it came."""

    def __init__(self, receive: Receive, has_body: bool) -> None:
        self._receive = receive
        self.done = not has_body

    async def receive(self) -> Message:
        message = await self._receive()
        self._watch(message)
        return message

    async def drain(self) -> None:
        """Read and drop what is on its way: :data:`DRAIN_BYTES` or :data:`DRAIN_S` at most."""
        dropped = 0
        with anyio.move_on_after(DRAIN_S):
            while not self.done and dropped <= DRAIN_BYTES:
                message = await self.receive()
                dropped += len(message.get("body", b""))

    def _watch(self, message: Message) -> None:
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.done = True


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


async def _refuse_both_lengths(scope: Scope, receive: Receive, send: Send) -> None:
    error = MalformedRequestError(
        "the request has both Content-Length and Transfer-Encoding; send one (RFC 9112 6.3)"
    )
    response = error_response(error)
    response.headers.append("Connection", "close")
    await response(scope, receive, send)
