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

    engine = Engine(home, device=opts.device, max_job_seconds=optional_limit(opts.max_job_minutes))
    engine.load(opts.model)  # fail early on a bad --model; the model stays loaded
    store = JobStore(home.root / "brushwork.sqlite3", outputs=home.outputs)
    studio = Studio(engine, store, preview_every=opts.preview_every, max_queued_per_client=opts.max_queued_per_client)
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


class _Stopped(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stopped()


def serve(opts: ServeOptions) -> None:
    """Serve until SIGINT/SIGTERM, then stop the worker cleanly: the running job is
    marked failed ("submit it again"), queued jobs stay queued for the next start."""
    import signal

    import uvicorn

    app, studio = build(opts)
    print(f"Brushwork is serving {studio.model_name()} on {studio.engine.placement.label}: open http://{opts.host}:{opts.port}/  (API docs: /docs)", flush=True)
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
