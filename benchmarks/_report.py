"""The README section of run.py, rendered from results.json (so it always matches the file)."""

from __future__ import annotations

import re

OWN_PREFIXES = ("build_", "load_", "predict_", "inference_", "train_")
# (pattern, minimum ratio, what it measures); first match wins. None: reported, no target.
RATIO_TARGETS = (
    (r"inference_.*_jit$", None, "both with jit_compile=True (XLA): optimize_for_inference vs "
                                 "keras predict"),
    (r"inference_resnet50_", 1.25, "optimize_for_inference(model) vs keras predict, defaults"),
    (r"inference_vgg16_", 1.05, "optimize_for_inference(model) vs keras predict, defaults"),
    (r"predict_.*_jit$", 1.0, "predict, both with jit_compile=True"),
    (r"predict_", 1.0, "predict (default: no XLA on CPU)"),
    (r"build_", 1.0, "build, weights=None"),
    (r"load_time_", 1.0, "Builder(weights=<local .h5>): build + load time"),
    (r"load_memory_", 1.0, "Builder(weights=<local .h5>): extra peak RSS"),
    (r"train_", 1.0, "train_on_batch steps/s"),
)
# measure: (maximum, description); results.json "absolute" holds {"value", "max"} per measure.
ABSOLUTE_TARGETS = {
    "vgg16_build_load_seconds": (1.0, "VGG16(weights=<local file>) build + load, seconds"),
    "vgg16_extra_peak_over_file": (1.2, "VGG16 load: extra peak RSS / file size"),
    "resnet50_build_load_seconds": (None, "ResNet50(weights=<local file>) build + load, seconds"),
    "resnet50_extra_peak_over_file": (None, "ResNet50 load: extra peak RSS / file size"),
}


def _target(key):
    for pattern, minimum, what in RATIO_TARGETS:
        if re.match(pattern, key):
            return minimum, what
    return None, ""


def ratio_targets(ratios):
    """{ratio: minimum} for results.json's shared "targets" table (ratios with a target only)."""
    return {key: _target(key)[0] for key in ratios if _target(key)[0] is not None}


def absolute_entries(values):
    """{measure: {"value": v, "max": limit}} for results.json's "absolute" table."""
    return {key: {"value": value, "max": ABSOLUTE_TARGETS.get(key, (None, ""))[0]}
            for key, value in values.items()}


def _status(value, minimum, *, at_most=False):
    if minimum is None:
        return "—"
    ok = value <= minimum if at_most else value >= minimum
    return "met" if ok else "**below**"


def render_section(data):
    """Markdown for this script's README section."""
    machine, ratios, raw = data.get("machine", {}), data.get("ratios", {}), data.get("raw", {})
    lines = ["## keras_vggres vs keras.applications, side by side (`benchmarks/run.py`)", ""]
    lines += _how_to_run(raw.get("run.durations", {}), raw.get("run.sections", {}))
    lines += _machine(machine, raw.get("run.sections", {}))
    lines += _ratio_table(ratios, raw.get("run.ratio_runs", {}))
    lines += _absolute_table(data.get("absolute", {}))
    lines += _predict_table(raw)
    lines += _notes(raw)
    others = sorted(k for k in ratios if not k.startswith(OWN_PREFIXES))
    if others:
        targets = data.get("targets", {})
        lines += ["### Ratios written by other scripts (`bench_transfer.py`: see its section)", "",
                  "| ratio | value | target | status |", "|---|---|---|---|"]
        for key in others:
            minimum = targets.get(key)
            target = f">= {minimum}" if minimum is not None else "—"
            lines.append(f"| `{key}` | {ratios[key]:.3f} | {target} | "
                         f"{_status(ratios[key], minimum)} |")
        lines.append("")
    return "\n".join(lines)


def _how_to_run(durations, sections):
    quick = durations.get("quick")
    full = [info.get("seconds", 0) for info in sections.values() if not info.get("quick")]
    full = sum(full) if len(full) == len(sections) == 4 else durations.get("full")
    fmt = lambda s: f"{s / 60:.1f} min" if s else "not run yet"  # noqa: E731
    return [
        "```bash",
        "python benchmarks/run.py --quick   # " + fmt(quick) + " (last complete quick run)",
        "python benchmarks/run.py           # " + fmt(full) + " (sum of the sections below)",
        "python benchmarks/run.py --only predict --no-write   # one section, print only",
        "```", "",
        "Every ratio is oriented so that **> 1 means keras_vggres is better** (speed: ours / "
        "reference throughput; memory: reference / ours). Both libraries run on the same machine "
        "in the same run, repetitions interleaved (order rotated), warm-up and tracing/XLA "
        "compilation excluded; a ratio is the median of the per-repetition ratios. Loading runs "
        "in a fresh process per repetition: extra peak RSS = high-water mark (reset through "
        "`/proc/self/clear_refs` after the imports and an identical warm-up) minus the RSS at "
        "that point; `getrusage` maxrss deltas are kept in results.json as well. The weight "
        "file is read once before each load so that both sides read it from the page cache "
        "(a cold-cache load is disk-bound). Weight files are generated once with random weights in the official legacy layout "
        "(`benchmarks/_cache/`, git-ignored).", ""]


