"""keras_vggres.distribute: strategy choice, scope-safe builds, replicas, workers, precision, XLA.

Runs on the CPU only. Replica and multi-worker runs need a fresh TensorFlow runtime, so they
run in subprocesses (tests/support/multiworker.py): MirroredStrategy over two logical CPU
devices, and MultiWorkerMirroredStrategy with two local worker processes on 127.0.0.1.
GPUs and TPUs are only tested up to the boundary (the clear error when there is none).
"""

import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vggres import distribute, get_model
from keras_vggres.transfer.heads import classifier
from tests.support import multiworker

SUPPORT = multiworker.__file__
TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},
               "task": {"type": "worker", "index": 0}}


@pytest.fixture(autouse=True)
def _no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


@pytest.fixture
def tf_config(monkeypatch):
    def set_config(config):
        monkeypatch.setenv("TF_CONFIG", config if isinstance(config, str) else json.dumps(config))
    return set_config


@pytest.fixture
def restore_policy():
    previous = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(previous)


def _worker_config(index, workers=2, chief=False):
    cluster = {"worker": [f"127.0.0.1:{20000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:19999"]
    return {"cluster": cluster, "task": {"type": "worker", "index": index}}


def _weights(path, prefix="arr"):
    data = np.load(path)
    return [data[f"{prefix}_{i}"] for i in range(sum(k.startswith(prefix) for k in data.files))]


def _assert_same_weights(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, **tolerance)


# ----------------------------------------------------------------------------- strategy()
def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="kind") as info:
        distribute.strategy("gpus")
    for kind in distribute.STRATEGY_KINDS:
        assert repr(kind) in str(info.value)


def test_devices_only_with_mirrored():
    with pytest.raises(ValueError, match="devices"):
        distribute.strategy("none", devices=["/cpu:0"])
    with pytest.raises(TypeError, match="devices"):
        distribute.strategy("mirrored", devices="/cpu:0")


def test_strategy_object_is_returned_as_is():
    default = tf.distribute.get_strategy()
    assert distribute.strategy(default) is default
    assert distribute.strategy("none") is default


def test_tpu_without_a_tpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="No TPU was found") as info:
        distribute.strategy("tpu")
    assert "Cloud TPU VM" in str(info.value)


def test_auto_without_cluster_is_the_default_strategy_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="keras_vggres"):
        chosen = distribute.strategy("auto")
    assert chosen is tf.distribute.get_strategy()
    assert distribute.replicas(chosen) == 1
    assert "default (single-device) strategy" in caplog.text
    assert "no multi-worker TF_CONFIG" in caplog.text


def test_auto_with_two_workers_picks_multiworker(tf_config, monkeypatch, caplog):
    """The constructor is replaced: starting a real cluster here would block on its peers."""
    class FakeMultiWorker:
        num_replicas_in_sync = 2

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    tf_config(TWO_WORKERS)
    with caplog.at_level(logging.INFO, logger="keras_vggres"):
        chosen = distribute.strategy("auto")
    assert isinstance(chosen, FakeMultiWorker)
    assert "TF_CONFIG lists 2 workers" in caplog.text


def test_auto_with_one_worker_is_not_multiworker(tf_config):
    tf_config(_worker_config(0, workers=1))
    assert distribute.strategy("auto") is tf.distribute.get_strategy()


def test_multiworker_needs_tf_config():
    with pytest.raises(ValueError, match="TF_CONFIG") as info:
        distribute.strategy("multiworker")
    assert "is not set" in str(info.value)


@pytest.mark.parametrize("config, words", [
    ("{not json", "not valid JSON"),
    ({"cluster": {"worker": ["a:1"]}}, "'task'"),
    ({"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}},
     "task types"),
    ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}, "task index"),
])
def test_invalid_tf_config_is_named(tf_config, config, words):
    tf_config(config)
    with pytest.raises(ValueError, match="TF_CONFIG") as info:
        distribute.strategy("multiworker")
    assert words in str(info.value)


# ----------------------------------------------------------------------------- topology
def test_replicas_and_global_batch_size():
    assert distribute.replicas() == 1
    assert not distribute.is_multiworker()
    assert distribute.global_batch_size(16) == 16
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="per_replica"):
            distribute.global_batch_size(bad)


@pytest.mark.parametrize("config, chief", [
    (None, True),
    (_worker_config(0), True),
    (_worker_config(1), False),
    (_worker_config(0, chief=True), False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}},
     True),
    ({"cluster": {"worker": ["a:1"], "evaluator": ["c:1"]},
      "task": {"type": "evaluator", "index": 0}}, False),
])
def test_is_chief_follows_tf_config(tf_config, config, chief):
    if config is not None:
        tf_config(config)
    assert distribute.is_chief() is chief


