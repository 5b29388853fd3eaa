"""Measurement plumbing for run.py: interleaved timing, machine description, load sampling, output.

Nothing here knows about models. Timings are wall-clock (`time.perf_counter`), repetitions of the
compared callables are interleaved (the order rotates every repetition, so drift and other
processes' bursts hit both sides alike), warm-up calls are never counted, and a ratio is the
median of the per-repetition ratios (`paired_ratios`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
README = BENCH_DIR / "README.md"


# ------------------------------------------------------------------------------ timing
def interleaved(callables, *, reps, warmup=1):
    """Time each of `callables` ({name: fn}) `reps` times, interleaved; return {name: [seconds]}.

    Each fn may return a number of work units done (images, steps); the time is then divided by
    it, so results are seconds per unit. `warmup` untimed rounds run first.
    """
    names = list(callables)
    for _ in range(warmup):
        for name in names:
            callables[name]()
    times = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            units = callables[name]()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed / (units or 1))
    return times


def median(values):
    return statistics.median(values)


def paired_ratios(times, reference, ours):
    """Reference time / our time for each repetition (> 1: ours faster).

    Repetition i of both sides ran back to back, so a burst of load from other processes hits
    both: the median of these per-repetition ratios is far steadier than a ratio of medians.
    """
    return [r / o for r, o in zip(times[reference], times[ours])]


def summary(times):
    """{name: {"median": s, "min": s, "max": s, "runs": [...]}} rounded for the JSON file."""
    return {name: {"median": round(median(v), 6), "min": round(min(v), 6),
                   "max": round(max(v), 6), "runs": [round(x, 6) for x in v]}
            for name, v in times.items()}


# ------------------------------------------------------------------------------ machine
def machine():
    """CPU model, cores, RAM and library versions of this machine (what the README shows)."""
    import h5py
    import keras
    import numpy
    import tensorflow as tf

    cpu = "unknown"
    flags = set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ram_gib = None
    try:
        with open("/proc/meminfo") as handle:
            kib = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
            ram_gib = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "fma"}),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": ram_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
    }


class LoadSampler:
    """Samples the 1-minute load average in the background while the benchmark runs."""

    def __init__(self, every_s=5.0):
        self.every_s = every_s
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self):
        values = self.samples or [os.getloadavg()[0]]
        return {"loadavg_1min_mean": round(statistics.mean(values), 2),
                "loadavg_1min_min": round(min(values), 2),
                "loadavg_1min_max": round(max(values), 2),
                "samples": len(values)}


# ------------------------------------------------------------------------------ output
def read_results():
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def merge_results(update, drop_prefixes=()):
    """Read-modify-write results.json: our keys replaced, everybody else's kept.

    Entries of "ratios", "targets", "absolute" and "raw" (and of "raw"'s "run.ratio_runs")
    whose names start with one of `drop_prefixes` are removed first: the stale results of the
    sections being rerun.
    """
    data = read_results()
    for table in (data.get("ratios"), data.get("targets"), data.get("absolute"), data.get("raw"),
                  data.get("raw", {}).get("run.ratio_runs")):
        for name in [n for n in (table or {}) if n.startswith(tuple(drop_prefixes))]:
            del table[name]
    for key, value in update.items():
        if key == "machine" or not isinstance(value, dict):
            data[key] = value
        else:  # ratios, raw, targets (minimum ratios), absolute: merged key by key
            data.setdefault(key, {}).update(value)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, RESULTS)
    return data


def replace_section(text, begin, end, body):
    """`text` with the part between the `begin` and `end` marker lines replaced (or appended)."""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + ("\n\n" if text.strip() else "") + block + "\n"
