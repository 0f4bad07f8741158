"""Who may reach the server and how (issue 11): the Host check against DNS rebinding,
Origin / Sec-Fetch-Site checks on state-changing routes, CORS with credentials,
body limits for chunked and stalled bodies, X-Forwarded-For, and blank secrets.

The studio runs over the fake engine of test_server_api.py; the tests that depend on
how bytes arrive on the socket (chunked bodies, stalls, forwarded headers) go
through a real uvicorn on 127.0.0.1.
"""
from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from fastapi.testclient import TestClient

from brushwork.server import ServeOptions, build, serve_in_thread
from brushwork.server.app import create_app
from brushwork.server.security import BindError, Credentials, HostPolicy
from brushwork.server.store import JobStore
from brushwork.server.studio import Studio
from test_server_api import FakeEngine, home  # noqa: F401  (home is a fixture)

TOKEN = "t" * 20
EVIL = "https://evil.example"
MINE = "https://mine.example"


@pytest.fixture
def studio(home):  # noqa: F811
    s = Studio(FakeEngine(home), JobStore(home.root / "db.sqlite3"), preview_every=2)
    yield s
    s.close()
    s.store.close()


def client_for(studio, **kwargs) -> TestClient:
    return TestClient(create_app(studio, web=False, **kwargs), raise_server_exceptions=False)


def detail(r) -> str:
    return r.json()["detail"]


# ---------------------------------------------------------------- Host check (DNS rebinding)


def test_a_rebound_host_name_is_refused_with_the_flag_that_allows_it(studio):
    with client_for(studio, hosts=HostPolicy("127.0.0.1")) as c:
        r = c.get("/api/v1/jobs", headers={"Host": "evil.example:7860"})
        assert r.status_code == 421
        assert "--allow-host evil.example" in detail(r)
        r = c.post("/api/v1/jobs", json={"prompt": "x", "steps": 1}, headers={"Host": "evil.example"})
        assert r.status_code == 421
        assert studio.store.jobs(10) == []


@pytest.mark.parametrize("host", ["localhost", "localhost:7860", "LOCALHOST:7860", "127.0.0.1", "127.0.0.1:7860", "127.3.4.5:80", "[::1]", "[::1]:7860"])
def test_loopback_host_names_pass(studio, host):
    with client_for(studio, hosts=HostPolicy("127.0.0.1")) as c:
        assert c.get("/api/v1/status", headers={"Host": host}).status_code == 200


def test_allowed_names_and_the_bind_address_pass(studio):
    policy = HostPolicy("192.168.1.5", ("studio.lan",))
    with client_for(studio, hosts=policy) as c:
        for host in ("studio.lan", "Studio.LAN:7860", "192.168.1.5:7860", "localhost:7860"):
            assert c.get("/api/v1/status", headers={"Host": host}).status_code == 200, host
        for host in ("other.lan", "192.168.1.6:7860", "studio.lan.evil.example"):
            assert c.get("/api/v1/status", headers={"Host": host}).status_code == 421, host


def test_a_wildcard_bind_accepts_ip_literals_but_not_other_names(studio):
    with client_for(studio, hosts=HostPolicy("0.0.0.0")) as c:
        assert c.get("/api/v1/status", headers={"Host": "192.168.1.5:7860"}).status_code == 200
        assert c.get("/api/v1/status", headers={"Host": "[fe80::1]:7860"}).status_code == 200
        assert c.get("/api/v1/status", headers={"Host": "rebind.evil.example:7860"}).status_code == 421


