"""The fine-tuning recipe on a generated toy folder (32 px, ResNet18/VGG11, random weights):
learns, skips broken files, resumes after a kill, exports a SavedModel equal to model.keras, and
trains the head on cached embeddings exactly as through the frozen backbone."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_vggres.imagenet import load_images
from keras_vggres.transfer import datasets, report
from keras_vggres.transfer.finetune import (build_classifier, feature_dataset, finetune,
                                            freeze_backbone, unfreeze_stages)
from keras_vggres.transfer.runstate import RunState
from keras_vggres.transfer.schedules import WarmupCosine
from keras_vggres.transfer.toydata import make_toy_dataset

SIZE = 32
CLASSES = 3
CHANCE = 1 / CLASSES
FAST = dict(model="resnet18", weights=None, image_size=SIZE, batch_size=8, lr=0.05,
            validation_split=0.25, verbose=0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data", classes=CLASSES,
                            per_class=16, size=SIZE)


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory):
    """One complete run shared by the checks below (head on embeddings + conv5 fine-tuning)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_VGGRES_OFFLINE", "1")
        return finetune(toy.root, epochs_head=8, epochs_finetune=2, early_stopping_patience=None,
                        out_dir=tmp_path_factory.mktemp("run"), **FAST)


# ----------------------------------------------------------------------------- the recipe
def test_learns_above_chance(run):
    assert run.summary["head_on_embeddings"] is True
    assert run.epochs == {"head": 8, "finetune": 2}
    assert run.history["epoch"] == list(range(1, 11))
    head_best = max(v for v, p in zip(run.history["val_accuracy"], run.history["phase"])
                    if p == "head")
    assert head_best > CHANCE + 0.25  # random-feature backbone + trained head
    assert run.best_val_accuracy > CHANCE + 0.3
    assert run.val_accuracy == pytest.approx(run.best_val_accuracy, abs=1e-6)


def test_broken_files_are_skipped_and_reported(toy, run):
    hygiene = run.summary["hygiene"]
    assert hygiene["skipped"] == len(toy.broken)
    assert hygiene["converted"] == len(toy.odd_modes) - 1  # the grayscale JPEG loads natively
    text = open(run.hygiene_path, encoding="utf-8").read()
    for rel, code in toy.broken.items():
        assert f"{rel}: [{code}]" in text
    counts = np.sum([run.summary["counts"][s] for s in ("train", "val")], axis=0)
    assert counts.tolist() == [toy.good_counts["all"][c] for c in run.class_names]


def test_outputs(run):
    from PIL import Image

    for path in (run.model_path, run.best_model_path, run.metrics_path, run.summary_path):
        assert os.path.isfile(path)
    for png in (run.confusion_png, run.curves_png):
        with Image.open(png) as img:
            assert img.format == "PNG" and min(img.size) > 100
    rows = report.read_metrics(run.metrics_path)
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    assert [r["phase"] for r in rows] == ["head"] * 8 + ["finetune"] * 2
    cm = np.asarray(run.summary["final"]["confusion_matrix"])
    assert cm.shape == (CLASSES, CLASSES)
    assert np.trace(cm) / cm.sum() == pytest.approx(run.val_accuracy)
    leftovers = {"embeddings", "head.weights.h5", "finetune.weights.h5", "backup"}
    assert not leftovers & set(os.listdir(run.out_dir))


def test_saved_model_matches_keras_model_on_raw_images(toy, run):
    paths = [os.path.join(toy.root, c, f"{c}_0000.jpg") for c in run.class_names]
    raw = load_images(paths, size=SIZE)  # RGB 0-255: preprocessing is inside the model
    model = keras.models.load_model(run.model_path)
    serving = keras.layers.TFSMLayer(run.saved_model_path, call_endpoint="serve")
    expected = model.predict(raw, verbose=0)
    np.testing.assert_allclose(np.asarray(serving(raw)), expected, rtol=1e-5, atol=1e-6)
    assert expected.shape == (len(paths), CLASSES)


def test_completed_run_is_not_retrained(toy, run, capsys):
    kwargs = dict(FAST, verbose=1)
    capsys.readouterr()
    again = finetune(toy.root, epochs_head=8, epochs_finetune=2, early_stopping_patience=None,
                     out_dir=run.out_dir, **kwargs)
    assert again.resumed and again.history == {}
    assert again.val_accuracy == run.val_accuracy
    assert str(again) in capsys.readouterr().out  # the same command says what it found


