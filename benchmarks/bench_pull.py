"""How fast ``brushwork.fetch.pull`` downloads, against ``curl`` on the same URL.

Makes a sparse (zero-filled) file of ``--size-gb`` GB in a temporary folder, serves
it from a local threaded HTTP server that sends with ``os.sendfile`` (the
``FileServer`` of tests/fake_model_servers.py), then times, once each:

* ``curl -s -o FILE URL``;
* ``pull`` of the same URL, as a starter-list entry with the sha256 pinned, so the
  run includes hashing, the hash check, fsync and moving the file into place.

pull flushes the file to disk in the background while it downloads and fsyncs it before
renaming it (curl does neither), so curl's time is
also shown with an fsync of its file afterwards; that is the like-for-like ratio.
``--no-fsync`` turns pull's fsync off to compare with plain curl.  Each timing
starts after ``os.sync()``, so dirty pages of one step do not slow the next.

It prints the throughputs, the ratios (target >= 0.9) and the peak growth of this
process's RSS during the pull, sampled every 0.1 s with psutil (target: flat,
< 100 MiB).  Everything it wrote is removed at the end.

    .venv/bin/python benchmarks/bench_pull.py [--size-gb 2] [--tmp /some/folder]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def rss_bytes() -> int:
    """This process's resident set size (psutil, else /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak RSS while it runs, sampled every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.base = rss_bytes()
        self.peak = self.base
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def time_curl(url: str, out: Path, size: int) -> tuple[float, float]:
    """(seconds for curl, seconds for curl plus an fsync of its file)."""
    os.sync()  # start each timing with no dirty pages from the steps before
    t = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", str(out), url], check=True)
    curl_s = time.perf_counter() - t
    with open(out, "rb") as f:  # the durability pull gives (it fsyncs before the rename)
        os.fsync(f.fileno())
    both = time.perf_counter() - t
    assert out.stat().st_size == size
    out.unlink()
    return curl_s, both


def time_pull(home_dir: Path, size: int, digest: str) -> tuple[float, "RssSampler"]:
    from brushwork.fetch import pull
    from brushwork.paths import DataHome

    os.sync()
    with RssSampler() as rss:
        t = time.perf_counter()
        result = pull(DataHome(home_dir), "bench-file")
        seconds = time.perf_counter() - t
    assert result.size == size and result.sha256 == digest and not result.already_installed
    shutil.rmtree(home_dir)
    return seconds, rss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of the served file in GB (default 2)")
    parser.add_argument("--tmp", help="folder for the temporary files (default: the system's temp folder)")
    parser.add_argument("--no-fsync", action="store_true", help="skip pull's fsync of the finished file (compare with plain curl)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate curl and pull this many times; the best run of each counts (default 1)")
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is not installed; it is the reference this benchmark compares with.", file=sys.stderr)
        return 2

    import fake_model_servers as fake
    from brushwork.fetch import download, starter_data

    size = int(args.size_gb * (1 << 30))
    work = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=args.tmp))
    server = fake.FileServer()
    try:
        source = work / "served.safetensors"
        with open(source, "wb") as f:
            f.truncate(size)  # sparse: zeros, no disk reads when served
        print(f"file: {size / 1e9:.2f} GB (sparse) in {work}; {os.cpu_count()} CPUs", flush=True)
        t = time.perf_counter()
        digest = sha256_of(source)
        print(f"sha256 of the file (pinned for the pull): {digest[:16]}... ({time.perf_counter() - t:.1f} s to compute, not timed)")
        url = server.add_disk("served.safetensors", source)
        download.FSYNC = not args.no_fsync
        starter_data.STARTERS = [{"name": "bench-file", "label": "benchmark file", "source": url, "file_name": "served.safetensors",
                                  "kind": "checkpoint", "family": "sd1", "size": size, "sha256": digest}]
        curls, pulls, peaks = [], [], []
        for _ in range(max(1, args.repeats)):
            curls.append(time_curl(url, work / "curl.out", size))
            seconds, rss = time_pull(work / "home", size, digest)
            pulls.append(seconds)
            peaks.append((rss.peak - rss.base, rss.samples, rss.base))
        curl_s = min(c for c, _ in curls)
        curl_sync_s = min(b for _, b in curls)
        pull_s = min(pulls)
        mb = lambda seconds: size / seconds / 1e6  # noqa: E731
        what = "no fsync" if args.no_fsync else "incl. fsync"
        runs = f" (best of {len(pulls)})" if len(pulls) > 1 else ""
        print(f"curl -s -o FILE URL{runs}:        {curl_s:6.2f} s  {mb(curl_s):8.1f} MB/s")
        print(f"curl, then fsync FILE{runs}:      {curl_sync_s:6.2f} s  {mb(curl_sync_s):8.1f} MB/s")
        print(f"brushwork pull, {what}{runs}: {pull_s:6.2f} s  {mb(pull_s):8.1f} MB/s  (sha256 while downloading, checked, moved into place)")
        if len(pulls) > 1:
            print("  all runs, s: curl " + " ".join(f"{c:.2f}" for c, _ in curls) + " | curl+fsync " + " ".join(f"{b:.2f}" for _, b in curls)
                  + " | pull " + " ".join(f"{p:.2f}" for p in pulls))
        if args.no_fsync:
            print(f"ratio pull / curl: {curl_s / pull_s:.2f}  (target >= 0.90)")
        else:
            print(f"ratio pull / (curl + fsync): {curl_sync_s / pull_s:.2f}  (target >= 0.90; the same durability)")
            print(f"ratio pull / curl alone:     {curl_s / pull_s:.2f}  (curl leaves its file in the page cache)")
        growth, samples, base = max(peaks)
        print(f"peak RSS growth during the pull: {growth / (1 << 20):.1f} MiB over {samples} samples "
              f"(base {base / (1 << 20):.0f} MiB; target < 100 MiB)")
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
