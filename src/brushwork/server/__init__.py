"""``brushwork serve``: the HTTP server (native API, AUTOMATIC1111-compatible API, web studio).

Layers, each a client of the one below: ``app.py``/``a1111.py`` (HTTP routes) ->
``studio.py`` (job queue, worker thread, events) -> the engine.  ``store.py`` keeps
the history in SQLite; ``security.py`` decides who may connect (docs/security.md).

uvicorn runs with ``proxy_headers=False`` unless ``--trust-proxy`` is given: otherwise
any local client could pick its own address (and so its fair-queue line) with
``X-Forwarded-For``.  Only a reverse proxy on this machine should be trusted.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Optional

from .security import BindError

log = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


@dataclass
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    home: Optional[str] = None
    model: Optional[str] = None
    device: Optional[str] = None
    auth: Optional[str] = None
    token: Optional[str] = None
    insecure: bool = False
    max_body_mb: float = 32.0
    cors: list[str] = field(default_factory=list)
    preview_every: int = 5
    allow_hosts: list[str] = field(default_factory=list)  # extra names accepted in Host (--allow-host)
    max_job_minutes: Optional[float] = None  # refuse jobs estimated to take longer (None: default 60; 0: no limit)
    max_queued_per_client: int = 200
    trust_proxy: bool = False  # read X-Forwarded-For/-Proto from a proxy on 127.0.0.1 (--trust-proxy)
    threads: Optional[str] = None  # CPU threads (--threads; None: $BRUSHWORK_THREADS or the free cores)
    memory_plan: Optional[str] = None  # --memory-plan (None: chosen from free memory, memory/plan.py)
    memory_limit: Optional[str] = None  # --memory-limit, e.g. "10G" (None: $BRUSHWORK_MEMORY_LIMIT or what is free)
    precision: Optional[str] = None  # --precision (None: the device's default)
    cluster: Optional[str] = None  # --cluster auto|ADDRESS: run jobs on a Ray cluster's workers (docs/cluster.md)


def build(opts: ServeOptions):
    """Engine, store, studio and app for ``opts`` (no socket yet): (app, studio)."""
    from ..engine import Engine
    from ..paths import DataHome
    from .app import create_app
    from .security import Credentials, HostPolicy, check_bind
    from .store import JobStore
    from .studio import Studio

    credentials = Credentials.parse(opts.auth, opts.token)
    check_bind(opts.host, credentials, opts.insecure)
    hosts = HostPolicy.from_options(opts.host, opts.allow_hosts)
    home = DataHome.resolve(opts.home)
    home.create()
    from ..budget import optional_limit

    engine = Engine(home, device=opts.device, max_job_seconds=optional_limit(opts.max_job_minutes), threads=opts.threads, memory_plan=opts.memory_plan, memory_limit=opts.memory_limit, precision=opts.precision)
    engine.load(opts.model)  # fail early on a bad --model; the model stays loaded
    store = JobStore(home.root / "brushwork.sqlite3", outputs=home.outputs)
    pool = None
    if opts.cluster:  # Ray is imported here only
        from ..cluster.pool import WorkerPool

        pool = WorkerPool(None if opts.cluster == "auto" else opts.cluster)
        if not pool.names():
            log.warning("no Brushwork worker in the cluster yet: jobs wait until one joins (brushwork worker --address HEAD:6379)")
    studio = Studio(engine, store, preview_every=opts.preview_every, max_queued_per_client=opts.max_queued_per_client, pool=pool)
    app = create_app(studio, credentials, max_body=int(opts.max_body_mb * 2**20), cors_origins=opts.cors or None, hosts=hosts)
    return app, studio


@contextlib.contextmanager
def serve_in_thread(app, host: str = DEFAULT_HOST, port: int = 0, trust_proxy: bool = False):
    """Run ``app`` with uvicorn in a background thread (tests, benchmarks); yields its base URL.
    ``trust_proxy`` as for ``brushwork serve --trust-proxy``."""
    import socket
    import threading
    import time

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=trust_proxy))
    thread = threading.Thread(target=server.run, name="brushwork-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------- a busy port

OTHER_SERVERS_PORT = 7860  # also AUTOMATIC1111's and Fooocus's default


class PortInUse(BindError):
    """The port is taken (shown as one line, exit code 2)."""


def _try_bind(host: str, port: int) -> Optional[OSError]:
    """Bind ``host:port`` the way uvicorn will (every address the name has, SO_REUSEADDR)
    and let go at once: None if that worked, else the error."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _, address in {(i[0], i[1], i[2], None, i[4]) for i in infos}:
        try:
            with socket.socket(family, kind, proto) as s:
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if hasattr(socket, "SO_REUSEADDR"):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(address)
        except OSError as exc:
            return exc
    return None


