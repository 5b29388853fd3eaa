"""The four side-by-side measurements of run.py: build, load, predict, train.

Each returns `(ratios, raw)` (load: also keras_vggres' absolute figures): ratios oriented so
that > 1 means keras_vggres is better, raw timings for results.json. Ours and
keras.applications always run in the same process (or, for loading, in identical fresh
processes), interleaved.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from _harness import BENCH_DIR, interleaved, median, paired_ratios, summary

CACHE = BENCH_DIR / "_cache"
SHARED_MODELS = ("VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152",
                 "ResNet50V2", "ResNet101V2", "ResNet152V2")


RATIO_RUNS = {}  # ratio name -> its per-repetition values, for the README's noise column


def _paired(key, times, reference, ours):
    """The ratio `key`: median of per-repetition reference/ours times (recorded in RATIO_RUNS)."""
    runs = paired_ratios(times, reference, ours)
    RATIO_RUNS[key] = [round(r, 3) for r in runs]
    return median(runs)


def _builders(name):
    import keras

    import keras_vggres

    return getattr(keras_vggres, name), getattr(keras.applications, name)


def _fresh():
    gc.collect()


# ------------------------------------------------------------------------------ 1. build
def bench_build(*, quick):
    """Model construction with weights=None (random init included: both use Keras' initializers)."""
    models = ("VGG16", "ResNet50") if quick else SHARED_MODELS
    reps = 4 if quick else 7
    ratios, raw = {}, {}
    for name in models:
        ours, ref = _builders(name)
        for include_top in (True, False):
            def run(builder, include_top=include_top):
                model = builder(weights=None, include_top=include_top)
                del model
                _fresh()

            times = interleaved({"ours": lambda: run(ours), "keras": lambda: run(ref)},
                                reps=reps, warmup=1)
            key = f"build_{name.lower()}_{'top' if include_top else 'notop'}"
            ratios[key] = _paired(key, times, "keras", "ours")
            raw[key] = summary(times)
            print(f"  {key}: ours {median(times['ours']):.2f}s keras {median(times['keras']):.2f}s",
                  flush=True)
    return ratios, raw


# ------------------------------------------------------------------------------ 2. load
def weight_file(model_name):
    """A legacy-format HDF5 file with random weights for `model_name`, generated once."""
    path = CACHE / f"{model_name}_top_random.h5"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        code = ("import keras; from keras_vggres.weights.h5 import save_weights_h5; "
                f"save_weights_h5(keras.applications.{_child_builder(model_name)}(weights=None), "
                f"{str(path)!r})")
        subprocess.run([sys.executable, "-c", code], check=True, env=_child_env())
    return path


def _child_builder(model_name):
    return {"vgg16": "VGG16", "resnet50": "ResNet50"}[model_name]


def _child_env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _warm_page_cache(path, chunk=16 << 20):
    """Read `path` once so that both sides load from the page cache, never one from disk
    (this VM reclaims cold page cache within minutes)."""
    with open(path, "rb") as handle:
        while handle.read(chunk):
            pass


def _load_once(lib, model_name, path):
    _warm_page_cache(path)
    out = subprocess.run([sys.executable, str(BENCH_DIR / "_load_child.py"), lib, model_name,
                          str(path)], check=True, capture_output=True, text=True,
                         env=_child_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_load(*, quick):
    """`Builder(weights=<local legacy .h5>)`: build + load time, extra peak RSS; fresh processes."""
    reps = {"vgg16": 2, "resnet50": 1} if quick else {"vgg16": 5, "resnet50": 5}
    ratios, raw, absolute = {}, {}, {}
    for model_name in ("vgg16", "resnet50"):
        path = weight_file(model_name)
        runs = {"ours": [], "keras": []}
        for rep in range(reps[model_name]):
            order = ("ours", "keras") if rep % 2 == 0 else ("keras", "ours")
            for lib in order:
                runs[lib].append(_load_once(lib, model_name, path))
        secs = {lib: [r["seconds"] for r in rs] for lib, rs in runs.items()}
        mem = {lib: [r["extra_peak_mib"] for r in rs] for lib, rs in runs.items()}
        file_mib = runs["ours"][0]["file_mib"]
        for kind, values in (("time", secs), ("memory", mem)):
            key = f"load_{kind}_{model_name}"
            ratios[key] = _paired(key, values, "keras", "ours")
        maxrss = {lib: [r["maxrss_delta_mib"] for r in rs] for lib, rs in runs.items()}
        raw[f"load_{model_name}"] = {"seconds": summary(secs), "extra_peak_mib": summary(mem),
                                     "getrusage_maxrss_delta_mib": summary(maxrss),
                                     "file_mib": round(file_mib, 1)}
        absolute[f"{model_name}_build_load_seconds"] = round(median(secs["ours"]), 3)
        absolute[f"{model_name}_extra_peak_over_file"] = round(median(mem["ours"]) / file_mib, 3)
        print(f"  load {model_name}: ours {median(secs['ours']):.2f}s "
              f"{median(mem['ours']):.0f} MiB, keras {median(secs['keras']):.2f}s "
              f"{median(mem['keras']):.0f} MiB (file {file_mib:.0f} MiB)", flush=True)
    return ratios, raw, absolute


# ------------------------------------------------------------------------------ 3. predict
def _predict_runner(model, x, batch_size):
    """A callable doing one `predict` call on `x` (returns the number of images), and the
    duration of a call; the first call (tracing, XLA compilation) is never timed."""
    model.predict(x, batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - start

    def run():
        model.predict(x, batch_size=batch_size, verbose=0)
        return len(x)

    return run, seconds


def repetitions(seconds_per_rep, *, budget_s, minimum=5, maximum=30):
    """Enough repetitions for `budget_s` of timing per variant, within [minimum, maximum]."""
    return int(min(maximum, max(minimum, math.ceil(budget_s / max(seconds_per_rep, 1e-3)))))


def _predict_variants(name, *, jit):
    """The compared models, all with the same weights.

    keras / ours: the builders' models, default predict (no XLA on CPU-only TensorFlow);
    ours_optimized: `optimize_for_inference(ours)` with its defaults; with `jit`, also each of
    them with `jit_compile=True` (keras_jit, ours_jit, ours_optimized_jit).
    """
    import keras_vggres

    ours_builder, ref_builder = _builders(name)
    ref = ref_builder(weights=None)
    ours = ours_builder(weights=None)
    ours.set_weights(ref.get_weights())
    variants = {"keras": ref, "ours": ours,
                "ours_optimized": keras_vggres.optimize_for_inference(ours)}
    if jit:
        for label, builder in (("keras_jit", ref_builder), ("ours_jit", ours_builder)):
            model = builder(weights=None)
            model.set_weights(ref.get_weights())
            model.jit_compile = True
            variants[label] = model
        variants["ours_optimized_jit"] = keras_vggres.optimize_for_inference(ours,
                                                                             jit_compile=True)
    return variants


def bench_predict(*, quick):
    """`predict` throughput (images/s) at 224x224: plain, jit_compile, optimize_for_inference."""
    plan = ({"ResNet50": (1, 8), "VGG16": (1,)} if quick
            else {"ResNet50": (1, 8, 32), "VGG16": (1, 8, 32)})
    budget_s, min_reps = (3.0, 5) if quick else (20.0, 7)  # timed seconds per variant
    ratios, raw = {}, {}
    for name, batches in plan.items():
        variants = _predict_variants(name, jit=not quick)
        rng = np.random.default_rng(0)
        for batch in batches:
            x = rng.uniform(0, 255, (batch, 224, 224, 3)).astype("float32")
            check = _max_relative_difference(variants, x[:1])
            runners, call_s = {}, []
            for label, model in variants.items():
                runners[label], seconds = _predict_runner(model, x, batch)
                call_s.append(seconds)
            reps = repetitions(median(call_s), budget_s=budget_s, minimum=min_reps,
                               maximum=40)
            times = interleaved(runners, reps=reps, warmup=0)
            ips = {label: 1.0 / median(t) for label, t in times.items()}
            key = f"{name.lower()}_b{batch}"
            pairs = {f"predict_{key}": ("keras", "ours"),
                     f"inference_{key}": ("keras", "ours_optimized")}
            if "keras_jit" in ips:
                pairs.update({f"predict_{key}_jit": ("keras_jit", "ours_jit"),
                              f"inference_{key}_jit": ("keras_jit", "ours_optimized_jit")})
            for ratio, (reference, ours) in pairs.items():
                ratios[ratio] = _paired(ratio, times, reference, ours)
            raw[f"predict_{key}"] = {"images_per_s": {k: round(v, 3) for k, v in ips.items()},
                                     "seconds_per_image": summary(times),
                                     "max_relative_difference_vs_keras": check}
            print(f"  predict {key}: " + ", ".join(f"{k} {v:.2f}/s" for k, v in ips.items()),
                  flush=True)
        del variants
        _fresh()
    return ratios, raw


def _max_relative_difference(variants, x):
    """Every variant's output vs keras.applications', as max |diff| / max |reference|."""
    reference = np.asarray(variants["keras"](x), np.float64)
    scale = float(np.abs(reference).max()) or 1.0
    return {label: float(np.abs(np.asarray(model(x), np.float64) - reference).max() / scale)
            for label, model in variants.items() if label != "keras"}


# ------------------------------------------------------------------------------ 4. train
def _training_model(builder, *, size, frozen, classes=10):
    import keras

    backbone = builder(weights=None, include_top=False, input_shape=(size, size, 3),
                       pooling="avg")
    inputs = keras.Input((size, size, 3))
    if frozen:
        backbone.trainable = False
        features = backbone(inputs, training=False)
    else:
        features = backbone(inputs)
    model = keras.Model(inputs, keras.layers.Dense(classes, name="head")(features))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def bench_train(*, quick):
    """`train_on_batch` steps/s on synthetic in-memory data: full fine-tune and frozen backbone."""
    size, batch = (128, 4) if quick else (224, 8)
    reps = 5 if quick else 9
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, (batch,))
    ratios, raw = {}, {}
    ours_builder, ref_builder = _builders("ResNet50")
    for mode in ("full", "frozen"):
        models = {lib: _training_model(builder, size=size, frozen=mode == "frozen")
                  for lib, builder in (("ours", ours_builder), ("keras", ref_builder))}
        models["ours"].set_weights(models["keras"].get_weights())

        def step(model):
            def run():
                model.train_on_batch(x, y)
                return 1
            return run

        times = interleaved({lib: step(m) for lib, m in models.items()}, reps=reps,
                            warmup=1 if quick else 2)
        key = f"train_resnet50_{mode}"
        ratios[key] = _paired(key, times, "keras", "ours")
        raw[key] = {"batch": batch, "size": size, "seconds_per_step": summary(times)}
        print(f"  {key}: ours {median(times['ours']):.2f}s/step "
              f"keras {median(times['keras']):.2f}s/step", flush=True)
        del models
        _fresh()
    return ratios, raw