def test_with_credentials_the_host_check_gives_way_to_the_password(studio):
    creds = Credentials.parse(None, TOKEN)
    with client_for(studio, credentials=creds, hosts=HostPolicy("0.0.0.0")) as c:
        assert c.get("/api/v1/status", headers={"Host": "box.example"}).status_code == 401
        ok = c.get("/api/v1/status", headers={"Host": "box.example", "Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


def test_build_checks_the_host_and_passes_allow_host(home, monkeypatch):  # noqa: F811
    import brushwork.engine

    monkeypatch.setattr(brushwork.engine, "Engine", lambda home, device=None, **kw: FakeEngine(home))
    app, studio = build(ServeOptions(home=str(home.root), allow_hosts=["studio.lan"]))
    try:
        with TestClient(app) as c:
            assert c.get("/api/v1/status", headers={"Host": "evil.example"}).status_code == 421
            assert c.get("/api/v1/status", headers={"Host": "studio.lan:7860"}).status_code == 200
            assert c.get("/api/v1/status", headers={"Host": "127.0.0.1:7860"}).status_code == 200
    finally:
        studio.close()
        studio.store.close()


def test_allow_host_refuses_urls_with_a_hint():
    with pytest.raises(BindError, match="host name"):
        HostPolicy.from_options("127.0.0.1", ["http://studio.lan/"])
    assert HostPolicy.from_options("127.0.0.1", ["Studio.LAN:7860"]).allowed == ("studio.lan",)


# ---------------------------------------------------------------- Origin / Sec-Fetch-Site


def test_cross_site_posts_are_refused(studio):
    with client_for(studio) as c:
        r = c.post("/sdapi/v1/interrupt", content=b"{}", headers={"Content-Type": "text/plain", "Origin": EVIL})
        assert r.status_code == 403 and f"--cors {EVIL}" in detail(r)
        r = c.post("/api/v1/jobs", content=json.dumps({"prompt": "x", "steps": 1}), headers={"Content-Type": "text/plain", "Origin": EVIL})
        assert r.status_code == 403
        assert c.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert c.post("/sdapi/v1/interrupt", headers={"Origin": "null"}).status_code == 403
        assert studio.store.jobs(10) == []


def test_clients_without_origin_and_same_origin_pages_still_work(studio):
    with client_for(studio) as c:
        assert c.post("/sdapi/v1/interrupt").status_code == 200  # curl, Python, A1111 clients
        assert c.post("/sdapi/v1/interrupt", headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert c.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert c.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "none"}).status_code == 200
        # reads stay open to any Origin: the browser keeps the answer from the page unless CORS allows it
        assert c.get("/api/v1/status", headers={"Origin": EVIL}).status_code == 200


def test_a_cors_origin_may_post(studio):
    with client_for(studio, cors_origins=[MINE]) as c:
        r = c.post("/sdapi/v1/interrupt", headers={"Origin": MINE, "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == MINE
        assert c.post("/sdapi/v1/interrupt", headers={"Origin": EVIL}).status_code == 403


# ---------------------------------------------------------------- CORS with credentials


def test_cors_preflight_needs_no_credentials_but_requests_do(studio):
    creds = Credentials.parse("ann:s3cret", TOKEN)
    with client_for(studio, credentials=creds, cors_origins=[MINE]) as c:
        pre = {"Origin": MINE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
        r = c.options("/api/v1/jobs", headers=pre)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == MINE and "POST" in r.headers["access-control-allow-methods"]
        # the actual request still needs credentials; the 401 carries CORS headers so the page can read it
        r = c.get("/api/v1/status", headers={"Origin": MINE})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == MINE
        assert c.get("/api/v1/status", headers={"Origin": MINE}, auth=("ann", "s3cret")).status_code == 200
        # a preflight from anyone else is no way around the password
        assert c.options("/api/v1/jobs", headers={**pre, "Origin": EVIL}).status_code == 401
        assert c.options("/api/v1/jobs", headers={"Origin": MINE}).status_code == 401  # not a preflight


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("auth, token, words", [
    (None, " " * 16, "blank"),
    (None, " " + "t" * 20, "whitespace"),
    (None, "t" * 20 + "\n", "whitespace"),
    ("ann:   ", None, "blank"),
    ("ann: s3cret", None, "whitespace"),
    (" ann:s3cret", None, "whitespace"),
])
def test_blank_or_padded_secrets_are_refused(auth, token, words):
    with pytest.raises(BindError, match=words):
        Credentials.parse(auth, token)


def test_serve_refuses_a_token_of_spaces(tmp_path, capsys):
    from brushwork.cli import main

    assert main(["serve", "--token", " " * 16, "--home", str(tmp_path)]) == 2
    assert "--token" in capsys.readouterr().err


def test_bearer_values_with_surrounding_whitespace_are_read_the_same_way():
    creds = Credentials.parse(None, TOKEN)
    for header in (f"Bearer {TOKEN}", f"bearer   {TOKEN}  ", f"Bearer\t{TOKEN}", f"  Bearer {TOKEN}"):
        assert creds.check(header) == "token", repr(header)
    for header in ("Bearer", "Bearer ", "Bearer " + " " * 20, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]} t"):
        assert creds.check(header) is None, repr(header)


# ---------------------------------------------------------------- the CLI flags


def test_serve_passes_allow_host_and_trust_proxy(monkeypatch):
    import brushwork.server
    from brushwork.cli import main

    seen = []
    monkeypatch.setattr(brushwork.server, "serve", seen.append)
    assert main(["serve", "--allow-host", "a.lan", "--allow-host", "b.lan", "--trust-proxy"]) == 0
    assert seen[0].allow_hosts == ["a.lan", "b.lan"] and seen[0].trust_proxy is True
    assert main(["serve"]) == 0
    assert seen[1].allow_hosts == [] and seen[1].trust_proxy is False


# ---------------------------------------------------------------- a real socket


def raw_exchange(url: str, head: bytes, body_parts: list[bytes], wait: float = 10.0) -> tuple[int, bytes, bool]:
    """Send ``head`` and ``body_parts`` at once on a fresh socket (then send nothing more);
    (status, response body, whether the server closed the connection within a second)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(head + b"".join(body_parts))
        data = b""
        closed = False
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
        if not closed:
            s.settimeout(1.0)
            try:
                closed = s.recv(1) == b""
            except socket.timeout:
                closed = False
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1], closed


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_chunked_body_over_the_limit_is_413(studio):
    with serve_in_thread(create_app(studio, max_body=1000, web=False)) as url:
        head = b"POST /api/v1/png-info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"A" * 600
        parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 3 + [b"0\r\n\r\n"]
        status, body, closed = raw_exchange(url, head, parts)
        assert status == 413 and "1000 bytes" in json.loads(body)["detail"] and closed
        small = json.dumps({"image": "%%%"}).encode()
        status, _, _ = raw_exchange(url, head, [b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small)])
        assert status == 400  # under the limit: read and answered normally


def test_a_stalled_body_is_answered_408_and_the_connection_freed(studio):
    with serve_in_thread(create_app(studio, body_timeout=0.5, web=False)) as url:
        head = b"POST /api/v1/png-info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        t0 = time.monotonic()
        status, body, closed = raw_exchange(url, head, [b'{"image": "'], wait=5)
        assert status == 408 and "0.5 s" in json.loads(body)["detail"]
        assert closed and time.monotonic() - t0 < 4
        # a complete request on the same server is unaffected
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
        conn.request("GET", "/api/v1/status")
        assert conn.getresponse().status == 200
        conn.close()


def test_the_body_timeout_does_not_cut_long_responses(studio):
    studio.engine.delay = 0.1
    with serve_in_thread(create_app(studio, body_timeout=0.3, web=False)) as url:
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
        conn.request("POST", "/api/v1/jobs", body=json.dumps({"prompt": "slow", "steps": 8}), headers={"Content-Type": "application/json"})
        job = json.loads(conn.getresponse().read())
        t0 = time.monotonic()
        conn.request("GET", f"/api/v1/jobs/{job['id']}/events")
        r = conn.getresponse()
        text = r.read().decode()
        assert r.status == 200 and time.monotonic() - t0 > 0.3
        assert "event: done" in text and '"state": "done"' in text
        conn.close()


def post_job(url: str, headers: dict) -> dict:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    conn.request("POST", "/api/v1/jobs", body=json.dumps({"prompt": "x", "steps": 1}), headers={"Content-Type": "application/json", **headers})
    r = conn.getresponse()
    out = json.loads(r.read())
    conn.close()
    assert r.status == 202, out
    return out


def test_x_forwarded_for_does_not_choose_the_client(studio):
    with serve_in_thread(create_app(studio, web=False)) as url:
        a = post_job(url, {"X-Forwarded-For": "10.0.0.1"})
        b = post_job(url, {"X-Forwarded-For": "10.0.0.2"})
        assert a["client"] == b["client"] == "127.0.0.1"


def test_trust_proxy_reads_x_forwarded_for_from_loopback(studio):
    with serve_in_thread(create_app(studio, web=False), trust_proxy=True) as url:
        assert post_job(url, {"X-Forwarded-For": "10.0.0.1"})["client"] == "10.0.0.1"