def test_chief_and_worker_paths(tf_config, tmp_path):
    target = tmp_path / "best.keras"
    backup = tmp_path / "backup"
    assert distribute.chief_path(target) == target
    assert distribute.worker_backup_dir(backup) == str(backup)
    assert distribute.worker_dir(tmp_path) == str(tmp_path)
    tf_config(_worker_config(1))
    other = distribute.chief_path(target)
    assert os.path.basename(other) == "best.keras" and not other.startswith(str(tmp_path))
    assert distribute.worker_backup_dir(backup) == str(backup / "worker_1")
    assert distribute.worker_dir(tmp_path) == str(tmp_path / "workers" / "worker_1")
    tf_config(_worker_config(0))
    assert distribute.worker_backup_dir(backup) == str(backup / "worker_0")  # chief too
    assert distribute.worker_dir(tmp_path) == str(tmp_path)


def test_with_auto_shard_sets_the_policy():
    dataset = tf.data.Dataset.range(8).batch(4)
    policies = tf.data.experimental.AutoShardPolicy
    for name, expected in (("data", policies.DATA), ("file", policies.FILE),
                           ("off", policies.OFF)):
        options = distribute.with_auto_shard(dataset, name).options()
        assert options.experimental_distribute.auto_shard_policy == expected
    with pytest.raises(ValueError, match="policy"):
        distribute.with_auto_shard(dataset, "auto")


def test_shard_policy_for_needs_enough_files_per_worker(tf_config):
    assert distribute.shard_policy_for(3, workers=1) == "data"
    assert distribute.shard_policy_for(distribute.MIN_FILES_PER_WORKER * 2, workers=2) == "file"
    tf_config(_worker_config(0, workers=4))
    assert distribute.shard_policy_for(8) == "data"


# ----------------------------------------------------------------------------- building
def test_build_in_scope_runs_the_builder():
    model = distribute.build_in_scope("none", get_model, "vgg11", include_top=False,
                                      weights=None, input_shape=(32, 32, 3))
    assert model.name == "vgg11"
    with pytest.raises(TypeError, match="fn"):
        distribute.build_in_scope("none", "vgg11")


# ----------------------------------------------------------------------------- precision, XLA
def test_precision_choices(restore_policy):
    assert distribute.set_precision("float32") == "float32"
    assert distribute.set_precision("mixed") == "mixed_bfloat16"       # CPU: bfloat16
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    with pytest.raises(ValueError, match="precision") as info:
        distribute.set_precision("float16")
    assert "'mixed_bfloat16'" in str(info.value)


def test_precision_scope_restores_the_previous_policy(restore_policy):
    keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(KeyError):
        with distribute.precision_scope("mixed_float16") as name:
            assert name == keras.mixed_precision.global_policy().name == "mixed_float16"
            raise KeyError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_mixed_bfloat16_trains_with_float32_probabilities(restore_policy):
    with distribute.precision_scope("mixed_bfloat16"):
        backbone = get_model("resnet18", include_top=False, weights=None, input_shape=(32, 32, 3))
        model = classifier(backbone, 3, dropout=0.0)
    assert backbone.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert backbone.get_layer("conv1_conv").variable_dtype == "float32"
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 8)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    probabilities = model.predict(x, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_mixed_float16_compile_scales_the_loss(restore_policy):
    with distribute.precision_scope("mixed_float16"):
        model = get_model("vgg11", include_top=False, weights=None, input_shape=(32, 32, 3),
                          pooling="avg")
    model.compile(optimizer="sgd", loss="mse")
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    scaled = distribute.optimizer_for("mixed_float16", "sgd")
    assert isinstance(scaled, keras.mixed_precision.LossScaleOptimizer)
    assert distribute.optimizer_for("mixed_float16", scaled) is scaled
    plain = keras.optimizers.SGD()
    assert distribute.optimizer_for("mixed", plain) is plain             # CPU: bfloat16


def test_compile_kwargs_and_predict_fn():
    assert distribute.compile_kwargs(True, loss="mse") == {"loss": "mse", "jit_compile": True}
    assert distribute.compile_kwargs()["jit_compile"] == "auto"
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="jit_compile"):
            distribute.compile_kwargs(bad)
    model = get_model("vgg11", include_top=False, weights=None, input_shape=(32, 32, 3),
                      pooling="avg")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    run = distribute.predict_fn(model, jit_compile=True)
    np.testing.assert_allclose(run(x).numpy(), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="jit_compile"):
        distribute.predict_fn(model, jit_compile="auto")


