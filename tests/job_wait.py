"""Waiting for a job of the native API to end, for the tests that drive a server."""
from __future__ import annotations

import time

ENDED = ("done", "failed", "cancelled", "interrupted")


def wait_job(http, job_id: str, timeout: float = 60.0, states: tuple[str, ...] = ENDED) -> dict:
    """The job's record once its state is one of ``states`` (default: it has ended).
    ``http``: any client with ``get`` (TestClient, httpx)."""
    deadline = time.monotonic() + timeout
    job = {"state": "unknown"}
    while time.monotonic() < deadline:
        job = http.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} stayed {job['state']} for {timeout:.0f} s")
