"""Brushwork on a Ray cluster: one server's queue spread over the GPUs of several machines.

- ``scheduler.py``: which waiting job runs on which worker (pure: no Ray, no engine).
- ``worker.py``: :class:`~brushwork.cluster.worker.EngineWorker`, an engine in a Ray
  actor (``brushwork worker``).
- ``pool.py``: the server's side, finding workers and running a job on one
  (``brushwork serve --cluster``, ``brushwork cluster status``).

Nothing here imports Ray at the top; it is imported only where a cluster is used.
See docs/cluster.md.
"""
