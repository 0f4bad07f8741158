#!/usr/bin/env python
"""torch's default CPU threads against Brushwork's choice when other programs are busy.

    python benchmarks/bench_threads.py [--busy 0,1,2] [--seconds 4] [--rounds 2]

For each K in --busy it starts K busy-loop processes (multiprocessing), then times a
fixed workload shaped like one small UNet step (3x3 convolutions on 320 channels at
32x32, a self-attention matmul over 1024 tokens, a GroupNorm) with torch's default
intra-op threads and with ``choose_threads(cores, K)`` (what ``brushwork generate``
picks once the load average has caught up with the K busy programs).  Default and
chosen runs alternate, and the median of --rounds is kept.  Prints seconds per step
for both and the ratio chosen/default (below 1: the choice is faster).  Where both
counts are the same there is nothing to compare and the ratio is 1 by definition.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _spin() -> None:  # a program that keeps one core busy
    x = 0
    while True:
        x += 1


def _workload():
    import torch

    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(320, 320, 3, padding=1) for _ in range(3)]
    norm = torch.nn.GroupNorm(32, 320)
    x = torch.randn(2, 320, 32, 32)

    @torch.inference_mode()
    def step() -> None:
        h = x
        for conv in convs:
            h = torch.nn.functional.silu(norm(conv(h)))
        tokens = h.flatten(2).transpose(1, 2)  # (2, 1024, 320)
        attn = torch.softmax(tokens @ tokens.transpose(1, 2) / 320**0.5, dim=-1)
        (attn @ tokens).sum()

    return step


def _time(step, threads: int, seconds: float) -> float:
    import torch

    torch.set_num_threads(threads)
    step()  # warm-up at this thread count
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 2:
            return elapsed / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", default=None, help="comma-separated counts of busy processes (default: 0, half the cores, all the cores)")
    p.add_argument("--seconds", type=float, default=4.0, help="time each configuration at least this long")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    import torch

    from brushwork.runtime import choose_threads, recent_load, usable_cores

    cores = usable_cores()
    default = torch.get_num_threads()
    busy = [int(k) for k in args.busy.split(",")] if args.busy else sorted({0, max(1, cores // 2), cores})
    print(f"{cores} usable cores, torch {torch.__version__} default {default} threads; 1-min load before start {recent_load():.2f}")
    step = _workload()
    print(f"{'busy':>4}  {'default':>8}  {'chosen':>7}  {'s/step default':>14}  {'s/step chosen':>13}  {'chosen/default':>14}")
    for k in busy:
        procs = [mp.Process(target=_spin, daemon=True) for _ in range(k)]
        for proc in procs:
            proc.start()
        try:
            time.sleep(1.0)
            chosen = choose_threads(cores, k)
            d_times, c_times = [], []
            for _ in range(args.rounds):
                d_times.append(_time(step, default, args.seconds))
                c_times.append(_time(step, chosen, args.seconds) if chosen != default else d_times[-1])
            d, c = statistics.median(d_times), statistics.median(c_times)
            print(f"{k:>4}  {default:>8}  {chosen:>7}  {d:>14.3f}  {c:>13.3f}  {c / d:>14.2f}", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join()
    print(f"1-min load at the end {recent_load():.2f} (it lags: the engine reads it at start)")
    torch.set_num_threads(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
