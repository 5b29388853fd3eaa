"""Scale out: pick a tf.distribute strategy, build in its scope, mixed precision, XLA, sharding.

Nothing here invents a distribution mechanism: `strategy()` returns TensorFlow's own strategies
(TPUStrategy, MultiWorkerMirroredStrategy, MirroredStrategy, the default one) and the helpers
around it only make the usual rules explicit:

- build the model, load its weights and create the optimizer inside `strategy.scope()`
  (`build_in_scope`);
- batch the dataset with the *global* batch size, `per_replica * replicas(strategy)`
  (`global_batch_size`), and say how tf.data shards it between workers (`with_auto_shard`);
- only the chief writes shared files (`is_chief`, `chief_path`); every worker backs up to its
  own directory (`worker_backup_dir`: Keras 3's BackupAndRestore is not multi-worker aware);
- mixed precision (`set_precision`, `precision_scope`, `optimizer_for`) and XLA
  (`compile_kwargs`, `predict_fn`).

Decisions are logged on the "keras_vggres" logger. The strategies, sharding and `predict_fn` are
TensorFlow programs: on another Keras backend they raise a RuntimeError saying so
(`keras_vggres._backend.require_tensorflow`), and TensorFlow is imported only when one of them
runs. The precision and `compile_kwargs` helpers work on every backend.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import logging
import os
import tempfile

import keras

from keras_vggres._backend import TENSORFLOW, backend, device_kind, require_tensorflow
from keras_vggres._checks import (JIT_CHOICES, PRECISIONS, STRATEGY_KINDS, check_choice,
                                  check_int)

logger = logging.getLogger("keras_vggres")

SHARD_POLICIES = ("data", "file", "off")
TF_CONFIG_TASKS = ("chief", "worker", "evaluator")  # "ps" needs ParameterServerStrategy
MIN_FILES_PER_WORKER = 4      # below this, FILE sharding leaves workers badly unbalanced
TPU_ENV_HINTS = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")
_SHARD_ENUM = {"data": "DATA", "file": "FILE", "off": "OFF"}
_NO_TPU_HELP = (
    "Run on a Cloud TPU VM (`gcloud compute tpus tpu-vm create ... --version=tpu-vm-tf-<ver>`, "
    "then `gcloud compute tpus tpu-vm ssh ...`) with the TensorFlow TPU build installed, or set "
    "TPU_NAME / pass tpu=<name or grpc://address> for a TPU node. Use kind='auto' to fall back "
    "to GPUs or the CPU.")
_FEATURE = "keras_vggres.distribute (tf.distribute strategies, tf.data sharding)"
_INSTEAD = ("On JAX, distribute with keras.distribution (e.g. keras.distribution.DataParallel, "
            "as benchmarks/gpu.py does); the builders, weights and heads work there unchanged.")


def _tf():
    """The tensorflow module; a RuntimeError naming the feature on other backends."""
    return require_tensorflow(_FEATURE, instead=_INSTEAD)


# --------------------------------------------------------------------------- strategies
def strategy(kind="auto", devices=None, *, tpu=None):
    """Return a tf.distribute strategy chosen by `kind`.

    Call it at the start of the program, before any other TensorFlow work: the TPU and
    multi-worker strategies configure the TensorFlow runtime and fail once it has started.

    Args:
        kind: `"auto"` (TPU if one resolves, multi-worker if TF_CONFIG lists more than one
            worker, mirrored if there is more than one GPU, else the default strategy),
            `"tpu"`, `"multiworker"` (MultiWorkerMirroredStrategy from the TF_CONFIG
            environment variable), `"mirrored"` (MirroredStrategy over `devices`) or `"none"`
            (`tf.distribute.get_strategy()`). A `tf.distribute.Strategy` is returned as is.
        devices: for `"mirrored"`: device names; default all GPUs, or every visible logical
            CPU device when there is no GPU.
        tpu: for `"tpu"`: a TPU name or `grpc://` address; default `$TPU_NAME`, else the
            TPU attached to this VM.

    Returns:
        A `tf.distribute.Strategy`.
    """
    return _make_strategy(kind, devices, tpu)


def _make_strategy(kind, devices=None, tpu=None):
    tf = _tf()
    if isinstance(kind, tf.distribute.Strategy):
        return kind
    check_choice("kind", kind, STRATEGY_KINDS)
    if devices is not None and kind != "mirrored":
        raise ValueError(f"`devices` is only used with kind='mirrored'; received kind={kind!r}, "
                         f"devices={devices!r}.")
    if kind == "auto":
        return _auto(tpu)
    if kind == "tpu":
        return _tpu_strategy(tpu)
    if kind == "multiworker":
        return _multiworker_strategy()
    if kind == "mirrored":
        return _mirrored_strategy(devices)
    return _chosen(tf.distribute.get_strategy(), "kind='none' (the default strategy)")


def _auto(tpu):
    """The `"auto"` decision, cheapest checks first; every outcome is logged with its reason."""
    tf = _tf()
    if tpu is not None or _looks_like_tpu_host():
        try:
            return _tpu_strategy(tpu)
        except RuntimeError as err:
            logger.info("strategy(auto): a TPU was hinted but did not resolve (%s); "
                        "looking further.", err.__cause__ or err)
    config = read_tf_config()
    workers = _count_workers(config)
    if workers > 1:
        return _multiworker_strategy(f"TF_CONFIG lists {workers} workers")
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return _mirrored_strategy(None, f"{len(gpus)} GPUs are visible")
    why = ("no TPU, no multi-worker TF_CONFIG and "
           f"{'one GPU' if gpus else 'no GPU'}: the default (single-device) strategy")
    return _chosen(tf.distribute.get_strategy(), why)


def _chosen(result, why):
    logger.info("strategy: %s (%s replica(s)) because %s.", type(result).__name__,
                result.num_replicas_in_sync, why)
    return result


def _looks_like_tpu_host():
    """True when the environment suggests a TPU, without touching the TensorFlow runtime."""
    if any(os.environ.get(name) for name in TPU_ENV_HINTS):
        return True
    if glob.glob("/dev/accel[0-9]*"):          # TPU v2-v4 VMs
        return True
    return importlib.util.find_spec("libtpu") is not None   # TPU VM images ship libtpu


def _tpu_strategy(tpu=None):
    """TPUStrategy for `tpu`; RuntimeError with instructions when no TPU can be reached."""
    tf = _tf()
    try:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        except ValueError:          # no name given and none in the environment: a TPU VM?
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as err:
        raise RuntimeError(f"No TPU was found (kind='tpu', tpu={tpu!r}). {_NO_TPU_HELP}") from err
    return _chosen(tf.distribute.TPUStrategy(resolver), f"a TPU resolved (tpu={tpu!r})")


def read_tf_config():
    """The parsed TF_CONFIG environment variable, or None when it is unset or empty.

    Raises a ValueError naming the problem when it is not valid JSON or lacks
    `cluster` / `task`, or names a task type other than chief, worker or evaluator.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}); received TF_CONFIG={raw!r}. "
                         f"Example: {TF_CONFIG_EXAMPLE}") from err
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise ValueError("TF_CONFIG must be a JSON object with a non-empty 'cluster' and a 'task'; "
                         f"received TF_CONFIG={raw!r}. Example: {TF_CONFIG_EXAMPLE}")
    for task_type in list(cluster) + [task.get("type")]:
        if task_type not in TF_CONFIG_TASKS:
            raise ValueError(f"TF_CONFIG task types must be among {TF_CONFIG_TASKS}; received "
                             f"{task_type!r} in TF_CONFIG={raw!r}.")
    index = task.get("index")
    hosts = cluster.get(task["type"], ())
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(hosts):
        raise ValueError(f"TF_CONFIG task index must be an integer in [0, {len(hosts)}) for task "
                         f"type {task['type']!r}; received TF_CONFIG={raw!r}.")
    return config


