"""Who may talk to the server, and how much they may send.

* Loopback only by default.  Listening on any other address needs credentials
  (``--auth user:password`` or ``--token``) unless ``--insecure`` says otherwise
  explicitly: an image generator open to a network would let anyone there use
  the GPU and read every prompt and picture in the history.
* Without credentials, the ``Host`` header must name this machine (localhost,
  127.x.x.x, [::1]), the bind address, or a name given with ``--allow-host``: a
  web page that rebinds its own DNS name to 127.0.0.1 is refused (421).  With
  credentials the check is skipped: the browser has no password for the rebound
  name, so the password is the guard, and a server on a network is reached by
  names we cannot guess.
* State-changing requests (anything but GET/HEAD/OPTIONS) from another site's
  page are refused (403): the ``Origin`` must be this server's own or one given
  with ``--cors``, and ``Sec-Fetch-Site: cross-site`` without such an Origin is
  refused.  Clients that send neither header (curl, Python, AUTOMATIC1111
  clients) are not browsers and pass.
* With credentials set, every route (the web page, the native API and the
  AUTOMATIC1111 routes alike, LoRA listings included) needs HTTP Basic auth or
  ``Authorization: Bearer TOKEN``; a 401 carries ``WWW-Authenticate`` so browsers
  ask.  Only a CORS preflight from a ``--cors`` origin is answered without them.
* Request bodies are capped (``--max-body-mb``, 32 MiB by default) before they are
  read, chunked ones while they arrive (413), and a body must arrive within
  ``body_timeout`` seconds (30 by default) or the request is answered 408 and the
  connection closed.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
from dataclasses import dataclass
from typing import Optional, Sequence
from urllib.parse import urlsplit


class BindError(ValueError):
    pass


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_BODY_TIMEOUT = 30.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_secret(flag: str, what: str, value: str) -> None:
    """Refuse a blank secret or one with whitespace at either end (a quoting slip)."""
    if not value.strip():
        raise BindError(f"{flag}: the {what} is blank; choose a real secret (a random string)")
    if value != value.strip():
        raise BindError(f"{flag}: the {what} starts or ends with whitespace, which is easy to mistype and often a quoting mistake; remove it")


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
        if auth is not None:
            if ":" not in auth:
                raise BindError("--auth must look like user:password")
            user, password = auth.split(":", 1)
            if not user or not password:
                raise BindError("--auth needs both a user name and a password, as user:password")
            check_secret("--auth", "user name", user)
            check_secret("--auth", "password", password)
        if token is not None:
            check_secret("--token", "token", token)
            if len(token) < 16:
                raise BindError("--token must be at least 16 characters long (use a random string)")
        return cls(user, password, token)

    def check(self, header: Optional[str]) -> Optional[str]:
        """The client's identity if ``header`` (an Authorization value) is right, else None.

        The scheme and the credentials are split at the first run of whitespace, and
        whitespace around the credentials is ignored (secrets never have any)."""
        scheme, value = split_authorization(header or "")
        if not value:
            return None
        if scheme == "bearer" and self.token:
            return "token" if hmac.compare_digest(value.encode(), self.token.encode()) else None
        if scheme == "basic" and self.user and self.password is not None:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            ok_user = hmac.compare_digest(user.encode(), self.user.encode())
            ok_pass = hmac.compare_digest(password.encode(), self.password.encode())
            return user if ok_user and ok_pass else None
        return None


def split_authorization(header: str) -> tuple[str, str]:
    """``"Bearer  abc "`` -> ``("bearer", "abc")``; missing parts are empty strings."""
    parts = header.split(None, 1)
    if not parts:
        return "", ""
    return parts[0].lower(), (parts[1].strip() if len(parts) > 1 else "")


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


# ---------------------------------------------------------------- Host and Origin


def split_host(value: str) -> tuple[str, Optional[int]]:
    """A Host header (``name``, ``name:port``, ``[v6]:port``) -> (lower-case name, port or None).

    A port that is not a number leaves the whole value as the name (which then
    matches nothing we allow)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    if port and not port.isdigit():
        return value, None
    return name.rstrip("."), int(port) if port else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _is_wildcard(bind: str) -> bool:
    return bind in ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class HostPolicy:
    """The names a server without credentials answers to in ``Host``: this machine's
    loopback names, the address it is bound to, and the ``--allow-host`` names.
    Bound to every address (0.0.0.0 or ::), any IP literal passes too: DNS
    rebinding needs a name, and the machine's own addresses are not known ahead."""

    bind: str = "127.0.0.1"
    allowed: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, bind: str, allow_hosts: Sequence[str] = ()) -> "HostPolicy":
        return cls(split_host(bind)[0], tuple(parse_allowed_host(h) for h in allow_hosts))

    def permits(self, host_header: Optional[str]) -> bool:
        if host_header is None:
            return True  # HTTP/1.0 without Host: not a browser, so not a rebinding page
        name, _ = split_host(host_header)
        if is_loopback(name) or name in self.allowed:
            return True
        if _is_wildcard(self.bind):
            return _is_ip(name)
        return name == self.bind


def parse_allowed_host(value: str) -> str:
    """An ``--allow-host`` value -> the bare lower-case name (a port is dropped)."""
    if "/" in value or not value.strip():
        raise BindError(f"--allow-host takes a host name such as studio.lan or 192.168.1.5 (a port is optional), not {value!r}")
    return split_host(value)[0]


