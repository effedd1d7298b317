"""Peak memory of a benchmark's process tree (driver, Ray's raylet, workers), sampled every 0.2 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading


def sample_tree(pid: int, stop: threading.Event, out: dict) -> None:
    import psutil

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            mems, names = [], []
            for p in procs:
                try:
                    mems.append(p.memory_full_info())
                    names.append(p.name())
                except psutil.Error:  # a worker that just exited
                    pass
            peaks = {
                "tree_rss_peak_mb": sum(m.rss for m in mems),  # counts shared pages (object store) in every process
                "tree_uss_peak_mb": sum(m.uss for m in mems),  # memory unique to each process: what the run adds
                "largest_process_peak_mb": max(m.rss for m in mems),
                "driver_peak_mb": root.memory_info().rss,
            }
            if peaks["largest_process_peak_mb"] / 2**20 > out.get("largest_process_peak_mb", 0):
                out["largest_process"] = names[max(range(len(mems)), key=lambda i: mems[i].rss)]  # e.g. raylet: the object store's pages
            for k, v in peaks.items():
                out[k] = max(out.get(k, 0), v / 2**20)
        except psutil.Error:
            pass
        stop.wait(0.2)


def run_child(args: list[str], label: str) -> dict:
    """Run ``python <args>`` in a fresh interpreter (its last stdout line is a JSON result) while
    sampling its process tree's memory."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    stop, mem = threading.Event(), {}
    t = threading.Thread(target=sample_tree, args=(proc.pid, stop, mem), daemon=True)
    t.start()
    stdout, _ = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{label} failed ({proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, **{k: (round(v) if isinstance(v, float) else v) for k, v in mem.items()}}