TF_CONFIG_EXAMPLE = json.dumps({"cluster": {"worker": ["host1:12345", "host2:12345"]},
                                "task": {"type": "worker", "index": 0}})


def _count_workers(config):
    if config is None:
        return 0
    return sum(len(config["cluster"].get(kind, ())) for kind in ("chief", "worker"))


def _multiworker_strategy(why=None):
    tf = _tf()
    config = read_tf_config()
    if config is None:
        raise ValueError("kind='multiworker' needs the TF_CONFIG environment variable (the "
                         "cluster and this process's task), set differently in each worker "
                         "process; it is not set. Example for worker 0 of two: "
                         f"TF_CONFIG='{TF_CONFIG_EXAMPLE}'")
    result = tf.distribute.MultiWorkerMirroredStrategy()
    task = config["task"]
    return _chosen(result, why or f"kind='multiworker' (task {task['type']} {task['index']} of "
                               f"{_count_workers(config)} workers)")


def _mirrored_strategy(devices, why=None):
    tf = _tf()
    if devices is not None:
        if isinstance(devices, str) or not all(isinstance(d, str) for d in devices) or not devices:
            raise TypeError("`devices` must be a non-empty list of device names such as "
                            f"['/gpu:0', '/gpu:1']; received devices={devices!r}.")
        devices = list(devices)
    elif not tf.config.list_physical_devices("GPU"):
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    result = tf.distribute.MirroredStrategy(devices)
    return _chosen(result, why or f"kind='mirrored' over {devices or 'all GPUs'}")


