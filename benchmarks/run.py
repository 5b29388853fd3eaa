"""keras_vggres vs keras.applications, measured side by side on this machine.

    python benchmarks/run.py [--quick] [--only build,load,predict,train] [--no-write]

1. build time of the 8 shared models (top and no-top, weights=None);
2. build + weight load time and extra peak RSS from a local legacy HDF5 file (fresh processes);
3. predict throughput at batch 1/8/32, plain, with jit_compile, and through
   `keras_vggres.optimize_for_inference`;
4. training-step throughput (ResNet50, full fine-tune and frozen backbone).
The transfer-learning figures come from benchmarks/bench_transfer.py (its keys in results.json
are kept and shown, never recomputed here).

Writes benchmarks/results.json (read-modify-write: other scripts' keys are kept) and the section
of benchmarks/README.md between this script's markers. `--quick` runs fewer models, batch sizes
and repetitions (a few minutes); the full run takes much longer (see the README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cases  # noqa: E402
import _harness  # noqa: E402
from _report import absolute_entries, ratio_targets, render_section  # noqa: E402

SECTIONS = ("build", "load", "predict", "train")
PREFIXES = {"build": ("build_",), "load": ("load_", "vgg16_", "resnet50_"),  # absolute: model_*
            "predict": ("predict_", "inference_"), "train": ("train_",)}
BEGIN = "<!-- benchmarks/run.py: begin (generated, edits are overwritten) -->"
END = "<!-- benchmarks/run.py: end -->"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer models, batch sizes and repetitions (a few minutes)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures only; leave results.json and README.md as they are")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose from {SECTIONS}")
    return args


def run(sections, *, quick):
    """Run the chosen sections; return (ratios, raw, absolute measures, per-section run info)."""
    ratios, raw, absolute, info = {}, {}, {}, {}
    for section in sections:
        print(f"[{section}] load average {os.getloadavg()[0]:.2f}", flush=True)
        start = time.perf_counter()
        with _harness.LoadSampler() as load:
            result = getattr(_cases, f"bench_{section}")(quick=quick)
        ratios.update({k: round(v, 3) for k, v in result[0].items()})
        raw.update({f"run.{k}": v for k, v in result[1].items()})
        if len(result) > 2:
            absolute.update(result[2])
        info[section] = {"quick": quick, "seconds": round(time.perf_counter() - start, 1),
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **load.report()}
    return ratios, raw, absolute, info


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    ratios, raw, absolute, info = run(args.only, quick=args.quick)
    if args.no_write:
        print(f"done in {time.perf_counter() - started:.0f}s (--no-write: nothing written)")
        return
    stale = tuple(p for section in args.only for p in PREFIXES[section])
    stale += tuple(f"run.{p}" for p in stale)
    previous = _harness.read_results().get("raw", {})
    sections = {**previous.get("run.sections", {}), **info}
    ratio_runs = {k: v for k, v in previous.get("run.ratio_runs", {}).items()
                  if not k.startswith(stale)}
    ratio_runs.update(_cases.RATIO_RUNS)
    durations = dict(previous.get("run.durations", {}))
    if set(args.only) == set(SECTIONS):
        durations["quick" if args.quick else "full"] = round(time.perf_counter() - started, 1)
    raw.update({"run.sections": sections, "run.durations": durations,
                "run.ratio_runs": ratio_runs})
    data = _harness.merge_results({"machine": _harness.machine(), "ratios": ratios, "raw": raw,
                                   "targets": ratio_targets(ratios),
                                   "absolute": absolute_entries(absolute)}, drop_prefixes=stale)
    readme = _harness.README.read_text() if _harness.README.exists() else ""
    _harness.README.write_text(_harness.replace_section(readme, BEGIN, END, render_section(data)))
    print(f"done in {time.perf_counter() - started:.0f}s; wrote {_harness.RESULTS} and "
          f"{_harness.README}")


if __name__ == "__main__":
    main()