def _in_use(exc: OSError) -> bool:
    import errno

    return exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)) or getattr(exc, "winerror", None) == 10048


def port_user(port: int) -> Optional[str]:
    """"python3 (pid 1234)" for the process listening on ``port``, where the system tells
    (other users' processes usually need root); else None."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
                except (psutil.Error, OSError):
                    return f"pid {conn.pid}"
    except Exception:  # noqa: BLE001 - AccessDenied, no psutil, an unusual platform: say less
        return None
    return None


def _get(host: str, port: int, path: str, timeout: float) -> Optional[int]:
    """The HTTP status of ``GET path`` there, or None for no HTTP answer in time."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def what_answers(host: str, port: int, timeout: float = 0.5) -> Optional[str]:
    """What kind of server answers HTTP on ``host:port``, in words (None: no answer)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    status = _get(host, port, "/sdapi/v1/options", timeout)
    if status is None:
        return None
    if status == 200:
        if _get(host, port, "/api/v1/status", timeout) == 200:
            return "another Brushwork server answers there"
        return "an AUTOMATIC1111-compatible server (maybe another Brushwork) answers there"
    if status in (401, 403):
        return "a web server that asks for a password answers there (perhaps AUTOMATIC1111, or a Brushwork with --auth)"
    return "a web server answers there"


def free_port_after(host: str, port: int, tries: int = 100) -> Optional[int]:
    for candidate in range(port + 1, min(65536, port + 1 + tries)):
        if _try_bind(host, candidate) is None:
            return candidate
    return None


def check_port(host: str, port: int) -> None:
    """Raise a one-line BindError if ``host:port`` cannot be listened on: for a busy
    port, who holds it (where that can be told) and the next free port."""
    exc = _try_bind(host, port)
    if exc is None:
        return
    import socket

    if isinstance(exc, socket.gaierror):
        raise BindError(f"--host {host}: no such address on this machine ({exc.strerror or exc})")
    if not _in_use(exc):
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}" + (" (ports below 1024 need administrator rights; use --port 7860 or another above 1024)" if port < 1024 else ""))
    who = port_user(port)
    first = f"port {port} is in use by {who}" if who else f"port {port} on {host} is already in use by another program"
    answer = what_answers(host, port)
    sentences = [f"{first}; {answer}." if answer else f"{first}."]
    if port == OTHER_SERVERS_PORT:
        sentences.append(f"{port} is also the default port of AUTOMATIC1111 and Fooocus.")
    free = free_port_after(host, port)
    sentences.append(f"Use --port {free}, which is free (or stop the other program)." if free else "Choose another --port (or stop the other program).")
    raise PortInUse(" ".join(sentences))


class _Stopped(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stopped()


def serve(opts: ServeOptions) -> None:
    """Serve until SIGINT/SIGTERM, then stop the worker cleanly: the running job is
    marked failed ("submit it again"), queued jobs stay queued for the next start."""
    import signal

    import uvicorn

    check_port(opts.host, opts.port)  # before anything is loaded or printed
    app, studio = build(opts)
    note = studio.engine.threads.note() if studio.engine.threads is not None else None
    if note:
        print(note, flush=True)
    where = studio.engine.placement.label
    if studio.pool is not None:
        where = f"a cluster of {len(studio.pool.names())} worker(s)"
    print(f"Brushwork is serving {studio.model_name()} on {where}: open http://{opts.host}:{opts.port}/  (API docs: /docs)", flush=True)
    # uvicorn shuts down on a signal and then re-raises it to the handler it found:
    # ours, so that the worker is stopped and the database closed before the exit
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning", timeout_graceful_shutdown=5, proxy_headers=opts.trust_proxy)
    except _Stopped:
        pass
    finally:
        studio.close()
        studio.store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("Brushwork stopped; queued jobs will run at the next start.", flush=True)