def _machine(machine, sections):
    lines = ["### Machine", ""]
    if machine:
        lines.append(
            f"- CPU: {machine.get('cpu')} ({', '.join(machine.get('cpu_flags', []))}), "
            f"{machine.get('usable_cores')} usable of {machine.get('logical_cores')} logical "
            f"cores, {machine.get('ram_gib')} GiB RAM; {machine.get('os')}")
        lines.append(
            f"- Python {machine.get('python')}, TensorFlow {machine.get('tensorflow')} (CPU, "
            f"oneDNN {machine.get('onednn')}), Keras {machine.get('keras')}, NumPy "
            f"{machine.get('numpy')}, h5py {machine.get('h5py')}")
    for name, info in sections.items():
        lines.append(
            f"- `{name}` ({'quick' if info.get('quick') else 'full'}, {info.get('seconds')} s, "
            f"finished {info.get('finished')}): 1-minute load average mean "
            f"{info.get('loadavg_1min_mean')} (min {info.get('loadavg_1min_min')}, max "
            f"{info.get('loadavg_1min_max')})")
    return lines + [""]


def _ratio_table(ratios, ratio_runs):
    own = [k for k in ratios if k.startswith(OWN_PREFIXES)]
    lines = ["### Ratios (> 1: keras_vggres better)", "",
             "Per-repetition range: the ratio of each back-to-back pair of runs (the value is "
             "their median); a range that straddles 1.0 means the difference is within noise.",
             "", "| ratio | value | per-repetition range | target | status | measures |",
             "|---|---|---|---|---|---|"]
    for key in own:
        minimum, what = _target(key)
        target = f">= {minimum}" if minimum is not None else "—"
        runs = ratio_runs.get(key, [])
        spread = f"{min(runs):.2f}–{max(runs):.2f} (n={len(runs)})" if runs else "—"
        status = _status(ratios[key], minimum)
        if status != "met" and minimum == 1.0 and runs and min(runs) <= 1.0 <= max(runs):
            status = "**below**, within noise"
        lines.append(f"| `{key}` | {ratios[key]:.3f} | {spread} | {target} | {status} | "
                     f"{what} |")
    return lines + [""]


def _absolute_table(entries):
    if not entries:
        return []
    lines = ["### Absolute targets (keras_vggres alone)", "",
             "| measure | value | target | status |", "|---|---|---|---|"]
    for key, entry in entries.items():
        limit, what = entry.get("max"), ABSOLUTE_TARGETS.get(key, (None, key))[1]
        target = f"<= {limit}" if limit is not None else "—"
        lines.append(f"| {what} | {entry['value']} | {target} | "
                     f"{_status(entry['value'], limit, at_most=True)} |")
    return lines + [""]


def _predict_table(raw):
    rows = {k.removeprefix("run.predict_"): v for k, v in raw.items()
            if k.startswith("run.predict_")}
    if not rows:
        return []
    labels = sorted({label for v in rows.values() for label in v["images_per_s"]})
    lines = ["### Predict throughput (images/s, median)", "",
             "| model, batch | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for key, value in rows.items():
        ips = value["images_per_s"]
        lines.append(f"| {key} | " + " | ".join(f"{ips[x]:.2f}" if x in ips else "—"
                                                   for x in labels) + " |")
    return lines + [""]


def _notes(raw):
    """How to read the table: what is identical, where our gains come from, what XLA does."""
    lines = ["### Reading the numbers", "",
             "- `build_*`, `predict_*`, `predict_*_jit` and `train_*` run graphs that are "
             "identical layer for layer (the parity tests check it) on identical kernels, so "
             "their true ratio is 1.0; what they show beyond that is timing noise of this "
             "shared 2-core virtual machine (load average above, per-repetition range in the "
             "table: two runs of the same graph back to back can differ by up to 2x).",
             "- `load_*`: when weights are loaded, builders skip Keras' random initialisation "
             "(kernels start as zeros and get Keras' initializers back once built, so configs "
             "and `clone_model` are unchanged), and the loader writes large weights into the "
             "variables in 4 MiB slices instead of materialising two full copies; "
             "keras.applications draws every random kernel, then reads each layer whole.",
             "- `inference_*`: `keras_vggres.optimize_for_inference(model)` folds each "
             "BatchNorm into the convolution before it (ResNet50: 53 of 53 BNs; VGG16 has "
             "none) and returns a model whose `predict` sends in-memory arrays straight to the "
             "compiled predict function instead of building Keras' per-call input pipeline. "
             "The pipeline costs tens of milliseconds per call, which dominates at batch 1 "
             "and vanishes at batch 32, where only the folding (ResNet) remains; VGG16 at "
             "large batches runs the very same oneDNN kernels as keras.applications."]
    jit = []
    for key, value in raw.items():
        ips = value.get("images_per_s", {}) if key.startswith("run.predict_") else {}
        if "ours_optimized_jit" in ips:
            jit.append(f"{key.removeprefix('run.predict_')} "
                       f"{ips['ours_optimized_jit'] / ips['ours_optimized']:.2f}")
    if jit:
        lines.append("- XLA on this CPU: `optimize_for_inference(model, jit_compile=True)` "
                     "throughput relative to the default (`\"auto\"`: no XLA on CPU-only "
                     "TensorFlow, as Keras itself decides): " + ", ".join(jit) + ".")
    return lines + [""]