def build_in_scope(strategy, fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` inside `strategy.scope()` and return its result.

    Use it for everything that creates variables: the builder (and its weight loading), heads,
    `model.compile` (the optimizer's variables). `strategy` may be a kind for `strategy()`.
    """
    active = _make_strategy(strategy)
    if not callable(fn):
        raise TypeError(f"`fn` must be callable; received {fn!r}.")
    with active.scope():
        result = fn(*args, **kwargs)
    if isinstance(result, keras.Model) and is_multiworker(active):
        fix_multiworker_fit(result)
    return result


def fix_multiworker_fit(model):
    """Let `model.fit` run under MultiWorkerMirroredStrategy: Keras 3 workarounds, applied to
    this model only (`keras_vggres._compat.fix_multiworker_fit`, imported on use: TensorFlow)."""
    from keras_vggres._compat import fix_multiworker_fit as fix

    return fix(model)


def is_multiworker(strategy=None):
    """Whether `strategy` is a MultiWorkerMirroredStrategy with a cluster (TF_CONFIG) behind it."""
    tf = _tf()
    strategy = strategy or tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and _task(strategy)[0] is not None)


# --------------------------------------------------------------------------- topology
def replicas(strategy=None):
    """Number of replicas that train in sync (1 without a strategy)."""
    tf = _tf()
    return (strategy or tf.distribute.get_strategy()).num_replicas_in_sync


def global_batch_size(per_replica, strategy=None):
    """The batch size to give the dataset: `per_replica * replicas(strategy)`."""
    return check_int("per_replica", per_replica, low=1) * replicas(strategy)


def _task(strategy=None):
    """(task_type, task_id, cluster dict) of this process; task_type None when single-worker."""
    tf = _tf()
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return None, 0, {}           # the host running the program drives the whole TPU
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()
    config = read_tf_config()
    if config is None:
        return None, 0, {}
    return config["task"]["type"], config["task"]["index"], config["cluster"]


def is_chief(strategy=None):
    """Whether this process should write shared outputs (checkpoints, exports, logs).

    True without a cluster; with TF_CONFIG: the `chief` task, or worker 0 when the cluster has
    no chief. Evaluators and other workers are not chiefs.
    """
    task_type, task_id, cluster = _task(strategy)
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def chief_path(path, strategy=None):
    """`path` on the chief; on other workers the same file name in a private temporary folder.

    For writers that every worker must run (ModelCheckpoint, CSVLogger, exports that involve
    collectives) but whose output only the chief should keep.
    """
    if is_chief(strategy):
        return path
    task_type, task_id, _ = _task(strategy)
    folder = tempfile.mkdtemp(prefix=f"keras_vggres_{task_type}{task_id}_")
    return os.path.join(folder, os.path.basename(os.path.normpath(os.fspath(path))))


def worker_dir(path, strategy=None):
    """`path` on the chief; `<path>/workers/<task_type>_<index>` on other workers.

    For state every worker must keep across restarts (a run folder with its resume state and
    backups) while only the chief's copy is the result: all workers then make the same resume
    decisions without writing each other's files.
    """
    if is_chief(strategy):
        return os.fspath(path)
    task_type, task_id, _ = _task(strategy)
    return os.path.join(os.fspath(path), "workers", f"{task_type}_{task_id}")


def worker_backup_dir(backup_dir, strategy=None):
    """The `keras.callbacks.BackupAndRestore` directory for this process.

    Keras 3's BackupAndRestore writes `latest.weights.h5` and `training_metadata.json` from
    every process, so workers sharing one directory would overwrite each other's files. Each
    worker gets `<backup_dir>/<task_type>_<index>` instead (the training is synchronous, so all
    copies hold the same weights and epoch); single-worker runs use `backup_dir` itself.
    Restart every worker with the same `backup_dir` to resume from the last finished epoch.
    """
    task_type, task_id, _ = _task(strategy)
    backup_dir = os.fspath(backup_dir)
    return backup_dir if task_type is None else os.path.join(backup_dir, f"{task_type}_{task_id}")


# --------------------------------------------------------------------------- data sharding
def with_auto_shard(dataset, policy="data"):
    """`dataset` with its multi-worker auto-shard policy set on purpose.

    Args:
        dataset: a `tf.data.Dataset` (batched with the global batch size).
        policy: `"data"`: every worker reads the whole pipeline and keeps its share of the
            elements (always correct; the right choice for in-memory data and for image
            folders, whose files are listed with `from_tensor_slices`); `"file"`: each worker
            reads its own subset of the input files of a file reader (TFRecordDataset and
            friends; needs at least one file per worker, see `shard_policy_for`); `"off"`:
            no sharding (each worker sees everything; for datasets already sharded by hand).
    """
    tf = _tf()
    check_choice("policy", policy, SHARD_POLICIES)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(
        tf.data.experimental.AutoShardPolicy, _SHARD_ENUM[policy])
    return dataset.with_options(options)


def shard_policy_for(num_files, strategy=None, *, workers=None):
    """`"file"` when a file-reader dataset has enough files for every worker, else `"data"`.

    "Enough" is `MIN_FILES_PER_WORKER` files per worker: FILE sharding hands out whole files,
    so with fewer files one worker would get much more data than another (and with fewer files
    than workers TensorFlow refuses it).
    """
    if workers is None:
        _, _, cluster = _task(strategy)
        workers = max(1, sum(len(cluster.get(kind, ())) for kind in ("chief", "worker")))
    return "file" if num_files >= MIN_FILES_PER_WORKER * workers else "data"


# --------------------------------------------------------------------------- precision, XLA
def _accelerator(strategy=None):
    """"tpu", "gpu" or "cpu", without starting the TensorFlow runtime."""
    if backend() != TENSORFLOW:
        return device_kind()
    tf = _tf()
    if isinstance(strategy or tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
        return "tpu"
    if tf.config.list_physical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def resolve_precision(precision, strategy=None):
    """The Keras dtype policy name for `precision` ("mixed": float16 on GPU, else bfloat16)."""
    check_choice("precision", precision, PRECISIONS)
    if precision != "mixed":
        return precision
    return "mixed_float16" if _accelerator(strategy) == "gpu" else "mixed_bfloat16"


def set_precision(precision, strategy=None):
    """Set Keras' global dtype policy and return its name.

    Args:
        precision: `"float32"`, `"mixed"` (float16 on GPU, bfloat16 on TPU and CPU; on a TPU,
            call it after `strategy("tpu")` or pass that strategy), `"mixed_float16"` or
            `"mixed_bfloat16"`. Set it before building the model: layers take the policy that
            is global when they are created. Classifier heads and losses keep float32 outputs;
            `model.compile` wraps the optimizer in a LossScaleOptimizer for mixed_float16.
    """
    name = resolve_precision(precision, strategy)
    keras.mixed_precision.set_global_policy(name)
    logger.info("precision: global dtype policy %s (asked for %r).", name, precision)
    return name


@contextlib.contextmanager
def precision_scope(precision, strategy=None):
    """Context manager: `set_precision(precision)` inside, the previous global policy after."""
    previous = keras.mixed_precision.global_policy()
    try:
        yield set_precision(precision, strategy)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def optimizer_for(precision, optimizer, strategy=None):
    """`optimizer` wrapped in a LossScaleOptimizer when `precision` resolves to mixed_float16.

    Only needed in custom training loops: `model.compile` already wraps the optimizer of a
    model built under mixed_float16 (bfloat16 needs no loss scaling).
    """
    optimizer = keras.optimizers.get(optimizer)
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    if resolve_precision(precision, strategy) == "mixed_float16" and not scaled:
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def compile_kwargs(jit_compile="auto", **compile_args):
    """`model.compile` keyword arguments with a checked `jit_compile` switch.

    `"auto"` is Keras' default: XLA on a single GPU/TPU, off on CPU-only machines and under a
    tf.distribute strategy (TPUStrategy compiles with XLA regardless); `True` forces XLA.
    """
    check_choice("jit_compile", jit_compile, JIT_CHOICES)
    return {**compile_args, "jit_compile": jit_compile}


def predict_fn(model, *, jit_compile=True):
    """A `tf.function` running `model(x, training=False)`, XLA-compiled unless told otherwise."""
    tf = _tf()
    check_choice("jit_compile", jit_compile, (True, False))

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def run(x):
        return model(x, training=False)

    return run
