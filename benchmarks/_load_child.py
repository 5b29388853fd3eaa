"""One build + weight load in a fresh process: wall time and peak resident memory over baseline.

    python benchmarks/_load_child.py {ours,keras} {vgg16,resnet50} FILE

Both libraries are imported and the runtime is warmed up identically (a tiny model, one op, one
HDF5 open) before the baseline is taken, so the peak-RSS difference is the load alone. The
high-water mark is reset to the current RSS first (`/proc/self/clear_refs`): otherwise a
transient peak during the imports can hide a smaller load entirely. `getrusage`'s maxrss delta
is reported too. Prints one JSON line.
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BUILDERS = {"vgg16": "VGG16", "resnet50": "ResNet50"}


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def status_mib(field):
    """VmRSS / VmHWM of this process from /proc/self/status, in MiB (None if unavailable)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak():
    """Reset the peak-RSS high-water mark to the current RSS; False where Linux does not allow."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def main(lib, model_name, path):
    import h5py
    import keras
    import numpy as np

    import keras_vggres
    import keras_vggres.weights.h5  # noqa: F401  (imported on both sides alike)
    import keras_vggres.weights.manifest  # noqa: F401

    builder = getattr(keras_vggres if lib == "ours" else keras.applications, BUILDERS[model_name])
    tiny = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    tiny(np.zeros((1, 4), "float32"))
    with h5py.File(path, "r"):
        pass
    del tiny
    hwm_reset = reset_peak()
    baseline, baseline_maxrss = status_mib("VmRSS"), max_rss_mib()
    start = time.perf_counter()
    model = builder(weights=path)
    seconds = time.perf_counter() - start
    maxrss_delta = max_rss_mib() - baseline_maxrss
    extra = status_mib("VmHWM") - baseline if hwm_reset else maxrss_delta
    print(json.dumps({"lib": lib, "model": model_name, "seconds": seconds,
                      "baseline_mib": baseline, "extra_peak_mib": extra,
                      "maxrss_delta_mib": maxrss_delta, "hwm_reset": hwm_reset,
                      "file_mib": os.path.getsize(path) / 2**20,
                      "params": model.count_params()}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
