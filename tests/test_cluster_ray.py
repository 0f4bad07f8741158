"""A real local Ray instance with Brushwork workers on the tiny checkpoints (issue 20).

The module starts Ray itself with small limits (6 logical CPUs, an 80 MiB object
store, no dashboard, its files in a private temporary folder) and two CPU workers on
a data home with two tiny SD 1.x checkpoints, ``alpha`` and ``beta``.  The server
side is the real :class:`~brushwork.server.studio.Studio` with a
:class:`~brushwork.cluster.pool.WorkerPool`, as ``brushwork serve --cluster`` makes it.
Loads are counted by the workers themselves (``info()["loads"]``: every checkpoint
read from disk)."""
from __future__ import annotations

import collections
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from brushwork import Engine  # noqa: E402
from brushwork.cluster.pool import WorkerPool  # noqa: E402
from brushwork.cluster.scheduler import assign_round_robin  # noqa: E402
from brushwork.cluster.worker import NAMESPACE, start_workers  # noqa: E402
from brushwork.engine import GenerationRequest  # noqa: E402
from brushwork.server.store import CANCELLED, DONE, FAILED, INTERRUPTED, JobStore  # noqa: E402
from brushwork.server.studio import Studio  # noqa: E402

MODELS = ("alpha", "beta")
HIRES = {"hires": True, "hires_scale": 2, "hires_steps": 2, "hires_strength": 0.5}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from brushwork.models import families, save

    home = tmp_path_factory.mktemp("clusterhome")
    spec = families.tiny("sd1", "epsilon")
    for seed, name in enumerate(MODELS):
        save.save_checkpoint(home / "models" / "checkpoints" / f"{name}.safetensors", spec, save.random_networks(spec, seed=seed))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray
    temp = tempfile.mkdtemp(prefix="bwray")  # short: Ray's socket paths must stay under 108 bytes
    ray.init(num_cpus=6, object_store_memory=80 * 2**20, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False, _temp_dir=temp)
    try:
        handles = start_workers(str(home), devices=["cpu", "cpu"], threads="1")
        engine = Engine(home, device="cpu")  # the server's own: checks requests
        yield {"home": home, "engine": engine, "handles": handles}
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def studio_on(cluster, db: str, **kw) -> Studio:
    engine = cluster["engine"]
    return Studio(engine, JobStore(cluster["home"] / db, outputs=engine.home.outputs), pool=WorkerPool(refresh=0.3), **kw)


def close(studio: Studio) -> None:
    studio.close()
    studio.store.close()


