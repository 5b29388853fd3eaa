"""Subprocess side of tests/test_distribute.py: replica and multi-worker runs on the CPU.

Run as a script (each mode needs a fresh TensorFlow runtime):

    python multiworker.py mirrored --out result.json
        two logical CPU devices; a MirroredStrategy fine-tune compared with one device, and
        checks that our builders create MirroredVariables inside a user's strategy scope;
    python multiworker.py worker --workdir DIR --epochs 2 [--die-epoch 1 --die-batch 1]
        one MultiWorkerMirroredStrategy worker (TF_CONFIG set by the parent); logs the epochs
        it begins, backs up with BackupAndRestore, saves its final weights to its own file.

The parent side (`free_ports`, `tf_config`, `launch_workers`) is imported by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

IMAGE = 32
CLASSES = 3
SEED = 1234
PER_REPLICA = 4
STEPS = 4            # batches per epoch in the multi-worker runs
MULTIWORKER_MODEL = "vgg11"


# --------------------------------------------------------------------------- parent side
def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1 (kept bound until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def subprocess_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONHASHSEED="0", KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def launch_workers(workdir, *, workers=2, args=(), per_worker_args=None):
    """Start `workers` worker processes on fresh ports; returns the Popen objects."""
    ports = free_ports(workers)
    procs = []
    for index in range(workers):
        extra = list(args) + list((per_worker_args or {}).get(index, ()))
        log = open(os.path.join(workdir, f"stdout_{index}.txt"), "ab")
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "worker", "--workdir", str(workdir), *extra],
            env=subprocess_env(TF_CONFIG=tf_config(ports, index)), stdout=log,
            stderr=subprocess.STDOUT))
        log.close()
    return procs


def wait_all(procs, timeout):
    """Wait for every process until `timeout` seconds have passed; kill the stragglers.

    Returns their exit codes (None for a process that had to be killed).
    """
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    return codes


# --------------------------------------------------------------------------- child side
def _quiet_tf():
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.get_logger().setLevel("ERROR")
    return tf


def _data(samples):
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = rng.uniform(-1, 1, size=(samples, IMAGE, IMAGE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, size=(samples,)).astype("int32")
    return x, y


def make_classifier(name="resnet18"):
    """Backbone (weights=None, BatchNorm frozen) + `transfer.heads.classifier`, compiled (SGD).

    BatchNorm layers are frozen (inference mode): per-replica batch statistics would differ
    from full-batch ones and make replica and single-device runs incomparable. No dropout.
    """
    import keras

    from keras_vggres import get_model
    from keras_vggres.transfer.heads import classifier

    keras.utils.set_random_seed(SEED)
    backbone = get_model(name, include_top=False, weights=None, input_shape=(IMAGE, IMAGE, 3))
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model = classifier(backbone, CLASSES, pooling="avg", dropout=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


def train_reference(init_weights, *, name, epochs, samples):
    """The single-device run a multi-worker run must reproduce (same data, order, batch)."""
    model = make_classifier(name)
    model.set_weights(init_weights)
    x, y = _data(samples)
    model.fit(x, y, batch_size=PER_REPLICA * 2, epochs=epochs, shuffle=False, verbose=0)
    return model.get_weights()


def _variable_kind(variable):
    import tensorflow as tf

    inner = getattr(variable, "value", variable)
    if isinstance(inner, tf.distribute.DistributedValues):
        return type(inner).__name__, len(inner.values)
    return type(inner).__name__, 1


def run_mirrored(out):
    """Mirrored (2 logical CPUs) vs one device, same global batch and order; scope checks."""
    tf = _quiet_tf()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np

    from keras_vggres import distribute, get_model

    result = {}
    mirrored = distribute.strategy("mirrored")
    result["replicas"] = distribute.replicas(mirrored)
    result["devices"] = list(mirrored.extended.worker_devices)
    result["global_batch"] = distribute.global_batch_size(PER_REPLICA, mirrored)
    x, y = _data(3 * result["global_batch"])

    initial = make_classifier().get_weights()
    trained = {}
    for label, chosen in (("single", distribute.strategy("none")), ("mirrored", mirrored)):
        model = distribute.build_in_scope(chosen, make_classifier)
        model.set_weights(initial)
        model.fit(x, y, batch_size=result["global_batch"], epochs=2, shuffle=False, verbose=0)
        trained[label] = model.get_weights()
        if label == "mirrored":
            result["optimizer_variables"] = sorted(
                {_variable_kind(v) for v in model.optimizer.variables})
    np.savez(out + ".weights.npz", **{f"{label}_{i}": w for label, weights in trained.items()
                                      for i, w in enumerate(weights)},
             **{f"initial_{i}": w for i, w in enumerate(initial)})

    # our builders inside a user's `with strategy.scope():`, weights loaded from a file there
    path = out + ".resnet18.weights.h5"
    reference = get_model("resnet18", include_top=False, weights=None, input_shape=(32, 32, 3))
    reference.save_weights(path)
    with mirrored.scope():
        loaded = get_model("resnet18", include_top=False, weights=path, input_shape=(32, 32, 3))
    result["builder_variables"] = sorted({_variable_kind(v) for v in loaded.weights})
    # and from a legacy HDF5 file: our loader writes large kernels (conv5's 9.4 MB) into the
    # replicated variables in place, slice by slice
    from keras_vggres.weights.h5 import save_weights_h5
    legacy = out + ".resnet18.h5"
    save_weights_h5(reference, legacy)
    with mirrored.scope():
        loaded_legacy = get_model("resnet18", include_top=False, weights=legacy,
                                  input_shape=(32, 32, 3))
    result["loaded_equal"] = all(
        all(np.array_equal(component.numpy(), expected) for component in v.value.values)
        for model in (loaded, loaded_legacy)
        for v, expected in zip(model.weights, reference.get_weights()))
    with open(out, "w") as f:
        json.dump(result, f)


def epoch_log(path, die_epoch=-1, die_batch=-1):
    """A callback appending {"epoch": i} to `path` when an epoch begins.

    At (`die_epoch`, `die_batch`) it `os._exit`s the process: a preempted machine, with no
    cleanup and no exception for Keras to handle.
    """
    import keras

    class EpochLog(keras.callbacks.Callback):
        epoch = -1

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            with open(path, "a") as f:
                f.write(json.dumps({"epoch": epoch, "pid": os.getpid()}) + "\n")

        def on_train_batch_begin(self, batch, logs=None):
            if (self.epoch, batch) == (die_epoch, die_batch):
                with open(path, "a") as f:
                    f.write(json.dumps({"died": [self.epoch, batch]}) + "\n")
                os._exit(3)

    return EpochLog()


def run_worker(workdir, epochs, die_epoch, die_batch):
    tf = _quiet_tf()
    import keras
    import numpy as np

    from keras_vggres import distribute

    chosen = distribute.strategy("auto")            # TF_CONFIG with 2 workers -> multi-worker
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    batch = distribute.global_batch_size(PER_REPLICA, chosen)
    x, y = _data(STEPS * batch)
    dataset = distribute.with_auto_shard(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), "data")
    model = distribute.build_in_scope(chosen, make_classifier, MULTIWORKER_MODEL)
    backup = distribute.worker_backup_dir(os.path.join(workdir, "backup"), chosen)
    callbacks = [keras.callbacks.BackupAndRestore(backup),
                 epoch_log(os.path.join(workdir, f"epochs_{task}.jsonl"), die_epoch, die_batch)]
    init = os.path.join(workdir, f"init_{task}.npz")
    if not os.path.exists(init):                     # the first run's starting point
        np.savez(init, *model.get_weights())
    metadata = os.path.join(backup, "training_metadata.json")
    resumed = json.load(open(metadata)) if os.path.exists(metadata) else None
    history = model.fit(dataset, epochs=epochs, verbose=0, callbacks=callbacks, shuffle=False)
    np.savez(os.path.join(workdir, f"weights_{task}.npz"), *model.get_weights())
    with open(os.path.join(workdir, f"done_{task}.json"), "w") as f:
        json.dump({"strategy": type(chosen).__name__, "replicas": distribute.replicas(chosen),
                   "global_batch": batch, "is_chief": distribute.is_chief(chosen),
                   "multiworker": distribute.is_multiworker(chosen),
                   "backup_dir": backup, "resumed_from": resumed,
                   "loss": history.history["loss"]}, f)


def main(argv=None):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    mirrored = sub.add_parser("mirrored")
    mirrored.add_argument("--out", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--workdir", required=True)
    worker.add_argument("--epochs", type=int, default=2)
    worker.add_argument("--die-epoch", type=int, default=-1)
    worker.add_argument("--die-batch", type=int, default=-1)
    args = parser.parse_args(argv)
    if args.mode == "mirrored":
        run_mirrored(args.out)
    else:
        run_worker(args.workdir, args.epochs, args.die_epoch, args.die_batch)


if __name__ == "__main__":
    main()
