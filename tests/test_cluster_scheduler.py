"""The cluster scheduler (cluster/scheduler.py): pure, no Ray (issue 20, item 2)."""
from __future__ import annotations

from brushwork.cluster.scheduler import Estimates, JobView, WorkerView, assign, assign_round_robin
from brushwork.server.studio import FairQueue


def est(load=10.0, step=1.0) -> Estimates:
    e = Estimates()
    for w in ("w0", "w1", "w2"):
        e.step[w] = step
        for m in ("A", "B", "C"):
            e.load[(w, m)] = load
    return e


def job(i, model, client="c", work=20.0, **kw) -> JobView:
    return JobView(f"j{i}", client, model, work, **kw)


def test_a_job_goes_to_the_worker_that_holds_its_checkpoint():
    workers = [WorkerView("w0", "A"), WorkerView("w1", "B")]
    plan = assign([job(0, "B"), job(1, "A")], workers, est())
    assert dict(plan.start) == {"j0": "w1", "j1": "w0"}


def test_idle_workers_holding_a_model_take_its_jobs_ahead_of_others_within_patience():
    workers = [WorkerView("w0", "A"), WorkerView("w1", "A", busy_for=5, idle=False)]
    plan = assign([job(0, "B"), job(1, "A")], workers, est())
    assert dict(plan.start) == {"j1": "w0"}  # no load; the B job waits a round
    late = assign([job(0, "B", waited=61.0), job(1, "A")], workers, est(), patience=60)
    assert dict(late.start) == {"j0": "w0"}  # out of patience: served in its fair turn


def test_without_a_holder_the_least_loaded_worker_counting_the_load_time_wins():
    # w0 is free in 3 s and holds C; w1 is idle but holds B: a C job waits for w0
    workers = [WorkerView("w0", "C", busy_for=3, idle=False), WorkerView("w1", "B")]
    assert assign([job(0, "C")], workers, est(load=10)).start == ()
    # a long wait (30 s) costs more than the 10 s load: w1 loads it now
    busy = [WorkerView("w0", "C", busy_for=30, idle=False), WorkerView("w1", "B")]
    assert dict(assign([job(0, "C")], busy, est(load=10)).start) == {"j0": "w1"}


def test_a_long_line_of_one_checkpoint_spreads_to_more_workers():
    workers = [WorkerView("w0", "A"), WorkerView("w1", None), WorkerView("w2", None)]
    plan = assign([job(i, "A") for i in range(6)], workers, est(load=10, step=1))
    assert sorted(w for _, w in plan.start) == ["w0", "w1", "w2"]


def test_refused_workers_are_skipped_and_a_job_refused_by_all_is_unrunnable():
    workers = [WorkerView("w0", "A"), WorkerView("w1", "A")]
    plan = assign([job(0, "A", refused_by=frozenset({"w0"}))], workers, est())
    assert dict(plan.start) == {"j0": "w1"}
    nowhere = assign([job(0, "A", refused_by=frozenset({"w0", "w1"})), job(1, "A")], workers, est())
    assert nowhere.unrunnable == ("j0",) and dict(nowhere.start) == {"j1": "w0"}


def test_fair_order_is_kept_when_models_do_not_decide():
    workers = [WorkerView("w0", "A")]
    order = [job(0, "A", client="alice"), job(1, "A", client="bob")]
    assert assign(order, workers, est()).start == (("j0", "w0"),)


def test_the_lora_set_a_worker_holds_breaks_ties():
    workers = [WorkerView("w0", "A", loras=frozenset({"x"})), WorkerView("w1", "A")]
    # past its patience the job is placed by finish time, where a LoRA merge costs
    only_second = assign([job(0, "A", loras=frozenset({"x"}), waited=999)], workers, est())
    assert dict(only_second.start) == {"j0": "w0"}


def test_round_robin_ignores_models():
    workers = [WorkerView("w0", "A"), WorkerView("w1", "B")]
    plan = assign_round_robin([job(0, "B"), job(1, "A")], workers)
    assert dict(plan.start) == {"j0": "w0", "j1": "w1"}  # both load


def test_estimates_learn_load_and_step_times():
    e = Estimates()
    assert e.load_seconds("w0", "A") == 10.0 and e.run_seconds("w0", 10) == 10.0
    e.saw_load("w0", "A", 4.0)
    e.saw_run("w0", 10, 5.0)
    assert e.load_seconds("w0", "A") == 4.0 and e.load_seconds("w9", "A") == 4.0  # any worker: the model's
    assert e.run_seconds("w0", 10) == 5.0 and e.run_seconds("w9", 10) == 5.0
    e.saw_load("w0", "A", 8.0)
    assert e.load_seconds("w0", "A") == 6.0
    assert e.load_seconds("w0", None) == 0.0


def test_push_front_puts_a_requeued_job_first_in_its_clients_line():
    q = FairQueue()
    q.push("alice", "a1")
    q.push("alice", "a2")
    q.push("bob", "b1")
    q.push_front("alice", "a0")
    assert q.line("alice") == ["a0", "a1", "a2"]
    assert q.pop() == "a0"


def test_jobs_waiting_for_busy_workers_form_each_workers_planned_line():
    workers = [WorkerView("w0", "A", busy_for=5.0, idle=False), WorkerView("w1", "B", busy_for=30.0, idle=False), WorkerView("w2", "C")]
    order = [job(0, "A"), job(1, "B"), job(2, "A"), job(3, "C"), job(4, "C")]
    plan = assign(order, workers, est(load=10, step=1))
    assert plan.start == (("j3", "w2"),)  # the idle worker takes its own checkpoint's job now
    assert plan.lines == {"w0": ("j0", "j2"), "w1": ("j1",), "w2": ("j4",)}
    placed = [j for j, _ in plan.start] + [j for line in plan.lines.values() for j in line]
    assert sorted(placed) == sorted(j.id for j in order)  # every waiting job is somewhere, once