def request(seed: int, **kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red boat", "seed": seed, "steps": 4, "width": 64, "height": 64, **kw})


def infos(cluster) -> dict[str, dict]:
    out = {}
    for h in cluster["handles"]:
        try:
            info = ray.get(h.info.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            continue
        out[info["name"]] = info
    return out


def loads(cluster) -> dict[str, list[str]]:
    return {name: info["loads"] for name, info in infos(cluster).items()}


def new_loads(before, after) -> collections.Counter:
    """(worker, checkpoint) -> times read from disk between two :func:`loads`."""
    count: collections.Counter = collections.Counter()
    for name, seen in after.items():
        for model in seen[len(before.get(name, [])):]:
            count[(name, model)] += 1
    return count


def worker_of(studio: Studio, job_id: str) -> list[str]:
    """The workers a job ran on, in order (from its RUNNING state events)."""
    return [e.data["worker"] for e in studio.events_after(job_id, 0) if e.kind == "state" and e.data.get("worker")]


def wait_for(cond, timeout=120.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def test_jobs_spread_over_both_workers_and_pictures_are_recorded_by_the_server(cluster):
    studio = studio_on(cluster, "spread.sqlite3")
    try:
        jobs = [studio.submit(request(seed, width=128, height=128, steps=12), client=f"user{seed % 2}", model="alpha").id for seed in range(6)]
        ends = [studio.wait(j, timeout=180) for j in jobs]
        assert [e.state for e in ends] == [DONE] * 6, [e.error for e in ends]
        used = collections.Counter(w for j in jobs for w in worker_of(studio, j))
        assert len(used) == 2 and min(used.values()) >= 2, used  # both workers ran some
        for seed, job_id in enumerate(jobs):
            (img,) = studio.images(job_id)
            assert img.seed == seed and (img.width, img.height) == (128, 128)
            path = cluster["home"] / img.path
            assert path.is_file() and path.stat().st_size > 0  # the server wrote it
            assert f"Seed: {seed}" in img.infotext and "Model: alpha" in img.infotext
        # the same seed gives the same picture on any worker (the worker made it, the server saved it)
        again = studio.submit(request(0, width=128, height=128, steps=12), model="alpha").id
        assert studio.wait(again, timeout=120).state == DONE
        first, second = studio.images(jobs[0])[0], studio.images(again)[0]
        assert np.array_equal(np.asarray(Image.open(cluster["home"] / first.path)), np.asarray(Image.open(cluster["home"] / second.path)))
        assert first.infotext == second.infotext
    finally:
        close(studio)


def test_twenty_alternating_jobs_load_each_model_once_per_worker_and_round_robin_reloads(cluster):
    # pairs of the two checkpoints, A A B B A A ...: what a hand-made load balancer
    # (each free worker takes the next job) turns into a load for almost every job
    order = [MODELS[(i // 2) % 2] for i in range(20)]

    def run(scheduler=None) -> collections.Counter:
        studio = studio_on(cluster, f"alternate-{'rr' if scheduler else 'affinity'}.sqlite3", scheduler=scheduler)
        try:
            before = loads(cluster)
            jobs = [studio.submit(request(i), client=f"user{i % 3}", model=m).id for i, m in enumerate(order)]
            assert [studio.wait(j, timeout=180).state for j in jobs] == [DONE] * 20
            assert sum(len(studio.images(j)) for j in jobs) == 20
            return new_loads(before, loads(cluster))
        finally:
            close(studio)

    affinity = run()
    round_robin = run(lambda order, workers, est: assign_round_robin(order, workers))
    print(f"\nmodel loads for 20 jobs on 2 workers: model-affinity {sum(affinity.values())} {dict(affinity)}, round-robin {sum(round_robin.values())}")
    assert all(n == 1 for n in affinity.values()), affinity  # no worker read a checkpoint twice
    assert sum(affinity.values()) <= 4
    assert sum(round_robin.values()) >= 3 * max(1, sum(affinity.values())), (affinity, round_robin)


def test_killing_a_worker_mid_job_loses_no_job_and_no_picture_and_a_new_worker_is_used(cluster):
    studio = studio_on(cluster, "kill.sqlite3")
    try:
        slow = studio.submit(request(100, steps=40, width=192, height=192, batch_count=4), client="painter", model="beta").id
        others = [studio.submit(request(200 + i), client="friend", model="alpha").id for i in range(4)]
        wait_for(lambda: len(studio.images(slow)) >= 1)
        (victim,) = worker_of(studio, slow)
        assert len(studio.images(slow)) < 4, "the job ended before the worker could be killed: make it slower"
        ray.kill(ray.get_actor(victim, namespace=NAMESPACE), no_restart=True)

        ends = {j: studio.wait(j, timeout=240) for j in [slow, *others]}
        assert all(e.state == DONE for e in ends.values()), {j: (e.state, e.error) for j, e in ends.items()}
        images = studio.images(slow)
        assert sorted(i.idx for i in images) == [0, 1, 2, 3]  # each picture once, none missing
        assert sorted(i.seed for i in images) == [100, 101, 102, 103]
        ran_on = worker_of(studio, slow)
        assert ran_on[0] == victim and len(ran_on) == 2 and ran_on[1] != victim
        requeued = [e.data["requeued"] for e in studio.events_after(slow, 0) if e.kind == "state" and "requeued" in e.data]
        assert len(requeued) == 1 and victim in requeued[0]
        assert victim not in studio.pool.names()

        # a worker that joins now is found and given work at once
        (fresh,) = start_workers(str(cluster["home"]), devices=["cpu"], threads="1")
        cluster["handles"].append(fresh)
        newcomer = ray.get(fresh.info.remote())["name"]
        wait_for(lambda: newcomer in studio.pool.names(), timeout=30)
        jobs = [studio.submit(request(300 + i, width=128, height=128, steps=12), client=f"u{i}", model="alpha").id for i in range(4)]
        assert [studio.wait(j, timeout=180).state for j in jobs] == [DONE] * 4
        assert newcomer in {w for j in jobs for w in worker_of(studio, j)}
    finally:
        close(studio)


def test_the_server_restarting_mid_queue_loses_nothing(cluster):
    studio = studio_on(cluster, "restart.sqlite3")
    jobs = [studio.submit(request(400 + i, steps=20, width=128, height=128, batch_count=2), client=f"user{i % 2}", model=MODELS[i % 2]).id for i in range(6)]
    wait_for(lambda: sum(len(studio.images(j)) for j in jobs) >= 1)
    studio.close()  # the server stops with jobs running on the workers and more queued
    saved = {j: len(studio.images(j)) for j in jobs}
    states = collections.Counter(studio.job(j).state for j in jobs)
    studio.store.close()
    assert sum(saved.values()) < 12 and states["queued"] >= 1, (saved, states)

    again = studio_on(cluster, "restart.sqlite3")  # a new server process: the same database, the cluster found again
    try:
        ends = [again.wait(j, timeout=240) for j in jobs]
        assert [e.state for e in ends] == [DONE] * 6, [(e.state, e.error) for e in ends]
        for i, job_id in enumerate(jobs):
            images = again.images(job_id)
            assert sorted(img.idx for img in images) == [0, 1]  # nothing lost, nothing twice
            assert sorted(img.seed for img in images) == [400 + i, 401 + i]
    finally:
        close(again)


def test_status_lists_the_workers_with_device_model_and_loads(cluster):
    studio = studio_on(cluster, "status.sqlite3")
    try:
        job = studio.submit(request(7), model="beta").id
        assert studio.wait(job, timeout=120).state == DONE
        rows = {r["name"]: r for r in studio.pool.status()}
        assert set(rows) == set(studio.pool.names()) and len(rows) >= 2
        for row in rows.values():
            assert row["device"].startswith("cpu") and row["pid"] > 0 and isinstance(row["loads"], list)
        (ran,) = worker_of(studio, job)
        assert rows[ran]["model"] == "beta"

        # each worker's queue: with every worker held busy (long jobs, cancelled after the
        # look), the waiting jobs are planned on them, shown by the server and told to the
        # workers themselves (what `brushwork cluster status` reads)
        names = studio.pool.names()
        busy = [studio.submit(request(40 + i, steps=150, batch_count=8), client=f"b{i}", model="beta").id for i in range(len(names))]
        waiting = [studio.submit(request(50 + i), client=f"w{i}", model="beta").id for i in range(4)]
        wait_for(lambda: all(studio.job(j).state == "running" for j in busy), timeout=60)

        def agreed():
            shown = {r["name"]: r["queue"] for r in studio.cluster_status()["workers"]}
            told = {n: v["queue"] for n, v in infos(cluster).items() if n in shown}
            return shown if sum(map(len, shown.values())) == 4 and told == shown else None

        lines = wait_for(agreed, timeout=30)
        assert sorted(j for line in lines.values() for j in line) == sorted(waiting)
        assert studio.cluster_status()["waiting"] == 4
        assert all(not studio.job(j).final for j in busy), "a busy job ended before the look: make it longer"
        for j in busy:
            studio.cancel(j)
        assert [studio.wait(j, timeout=120).state for j in busy] == [CANCELLED] * len(busy)
        assert [studio.wait(j, timeout=240).state for j in waiting] == [DONE] * 4
        wait_for(lambda: all(not r["queue"] for r in studio.cluster_status()["workers"]), timeout=30)
    finally:
        close(studio)


def test_the_worker_and_cluster_status_commands_and_serve_cluster(cluster):
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from brushwork.server import ServeOptions, build

    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cli = [sys.executable, "-c", "import sys; from brushwork.cli import main; sys.exit(main())"]
    worker = subprocess.Popen([*cli, "worker", "--address", address, "--home", str(cluster["home"]), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "ready on cpu" not in line and time.monotonic() < deadline:
            line = worker.stdout.readline()
            assert line or worker.poll() is None, "brushwork worker exited before it was ready"
        name = line.split()[1]
        assert name.startswith("brushwork-worker-")

        status = subprocess.run([*cli, "cluster", "status", "--address", address, "--home", str(cluster["home"])], capture_output=True, text=True, env=env, timeout=120)
        assert status.returncode == 0, status.stderr
        table = status.stdout.splitlines()
        assert table[0].split() == ["WORKER", "HOST", "DEVICE", "MODEL", "LORAS", "FREE", "RUNNING", "QUEUED", "JOBS", "LOADS"]
        assert any(row.startswith(name) and " cpu" in row for row in table)
        assert sum(1 for row in table if row.startswith("brushwork-worker-")) >= 3  # the fixture's and this one

        # serve --cluster: the same server, its jobs on the workers, the cluster in /api/v1/status
        app, studio = build(ServeOptions(home=str(cluster["home"]), device="cpu", cluster=address))
        try:
            client = TestClient(app, base_url="http://127.0.0.1")
            job = client.post("/api/v1/jobs", json={"prompt": "a kite", "seed": 3, "steps": 4, "width": 64, "height": 64}).json()
            assert studio.wait(job["id"], timeout=120).state == DONE
            body = client.get("/api/v1/status").json()
            names = {w["name"] for w in body["cluster"]["workers"]}
            assert name in names and len(names) >= 3
            assert body["cluster"]["waiting"] == 0
            assert worker_of(studio, job["id"])[0] in names
        finally:
            close(studio)
    finally:
        worker.send_signal(2)  # Ctrl-C: its actors end with it
        worker.wait(60)
    wait_for(lambda: name not in {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}, timeout=60)


def test_progress_and_previews_stream_through_the_server_and_cancel_and_interrupt_reach_the_worker(cluster):
    studio = studio_on(cluster, "control.sqlite3", preview_every=2)
    try:
        # progress with previews, made on the worker, read from the server's events
        job = studio.submit(request(11, steps=8), client="watcher", model="alpha").id
        assert studio.wait(job, timeout=120).state == DONE
        steps = [e.data for e in studio.events_after(job, 0) if e.kind == "progress"]
        assert [d["step"] for d in steps][-1] == 8 and all(d["total"] == 8 for d in steps)
        previews = [d["preview"] for d in steps if d.get("preview")]
        assert previews and all(p.startswith("data:image/jpeg;base64,") for p in previews)

        # interrupt: the running batch stops early, its picture kept, later batches skipped
        long = studio.submit(request(12, steps=150, batch_count=3), client="impatient", model="alpha").id
        wait_for(lambda: studio.job(long).final or any(e.kind == "progress" and e.data["step"] >= 2 for e in studio.events_after(long, 0)))
        assert not studio.job(long).final, (studio.job(long).state, studio.job(long).error)
        assert studio.interrupt_client("impatient") == long
        end = studio.wait(long, timeout=120)
        assert end.state == INTERRUPTED, (end.state, end.error)
        last = max(e.data["step"] for e in studio.events_after(long, 0) if e.kind == "progress")
        assert last < 150 and len(studio.images(long)) == 1

        # cancel: stops inside the run on the worker; the worker is then free for the next job
        doomed = studio.submit(request(13, steps=150), client="quitter", model="alpha").id
        wait_for(lambda: studio.job(doomed).final or any(e.kind == "progress" for e in studio.events_after(doomed, 0)))
        (ran,) = worker_of(studio, doomed)
        studio.cancel(doomed)
        assert studio.wait(doomed, timeout=120).state == CANCELLED
        wait_for(lambda: infos(cluster)[ran]["running"] is None, timeout=30)
        after = studio.submit(request(14), client="quitter", model="alpha").id
        assert studio.wait(after, timeout=120).state == DONE
    finally:
        close(studio)


def test_a_job_a_worker_refuses_runs_on_another(cluster):
    # a worker whose time limit no job meets (as --max-job-minutes on a slow machine);
    # the jobs are hires fixes, which are always checked against the limit
    (strict,) = start_workers(str(cluster["home"]), devices=["cpu"], threads="1", max_job_minutes=1e-6)
    cluster["handles"].append(strict)
    refuser = ray.get(strict.info.remote())["name"]

    def refuser_first(order, workers, est):  # offer every job to the strict worker first
        return assign_round_robin(order, sorted(workers, key=lambda w: w.id != refuser))

    studio = studio_on(cluster, "refuse.sqlite3", scheduler=refuser_first)
    try:
        wait_for(lambda: refuser in studio.pool.names(), timeout=30)
        jobs = [studio.submit(request(500 + i, **HIRES), client=f"u{i}", model="beta").id for i in range(3)]
        ends = [studio.wait(j, timeout=180) for j in jobs]
        assert [e.state for e in ends] == [DONE] * 3, [(e.state, e.error) for e in ends]
        for job_id in jobs:
            ran = worker_of(studio, job_id)
            assert ran[-1] != refuser and len(studio.images(job_id)) == 1
        refusals = [e.data["requeued"] for j in jobs for e in studio.events_after(j, 0) if e.kind == "state" and "requeued" in e.data]
        assert refusals and all(f"worker {refuser} refused it" in r for r in refusals)

        # refused by every worker: failed at once with the worker's own reason
        for name in studio.pool.names():
            if name != refuser:
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        wait_for(lambda: studio.pool.names() == [refuser], timeout=60)
        lonely = studio.submit(request(600, **HIRES), client="late", model="beta").id
        end = studio.wait(lonely, timeout=120)
        assert end.state == FAILED and end.error_kind == "request"
        assert "minutes" in end.error or "limit" in end.error, end.error
    finally:
        close(studio)
        ray.kill(strict, no_restart=True)


def test_without_cluster_ray_is_not_imported():
    import subprocess
    import sys

    code = "import sys; from brushwork.cli import main\ntry:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\nprint('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False"