# ----------------------------------------------------------------------------- replicas
def test_mirrored_over_two_cpus_matches_one_device(tmp_path):
    """Same global batch, same order: two replicas end with one device's weights.

    ResNet18 with frozen BatchNorm (per-replica batch statistics would differ from the full
    batch ones). Also: our builder inside a user's `strategy.scope()` creates MirroredVariables
    and loads a weights file into both replicas.
    """
    out = tmp_path / "mirrored.json"
    done = subprocess.run([sys.executable, SUPPORT, "mirrored", "--out", str(out)],
                          env=multiworker.subprocess_env(), capture_output=True, timeout=240)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    result = json.loads(out.read_text())
    assert result["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in result["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert result["global_batch"] == 2 * multiworker.PER_REPLICA
    assert result["builder_variables"] == [["MirroredVariable", 2]]
    assert result["optimizer_variables"] == [["MirroredVariable", 2]]
    assert result["loaded_equal"]
    weights = str(out) + ".weights.npz"
    single, mirrored = _weights(weights, "single"), _weights(weights, "mirrored")
    moved = max(np.abs(s - i).max() for s, i in zip(single, _weights(weights, "initial")))
    assert moved > 1e-3                                    # training did change the weights
    _assert_same_weights(mirrored, single, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- workers
def _read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _done(workdir, index):
    return json.loads((workdir / f"done_{index}.json").read_text())


def test_two_workers_train_in_sync(tmp_path):
    """Two local MultiWorkerMirroredStrategy workers: identical weights, equal to one device."""
    procs = multiworker.launch_workers(tmp_path, args=["--epochs", "2"])
    codes = multiworker.wait_all(procs, timeout=150)
    logs = "".join((tmp_path / f"stdout_{i}.txt").read_text()[-2000:] for i in range(2))
    assert codes == [0, 0], logs
    first, second = _done(tmp_path, 0), _done(tmp_path, 1)
    assert first["strategy"] == second["strategy"] == "CollectiveAllReduceStrategy"
    assert first["multiworker"] and second["multiworker"]
    assert first["replicas"] == 2 and first["global_batch"] == 2 * multiworker.PER_REPLICA
    assert (first["is_chief"], second["is_chief"]) == (True, False)
    assert first["backup_dir"].endswith("worker_0") and second["backup_dir"].endswith("worker_1")
    assert first["loss"] == second["loss"]
    w0, w1 = _weights(tmp_path / "weights_0.npz"), _weights(tmp_path / "weights_1.npz")
    _assert_same_weights(w1, w0, rtol=0, atol=0)
    reference = multiworker.train_reference(
        _weights(tmp_path / "init_0.npz"), name=multiworker.MULTIWORKER_MODEL, epochs=2,
        samples=multiworker.STEPS * first["global_batch"])
    _assert_same_weights(w0, reference, rtol=1e-5, atol=1e-7)
    assert not os.listdir(tmp_path / "backup")          # BackupAndRestore cleaned up after itself


def test_killed_worker_resumes_from_the_last_finished_epoch(tmp_path):
    """Worker 1 dies in epoch 2; after a restart of both, training continues at epoch 2."""
    args = ["--epochs", "3"]
    dies = {1: ["--die-epoch", "1", "--die-batch", "2"]}       # epoch index 1, third batch
    procs = multiworker.launch_workers(tmp_path, args=args, per_worker_args=dies)
    died = multiworker.wait_all(procs[1:], timeout=150)
    multiworker.wait_all(procs[:1], timeout=45)   # the survivor errors out (peer lost) or is killed
    assert died == [3]
    for index in range(2):
        assert [e.get("epoch") for e in _read_log(tmp_path / f"epochs_{index}.jsonl")
                if "epoch" in e] == [0, 1]
        assert not (tmp_path / f"done_{index}.json").exists()

    procs = multiworker.launch_workers(tmp_path, args=args)
    codes = multiworker.wait_all(procs, timeout=150)
    logs = "".join((tmp_path / f"stdout_{i}.txt").read_text()[-2000:] for i in range(2))
    assert codes == [0, 0], logs
    for index in range(2):
        begun = [e["epoch"] for e in _read_log(tmp_path / f"epochs_{index}.jsonl") if "epoch" in e]
        assert begun == [0, 1, 1, 2]                   # the restart begins at epoch index 1
        done = _done(tmp_path, index)
        assert done["resumed_from"] == {"epoch": 1, "batch": 0}
        assert len(done["loss"]) == 2
    w0, w1 = _weights(tmp_path / "weights_0.npz"), _weights(tmp_path / "weights_1.npz")
    _assert_same_weights(w1, w0, rtol=0, atol=0)
    reference = multiworker.train_reference(
        _weights(tmp_path / "init_0.npz"), name=multiworker.MULTIWORKER_MODEL, epochs=3,
        samples=multiworker.STEPS * _done(tmp_path, 0)["global_batch"])
    _assert_same_weights(w0, reference, rtol=1e-5, atol=1e-7)   # as if never interrupted