def test_changed_settings_do_not_resume(tmp_path):
    RunState(tmp_path, {"model": "resnet18", "lr": 0.1})
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.1 -> 0.2\)"):
        RunState(tmp_path, {"model": "resnet18", "lr": 0.2})


KILLER = textwrap.dedent("""
    import os, sys
    import keras
    from keras_vggres.transfer.finetune import finetune

    class Kill(keras.callbacks.Callback):  # dies like a pre-empted job after N epochs
        seen = 0
        def on_epoch_end(self, epoch, logs=None):
            Kill.seen += 1
            if Kill.seen == int(sys.argv[3]):
                os._exit(17)

    finetune(sys.argv[1], out_dir=sys.argv[2], callbacks=[Kill()], **eval(sys.argv[4]))
""")


def test_killed_run_resumes_at_the_next_epoch(toy, tmp_path):
    """Attempt 1 dies after epoch 1 (head phase), attempt 2 after epoch 3 (first fine-tuning
    epoch), attempt 3 finishes: every epoch runs exactly once, in order."""
    settings = dict(FAST, epochs_head=2, epochs_finetune=2)
    out = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for kill_after in (1, 2):
        proc = subprocess.run([sys.executable, "-c", KILLER, toy.root, str(out), str(kill_after),
                               repr(settings)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 17, proc.stderr[-3000:]
    rows = report.read_metrics(out / "metrics.csv")
    assert [(r["epoch"], r["phase"], r["run"]) for r in rows] == [
        (1, "head", 1), (2, "head", 2), (3, "finetune", 2)]
    result = finetune(toy.root, out_dir=out, **settings)
    assert result.resumed and result.history["epoch"] == [4]
    assert result.epochs == {"head": 2, "finetune": 2}
    rows = report.read_metrics(result.metrics_path)
    assert [(r["epoch"], r["run"]) for r in rows] == [(1, 1), (2, 2), (3, 2), (4, 3)]
    assert result.summary["attempts"] == 3


def test_augmented_head_trains_through_backbone_under_a_strategy(toy, tmp_path):
    import tensorflow as tf

    result = finetune(toy.root, out_dir=tmp_path / "aug", augment="basic", epochs_head=1,
                      epochs_finetune=0, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"),
                      **dict(FAST, model="vgg11"))
    assert result.summary["head_on_embeddings"] is False
    assert result.epochs == {"head": 1, "finetune": 0}
    assert os.path.isdir(result.saved_model_path)


# ----------------------------------------------------------------------------- cached embeddings
def test_head_on_embeddings_equals_fit_through_frozen_backbone(toy):
    """Same initial weights, same batches (unshuffled), no dropout: the head trained on cached
    embeddings equals the head trained through the frozen backbone (BatchNorm in inference
    mode), and the backbone, BatchNorm statistics included, is untouched."""
    from keras_vggres.transfer.embeddings import embed_dataset
    from keras_vggres.transfer.heads import classifier_head
    from keras_vggres.transfer.stages import find_backbone

    data = datasets.from_folder(toy.root, image_size=SIZE, batch_size=8, preprocessing="raw")
    keras.utils.set_random_seed(0)
    through = build_classifier("resnet18", None, SIZE, CLASSES, dropout=0.0)
    cached = build_classifier("resnet18", None, SIZE, CLASSES, dropout=0.0)
    cached.set_weights(through.get_weights())
    before = [w.copy() for w in through.get_weights()]
    for model in (through, cached):
        freeze_backbone(model, "resnet18")
    through.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    through.fit(data.make("train"), epochs=2, shuffle=False, verbose=0)
    head = classifier_head(cached)
    x, y = embed_dataset(find_backbone(cached)[0], data.make("train"), verbose=0)
    head.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    head.fit(feature_dataset(x, y, 8), epochs=2, shuffle=False, verbose=0)
    np.testing.assert_array_equal(np.asarray(y), data.labels("train"))
    for a, b in zip(through.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    trained = [i for i, (a, b) in enumerate(zip(before, through.get_weights()))
               if not np.array_equal(a, b)]
    assert len(trained) == len(head.trainable_weights)  # only the head's kernel and bias moved


# ----------------------------------------------------------------------------- pieces
def test_unfreeze_stages():
    resnet = ("stem", "conv2", "conv3", "conv4", "conv5", "head")
    assert unfreeze_stages(resnet, "conv5") == unfreeze_stages(resnet, None) == ("conv5",)
    assert unfreeze_stages(("block1", "block5", "head"), None) == ("block5",)
    assert unfreeze_stages(resnet[:-1] + ("post", "head"), None) == ("conv5", "post")
    assert unfreeze_stages(resnet, "conv4") == ("conv4", "conv5")
    assert unfreeze_stages(resnet, ["conv5", "conv3"]) == ("conv3", "conv5")
    assert unfreeze_stages(resnet, "all") == resnet[:-1]
    for bad in ("block5", ["conv9"], [], 3):
        with pytest.raises(ValueError, match="unfreeze"):
            unfreeze_stages(resnet, bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs_head": -1}, "epochs_head"), ({"epochs_head": 0, "epochs_finetune": 0}, "nothing"),
    ({"lr": 0}, "lr"), ({"dropout": 1.0}, "dropout"), ({"unfreeze": "conv9"}, "unfreeze"),
    ({"model": "resnet5"}, "resnet5"), ({"image_size": (32, 32)}, "image_size"),
    ({"batch_size": 0}, "batch_size"), ({"validation_split": 1.0}, "validation_split"),
    ({"bn": "trainable"}, "bn"), ({"augment": "heavy"}, "augment"),
    ({"early_stopping_patience": -1}, "early_stopping_patience"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        finetune(tmp_path, out_dir=tmp_path / "run", **{**FAST, **kwargs})
    assert not (tmp_path / "run").exists()  # nothing written for a rejected call


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        finetune(tmp_path / "missing", out_dir=tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()


def test_bad_strategy(tmp_path):
    with pytest.raises(TypeError, match="strategy"):
        finetune(tmp_path, out_dir=tmp_path / "run", strategy=3, **FAST)
    with pytest.raises(ValueError, match="kind"):
        finetune(tmp_path, out_dir=tmp_path / "run", strategy="cluster", **FAST)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, match", [({"precision": "float16"}, "precision"),
                                           ({"jit_compile": "yes"}, "jit_compile")])
def test_bad_precision_and_jit(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        finetune(tmp_path, out_dir=tmp_path / "run", **{**FAST, **kwargs})
    assert not (tmp_path / "run").exists()


def test_strategy_kind_string(toy, tmp_path):
    result = finetune(toy.root, out_dir=tmp_path / "run", strategy="none", epochs_head=1,
                      epochs_finetune=0, **FAST)
    assert result.summary["settings"]["global_batch_size"] == 8
    assert result.summary["settings"]["precision"] == "float32"
    assert os.path.isfile(result.model_path)


def test_multiworker_needs_out_dir(toy, monkeypatch):
    from keras_vggres import distribute

    monkeypatch.setattr(distribute, "is_multiworker", lambda strategy=None: True)
    with pytest.raises(ValueError, match="out_dir"):
        finetune(toy.root, out_dir=None, **FAST)


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    lrs = [float(schedule(step)) for step in range(12)]
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    assert lrs[4] == pytest.approx(1.0) and lrs[7] == pytest.approx(0.55)
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(clone, WarmupCosine) and clone.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1.0, total_steps=3, warmup_steps=5)
    with pytest.raises(ValueError, match="base_lr"):
        WarmupCosine(0.0, total_steps=3)


def test_metrics_csv_replaces_rerun_epochs(tmp_path):
    path = tmp_path / "metrics.csv"
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    for run_id, epochs in ((1, (0, 1)), (2, (1, 2))):  # attempt 2 redoes epoch index 1
        logger = report.EpochCSVLogger(path, phase="head", run=run_id)
        logger.set_model(model)
        for epoch in epochs:
            logger.on_epoch_begin(epoch)
            logger.on_epoch_end(epoch, {"loss": float(epoch), "accuracy": 0.5})
    rows = report.read_metrics(path)
    assert [(r["epoch"], r["run"], r["loss"]) for r in rows] == [(1, 1, 0), (2, 2, 1), (3, 2, 2)]
    assert rows[0]["val_accuracy"] is None


def test_confusion_matrix_and_pngs(tmp_path):
    from PIL import Image

    cm = report.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    metrics = report.per_class_metrics(cm, ("a", "b", "c"))
    assert metrics["b"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    report.save_confusion_png(cm, ("a", "b", "c"), tmp_path / "cm.png")
    rows = [{"epoch": e, "phase": "head" if e < 3 else "finetune", "loss": 1 / e,
             "val_loss": 1.2 / e, "accuracy": e / 5, "val_accuracy": None} for e in range(1, 5)]
    report.save_curves_png(rows, tmp_path / "curves.png")
    for name in ("cm.png", "curves.png"):
        with Image.open(tmp_path / name) as img:
            assert img.mode == "RGB" and len(img.getcolors(1 << 16)) > 3  # something was drawn


# ----------------------------------------------------------------------------- early stopping
def _stopping_epoch(callback, model, values, first_epoch=0):
    """Feed `values` (val_accuracy per epoch) from `first_epoch` on; the epoch it stops at."""
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    for epoch, value in enumerate(values[first_epoch:], start=first_epoch):
        callback.on_epoch_end(epoch, {"val_accuracy": value})
        if model.stop_training:
            return epoch
    return None


@pytest.mark.parametrize("killed_after", [1, 2, 3, 4])
def test_early_stopping_patience_survives_a_resume(tmp_path, killed_after):
    """Killed after N finished epochs and resumed: it stops at the epoch an uninterrupted run
    stops at, because the finished epochs' values are replayed from metrics.csv."""
    from keras_vggres.transfer.runstate import ResumableEarlyStopping

    values = [0.50, 0.70, 0.60, 0.65, 0.69, 0.90]            # patience 3: stops at epoch 4
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    kwargs = dict(monitor="val_accuracy", mode="max", patience=3)
    uninterrupted = _stopping_epoch(keras.callbacks.EarlyStopping(**kwargs), model, values)
    assert uninterrupted == 4

    metrics = tmp_path / "metrics.csv"
    offset = 2                                                 # a finetune phase after 2 head epochs
    rows = [{"run": 1, "phase": "head", "epoch": e + 1, "val_accuracy": 0.99} for e in range(2)]
    rows += [{"run": 1, "phase": "finetune", "epoch": offset + e + 1, "val_accuracy": v}
             for e, v in enumerate(values[:killed_after + 1])]  # + a row whose backup was lost
    report.write_text(metrics, "run,phase,epoch,val_accuracy\n" + "".join(
        f"{r['run']},{r['phase']},{r['epoch']},{r['val_accuracy']}\n" for r in rows))
    model._initial_epoch = killed_after                        # what BackupAndRestore restores
    resumed = ResumableEarlyStopping(metrics, phase="finetune", epoch_offset=offset, **kwargs)
    assert _stopping_epoch(resumed, model, values, first_epoch=killed_after) == uninterrupted
    plain = keras.callbacks.EarlyStopping(**kwargs)            # what Keras alone would do
    if killed_after >= 2:
        assert _stopping_epoch(plain, model, values, first_epoch=killed_after) != uninterrupted


# ----------------------------------------------------------------------------- options and splits
def test_test_split_is_evaluated_once_and_reported(tmp_path):
    toy = make_toy_dataset(tmp_path / "tv", classes=2, per_class=6, size=SIZE, broken=False,
                           layout="split", val_per_class=2, test_per_class=3)
    result = finetune(toy.root, out_dir=tmp_path / "run", epochs_head=1, epochs_finetune=0,
                      **dict(FAST, validation_split=None))
    test = result.summary["test"]
    assert test["split"] == "test" and test["images"] == 6
    assert np.asarray(test["confusion_matrix"]).sum() == 6
    assert result.test_accuracy == test["accuracy"]
    assert result.summary["counts"]["test"] == [3, 3]


def test_training_options_run_end_to_end_and_are_recorded(toy, tmp_path):
    result = finetune(toy.root, out_dir=tmp_path / "run", epochs_head=1, epochs_finetune=1,
                      optimizer="sgd", label_smoothing=0.1, class_weights=False, cache="disk",
                      augment="random_resized_crop", **FAST)
    settings = result.summary["settings"]
    assert (settings["optimizer"], settings["label_smoothing"], settings["class_weights"],
            settings["augment"]) == ("sgd", 0.1, False, "random_resized_crop")
    assert result.summary["class_weights"] is None
    assert result.summary["head_on_embeddings"] is False  # augmentation: through the backbone
    assert result.epochs == {"head": 1, "finetune": 1}


def test_random_resized_crop_varies_per_epoch_and_is_seeded(toy):
    data = datasets.from_folder(toy.root, image_size=SIZE, batch_size=4, seed=3,
                                augment="random_resized_crop", shuffle=False)
    first, second = (next(iter(data.train))[0].numpy() for _ in range(2))
    again = datasets.from_folder(toy.root, image_size=SIZE, batch_size=4, seed=3,
                                 augment="random_resized_crop", shuffle=False)
    assert first.shape == (4, SIZE, SIZE, 3) and not np.allclose(first, second)
    np.testing.assert_array_equal(next(iter(again.train))[0].numpy(), first)