def parse_origin(origin: str) -> Optional[tuple[str, str, int]]:
    """``https://Box:8443`` -> ("https", "box", 8443); None for "null" or anything unreadable."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.rstrip("."), port or _DEFAULT_PORTS[parts.scheme]


def same_origin(origin: str, host_header: Optional[str]) -> bool:
    """Whether a page at ``origin`` is this server's own, as named by ``Host``.  The
    scheme is not compared: behind a TLS proxy the page is https while we see http."""
    parsed = parse_origin(origin)
    if parsed is None or not host_header:
        return False
    scheme, name, port = parsed
    host_name, host_port = split_host(host_header)
    return name == host_name and port == (host_port or _DEFAULT_PORTS[scheme])


def cors_allows(origin: Optional[str], cors_origins: Sequence[str]) -> bool:
    return origin is not None and ("*" in cors_origins or origin in cors_origins)


def cross_site_refusal(method: str, headers: dict[str, str], cors_origins: Sequence[str]) -> Optional[str]:
    """Why a state-changing request from another site's page is refused, or None."""
    if method.upper() in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is not None:
        if cors_allows(origin, cors_origins) or same_origin(origin, headers.get("host")):
            return None
        return (f"cross-site request refused: a page at {origin} may not change anything here. "
                f"To let that page use the API, start the server with --cors {origin}")
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return ("cross-site request refused (Sec-Fetch-Site: cross-site) from a page that sent no Origin; "
                "scripts and API clients should not send Sec-Fetch-* headers, pages need --cors ORIGIN")
    return None


def is_preflight(method: str, headers: dict[str, str]) -> bool:
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def host_refusal(host_header: str) -> str:
    name = split_host(host_header)[0]
    return (f"this server does not answer to the host name {name!r} (a web page may be trying DNS rebinding "
            f"to reach it). If that is how you reach Brushwork, start it with --allow-host {name}")


def too_large(limit: int, size: Optional[int] = None) -> str:
    what = f"request body of {size} bytes is" if size is not None else "request body is"
    return f"{what} larger than the limit of {limit} bytes; send a smaller image or raise --max-body-mb"


# ---------------------------------------------------------------- the middleware


class GuardMiddleware:
    """ASGI middleware: Host and cross-site checks, authentication, and limits on
    request bodies (size and time).

    ``hosts=None`` skips the Host check (apps built for tests or embedding; the
    server ``brushwork serve`` runs always passes a policy); ``body_timeout=None``
    means ``DEFAULT_BODY_TIMEOUT``.  It must be the outermost middleware, so that
    nothing runs before these checks; a CORS middleware inside it answers the
    preflights it lets through."""

    def __init__(self, app, credentials: Credentials, max_body: int, cors_origins: Sequence[str] = (),
                 hosts: Optional[HostPolicy] = None, body_timeout: Optional[float] = None):
        self.app = app
        self.credentials = credentials
        self.max_body = max_body
        self.cors_origins = tuple(cors_origins)
        self.hosts = hosts
        self.body_timeout = DEFAULT_BODY_TIMEOUT if body_timeout is None else body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        cors = self._cors_headers(headers.get("origin"))
        if self.hosts is not None and not self.credentials.enabled and not self.hosts.permits(headers.get("host")):
            return await _reply(send, 421, host_refusal(headers["host"]))
        refusal = cross_site_refusal(method, headers, self.cors_origins)
        if refusal:
            return await _reply(send, 403, refusal, cors)
        preflight = is_preflight(method, headers) and cors_allows(headers.get("origin"), self.cors_origins)
        if self.credentials.enabled and not preflight:
            who = self.credentials.check(headers.get("authorization"))
            if who is None:
                return await _reply(send, 401, "authentication required: send HTTP Basic credentials (--auth) or 'Authorization: Bearer TOKEN' (--token)", [(b"www-authenticate", b'Basic realm="brushwork"')] + cors)
            scope.setdefault("state", {})["user"] = who
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _reply(send, 400, "Content-Length is not a number", cors)
            if int(length) > self.max_body:
                return await _reply(send, 413, too_large(self.max_body, int(length)), [(b"connection", b"close")] + cors)  # the unread body is dropped with the connection
        guard = _BodyGuard(receive, send, self.max_body, self.body_timeout, cors)
        return await self.app(scope, guard.receive, guard.send)

    def _cors_headers(self, origin: Optional[str]) -> list:
        """CORS headers for our own refusals, so an allowed page can read why it was refused."""
        if not cors_allows(origin, self.cors_origins):
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"access-control-allow-credentials", b"true"), (b"vary", b"Origin")]


class _BodyGuard:
    """Wraps ``receive``/``send`` for one request: counts body bytes as they arrive
    (chunked bodies have no Content-Length) and gives the whole body
    ``timeout`` seconds.  On a breach it answers itself (413 or 408, closing the
    connection), tells the app the client is gone, and drops what the app sends."""

    def __init__(self, receive, send, limit: int, timeout: float, extra_headers: list):
        self._receive, self._send = receive, send
        self.limit, self.extra_headers = limit, extra_headers
        self.received = 0
        self.body_done = False
        self.started = False  # the app began its response
        self.answered = False  # we answered in the app's place
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.timeout = timeout

    async def receive(self):
        if self.answered:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()  # e.g. a streaming response waiting for a disconnect
        try:
            message = await asyncio.wait_for(self._receive(), max(0.0, self.deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            return await self._refuse(408, f"the request body did not arrive within {self.timeout:g} s; send it in one go")
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        self.body_done = not message.get("more_body", False)
        if self.received > self.limit:
            return await self._refuse(413, too_large(self.limit))
        return message

    async def send(self, message):
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def _refuse(self, status: int, detail: str):
        if not self.started:
            await _reply(self._send, status, detail, [(b"connection", b"close")] + self.extra_headers)
        self.answered = True
        return {"type": "http.disconnect"}


async def _reply(send, status: int, detail: str, extra_headers: Optional[list] = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + (extra_headers or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
