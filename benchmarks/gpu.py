"""Training and inference throughput on accelerators with Keras on JAX: images/s, step times, MFU.

    KERAS_BACKEND=jax python benchmarks/gpu.py --peak-tflops 989      # an H100/H200 (bf16 dense)
    KERAS_BACKEND=jax python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke.json   # CPU, < 1 min

For ResNet50 (v1 and v1.5), ResNet18 and VGG16 at 224 px:
- training: a batch-size sweep of full training steps (forward, backward, SGD with momentum,
  BatchNorm statistics updated) under the `mixed_bfloat16` policy, compiled by XLA (`jax.jit`:
  on JAX every compiled step is XLA, i.e. Keras' `jit_compile=True`), with
  `keras.distribution.DataParallel` over all local devices (variables replicated, the batch
  split across devices; the batch sizes are global);
- inference: `model(x, training=False)` at batch 1, 64 and 256, same policy, compiled.
Synthetic images and labels are generated on the devices (`jax.random`) and sharded there: no
host-to-device copy is timed. Warm-up steps (compilation included) are excluded; every timed
step is synchronised (`block_until_ready`), so the spread (median, p10, p90) is per step.
MFU = achieved model FLOP/s / (`--peak-tflops` per device x devices); model FLOPs come from the
Keras graph (`keras_vggres.costs`: conv + dense MACs; training = 3 x forward MACs x 2 FLOPs).

A real run needs a GPU or TPU and writes `benchmarks/results_gpu.json`; `--smoke` runs on the
CPU at 32 px, batch 2, 2 steps, and writes only where `--out` says (or nowhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from keras_vggres.costs import count_costs  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))


def training_flops(forward_macs_per_image):
    """FLOPs of one training step per image: forward + backward = 3 x forward, 2 FLOPs per MAC."""
    return 3 * 2 * forward_macs_per_image

RESULTS = os.path.join(HERE, "results_gpu.json")
MODELS = {  # benchmark name -> (builder, builder options)
    "resnet50": ("ResNet50", {"variant": "v1"}),
    "resnet50_v1.5": ("ResNet50", {"variant": "v1.5"}),
    "resnet18": ("ResNet18", {}),
    "vgg16": ("VGG16", {}),
}
POLICY = "mixed_bfloat16"
CLASSES = 1000
SMOKE = {"image_size": 32, "train_batch_sizes": (2,), "infer_batch_sizes": (1,),
         "steps": 2, "warmup": 1}
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0"  # compile fast: --smoke times nothing


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak dense bf16 TFLOP/s of ONE device (e.g. 989 for an H100/H200 "
                             "SXM); without it MFU is not reported")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, among {', '.join(MODELS)}")
    parser.add_argument("--train-batch-sizes", default="64,128,256",
                        help="global batch sizes of the training sweep")
    parser.add_argument("--infer-batch-sizes", default="1,64,256")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on whatever device (the CPU): checks the script only")
    parser.add_argument("--out", default=None,
                        help=f"JSON to write (default: {RESULTS} for a real run; none for "
                             "--smoke)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose among {list(MODELS)}")
    args.train_batch_sizes = _ints(parser, "--train-batch-sizes", args.train_batch_sizes)
    args.infer_batch_sizes = _ints(parser, "--infer-batch-sizes", args.infer_batch_sizes)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
    elif args.out is None:
        args.out = RESULTS
    return args


def _ints(parser, flag, text):
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        parser.error(f"{flag}: expected positive integers separated by commas; received {text!r}")
    return values


# --------------------------------------------------------------------------- devices and data


def setup(args):
    """DataParallel over all local devices and the bf16 policy; the device description."""
    import jax
    import keras

    if keras.backend.backend() != "jax":
        sys.exit(f"benchmarks/gpu.py runs on the JAX backend; KERAS_BACKEND is "
                 f"{keras.backend.backend()!r}. Run it with KERAS_BACKEND=jax.")
    devices = jax.devices()
    platform_name = devices[0].platform
    if not args.smoke and platform_name not in ("gpu", "tpu"):
        sys.exit(f"No GPU or TPU visible to JAX (devices: {devices}); a real run would record "
                 "CPU figures as GPU ones. Use --smoke to check the script on the CPU.")
    configure()
    return {"platform": platform_name, "count": len(devices),
            "kind": getattr(devices[0], "device_kind", platform_name),
            "names": [str(d) for d in devices]}


def configure():
    """DataParallel over every local device, bf16 mixed precision (again after clear_session,
    which resets both)."""
    import keras

    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()))
    keras.mixed_precision.set_global_policy(POLICY)


def synthetic_batch(batch_size, image_size, seed):
    """Images N(0, 1) and labels, created on the devices and split along the batch."""
    import jax

    key_x, key_y = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(key_x, (batch_size, image_size, image_size, 3), "float32")
    y = jax.random.randint(key_y, (batch_size,), 0, CLASSES)
    return _shard(x), _shard(y)


def _shard(array):
    """Split along the batch when it divides by the device count, else replicate."""
    import keras

    distribution = keras.distribution.distribution()
    mesh = distribution.device_mesh
    if array.shape[0] % mesh.devices.size == 0:
        layout = distribution.get_data_layout(array.shape)
    else:
        layout = keras.distribution.TensorLayout([None] * array.ndim, mesh)
    return keras.distribution.distribute_tensor(array, layout)


# ------------------------------------------------------------------------------- the steps


def build(name, image_size):
    import keras_vggres

    builder, options = MODELS[name]
    return getattr(keras_vggres, builder)(weights=None, input_shape=(image_size, image_size, 3),
                                          classes=CLASSES, **options)


def train_step_fn(model, optimizer):
    """A jitted full training step on (trainable, non-trainable, optimizer) state."""
    import jax
    import keras

    def loss_and_state(trainable, non_trainable, x, y):
        probabilities, non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                            training=True)
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))
        return loss, non_trainable

    grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

    def step(state, x, y):
        trainable, non_trainable, opt_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return loss, (trainable, non_trainable, opt_vars)

    return jax.jit(step, donate_argnums=0)


def timed(run, steps, warmup):
    """Seconds of each of `steps` synchronised calls of `run()`, after `warmup` calls."""
    import jax

    start = time.perf_counter()
    for _ in range(warmup):
        jax.block_until_ready(run())
    compile_and_warmup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return np.asarray(times), compile_and_warmup


def summarize(times, batch_size, flops_per_image, peak_flops):
    images_per_s = batch_size * len(times) / times.sum()
    achieved = images_per_s * flops_per_image
    return {"images_per_s": round(float(images_per_s), 2),
            "step_ms": {"median": round(float(np.median(times)) * 1e3, 3),
                        "p10": round(float(np.percentile(times, 10)) * 1e3, 3),
                        "p90": round(float(np.percentile(times, 90)) * 1e3, 3)},
            "achieved_tflops": round(achieved / 1e12, 4),
            "mfu": None if peak_flops is None else round(achieved / peak_flops, 4),
            "timed_steps": len(times)}


def train_sweep(model, args, flops, peak, devices):
    import keras

    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = train_step_fn(model, optimizer)
    results = {}
    for batch_size in args.train_batch_sizes:
        if batch_size % devices["count"]:
            results[str(batch_size)] = {"skipped": f"not divisible by {devices['count']} devices"}
            continue
        x, y = synthetic_batch(batch_size, args.image_size, seed=batch_size)
        groups = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        state = [tuple([v.value for v in group] for group in groups)]

        def run():
            loss, state[0] = step(state[0], x, y)
            return loss

        try:
            times, warm = timed(run, args.steps, args.warmup)
        except Exception as err:  # XLA out of memory ends the sweep, not the run
            if "RESOURCE_EXHAUSTED" not in str(err) and "out of memory" not in str(err).lower():
                raise
            results[str(batch_size)] = {"skipped": "out of device memory"}
            break
        finally:  # the step donates its input state: the variables take the latest one back
            for group, values in zip(groups, state[0]):
                for variable, value in zip(group, values):
                    variable.assign(value)
        results[str(batch_size)] = {**summarize(times, batch_size, flops, peak),
                                    "warmup_s": round(warm, 2)}
    return results


def infer_sweep(model, args, flops, peak):
    import jax

    forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    results = {}
    for batch_size in args.infer_batch_sizes:
        x, _ = synthetic_batch(batch_size, args.image_size, seed=batch_size)
        times, warm = timed(lambda: forward(trainable, non_trainable, x), args.steps, args.warmup)
        results[str(batch_size)] = {**summarize(times, batch_size, flops, peak),
                                    "warmup_s": round(warm, 2)}
    return results


# ----------------------------------------------------------------------------------- driver


def environment(args, devices):
    import jax
    import keras

    return {"backend": keras.backend.backend(), "jax": jax.__version__,
            "keras": keras.__version__, "python": platform.python_version(),
            "devices": devices, "policy": POLICY, "xla": True,
            "distribution": f"DataParallel over {devices['count']} device(s)",
            "peak_tflops_per_device": args.peak_tflops, "image_size": args.image_size,
            "steps": args.steps, "warmup_steps": args.warmup, "smoke": args.smoke,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def main(argv=None):
    args = parse_args(argv)
    import keras

    started = time.perf_counter()
    devices = setup(args)
    peak = None if args.peak_tflops is None else args.peak_tflops * 1e12 * devices["count"]
    report = {"environment": environment(args, devices), "models": {}}
    for name in args.models:
        configure()
        model = build(name, args.image_size)
        assert model.dtype_policy.name == POLICY
        macs = count_costs(model).macs
        train_flops = training_flops(macs)
        report["models"][name] = {
            "forward_gmacs_per_image": round(macs / 1e9, 4),
            "train_gflops_per_image": round(train_flops / 1e9, 4),
            "train": train_sweep(model, args, train_flops, peak, devices),
            "inference": infer_sweep(model, args, 2 * macs, peak),
        }
        print(json.dumps({name: report["models"][name]}), flush=True)
        keras.backend.clear_session()
    report["environment"]["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
