"""Who may talk to the server, and how much they may send.

* Loopback only by default.  Listening on any other address needs credentials
  (``--auth user:password`` or ``--token``) unless ``--insecure`` says otherwise
  explicitly: an image generator open to a network would let anyone there use
  the GPU and read every prompt and picture in the history.
* With credentials set, every route (the web page, the native API and the
  AUTOMATIC1111 routes alike, LoRA listings included) needs HTTP Basic auth or
  ``Authorization: Bearer TOKEN``; a 401 carries ``WWW-Authenticate`` so browsers ask.
* Request bodies are capped (``--max-body-mb``, 32 MiB by default) before they are read.
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import json
from dataclasses import dataclass
from typing import Optional


class BindError(ValueError):
    pass


@dataclass(frozen=True)
class Credentials:
    user: Optional[str] = None
    password: Optional[str] = None
    token: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return bool(self.token or self.user)

    @classmethod
    def parse(cls, auth: Optional[str], token: Optional[str]) -> "Credentials":
        user = password = None
        if auth:
            if ":" not in auth:
                raise BindError("--auth must look like user:password")
            user, password = auth.split(":", 1)
            if not user or not password:
                raise BindError("--auth needs both a user name and a password, as user:password")
        if token is not None and len(token) < 16:
            raise BindError("--token must be at least 16 characters long (use a random string)")
        return cls(user, password, token)

    def check(self, header: Optional[str]) -> Optional[str]:
        """The client's identity if ``header`` (an Authorization value) is right, else None."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.token:
            return "token" if hmac.compare_digest(value.strip().encode(), self.token.encode()) else None
        if scheme == "basic" and self.user and self.password is not None:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            ok_user = hmac.compare_digest(user.encode(), self.user.encode())
            ok_pass = hmac.compare_digest(password.encode(), self.password.encode())
            return user if ok_user and ok_pass else None
        return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, credentials: Credentials, insecure: bool) -> None:
    """Refuse to listen beyond this machine without credentials (unless told ``insecure``)."""
    if is_loopback(host) or credentials.enabled or insecure:
        return
    raise BindError(
        f"refusing to listen on {host} without a password: anyone who can reach this address could use the GPU "
        "and read your prompts and images. Add --auth user:password (or --token SECRET), "
        "or pass --insecure if this network is yours alone."
    )


class GuardMiddleware:
    """ASGI middleware: authentication and a cap on request body size."""

    def __init__(self, app, credentials: Credentials, max_body: int):
        self.app = app
        self.credentials = credentials
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.credentials.enabled:
            who = self.credentials.check(headers.get("authorization"))
            if who is None:
                return await _reply(send, 401, "authentication required: send HTTP Basic credentials (--auth) or 'Authorization: Bearer TOKEN' (--token)", [(b"www-authenticate", b'Basic realm="brushwork"')])
            scope.setdefault("state", {})["user"] = who
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await _reply(send, 400, "Content-Length is not a number")
            if too_big:
                return await _reply(send, 413, f"request body of {int(length)} bytes is larger than the limit of {self.max_body} bytes; send a smaller image or raise --max-body-mb")
        received = 0
        limit = self.max_body
        refused = False

        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise _BodyTooLarge()
            return message

        try:
            return await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            if refused:
                return await _reply(send, 413, f"request body is larger than the limit of {limit} bytes")
            raise


class _BodyTooLarge(Exception):
    pass


async def _reply(send, status: int, detail: str, extra_headers: Optional[list] = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + (extra_headers or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
