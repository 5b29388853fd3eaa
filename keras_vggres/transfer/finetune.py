"""The fine-tuning recipe: train a head on a frozen backbone, then fine-tune the late stages.

Phase "head": the backbone is frozen. Without augmentation the head trains on cached embeddings
(one backbone pass, then cheap epochs): the head model shares its layers with the classifier,
and frozen BatchNorm runs in inference mode, so this is the same computation as fitting the
classifier through the frozen backbone, only faster. Phase "finetune": `unfreeze` stages are
made trainable (BatchNorm per `bn`) and trained with a lower, warmed-up cosine learning rate.

The model is built with `include_preprocessing=True`: the data stays raw RGB 0-255 (streamed
from disk, decoded with the weights' own eval transform) and the exported `model.keras` and
SavedModel take raw RGB 0-255 images. Everything lands in `out_dir` (see `FinetuneResult`); a
run killed at any moment and restarted with the same `out_dir`, settings and data continues
where it stopped (`keras_vggres.transfer.runstate`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

import keras

from keras_vggres import distribute
from keras_vggres._backend import require_tensorflow
from keras_vggres._progress import interactive
from keras_vggres.transfer import exports, fingerprint
from keras_vggres.transfer.datasets import data_errors, from_scan
from keras_vggres.transfer.embeddings import (embed_splits,  # noqa: F401 (re-exported)
                                              feature_dataset)
from keras_vggres.transfer.exports import FinetuneResult
from keras_vggres.transfer.heads import build_classifier
from keras_vggres.transfer.hygiene import scan_folder
from keras_vggres.transfer.layout import (BEST_MODEL, CACHE_DIR, EMBEDDINGS_DIR, HYGIENE_JSON,
                                          STATE_FILE, SUMMARY)
from keras_vggres.transfer.runstate import RunState
from keras_vggres.transfer.schedules import WarmupCosine
from keras_vggres.transfer.settings import finetune_settings, weights_argument
from keras_vggres.transfer.stages import (freeze_backbone,  # noqa: F401 (re-exported)
                                          unfreeze_stages)
from keras_vggres.transfer.training import compile_phase, phase_callbacks, phase_epochs

# The embedding pass needs no gradients: a batch this many times the training batch fits
# wherever training fits, and runs faster.
EMBEDDING_BATCH_FACTOR = 2
_INSTEAD = ("On this backend, build the model with keras_vggres.transfer.classifier, freeze it "
            "with transfer.freeze and train it with model.fit on arrays from "
            "keras_vggres.load_images.")
__all__ = ["finetune", "FinetuneResult", "build_classifier", "embed_splits", "feature_dataset",
           "freeze_backbone", "unfreeze_stages"]


def finetune(data_dir, model="resnet50", weights="imagenet", image_size=224, batch_size=32,
             epochs_head=5, epochs_finetune=5, unfreeze=None, bn="frozen", lr=1e-3,
             finetune_lr=None, warmup_epochs=1, dropout=0.2, augment=False, validation_split=0.2,
             seed=1337, out_dir=None, early_stopping_patience=3, strategy=None, verbose="auto",
             callbacks=None, precision="float32", jit_compile="auto", *, optimizer="adam",
             label_smoothing=0.0, class_weights=True, cache=None, restart=False):
    """Fine-tune a registered model on an image folder and export it.

    Args:
        data_dir: `root/<class>/*.jpg` or `root/train/<class>/...` + `root/val/<class>/...`
            (+ `root/test/<class>/...`: evaluated once at the end, in `summary.json`);
            broken files are skipped and listed in `hygiene.txt`.
        model: a registered model name (`keras_vggres.list_models()`).
        weights: `"imagenet"`, a weights tag, a weights file, or None / `"none"` (random).
        image_size: square input size (int); images are decoded with the weights' own eval
            transform (e.g. shorter side 256/224 of it, then a centre crop).
        batch_size: images per batch PER REPLICA; the pipelines are batched with the global
            batch `batch_size * strategy.num_replicas_in_sync` (`distribute.global_batch_size`).
        epochs_head: epochs of the head phase (backbone frozen; 0: skip it).
        epochs_finetune: epochs of the fine-tuning phase (0: skip it).
        unfreeze: stages trained in the fine-tuning phase: None (the last stage: "conv5" for
            ResNet, with "post" for V2; "block5" for VGG), a stage name (that stage and every
            later one, e.g. "conv4"), a list of stage names, or "all".
        bn: BatchNorm policy for the unfrozen stages, passed to `transfer.stages.unfreeze`
            ("frozen": BatchNorm keeps its statistics and runs in inference mode).
        lr: learning rate of the head phase.
        finetune_lr: peak learning rate of the fine-tuning phase (default `lr / 10`), reached
            after `warmup_epochs` of linear warmup, then cosine decay to 0.
        warmup_epochs: warmup length in epochs (may be fractional).
        dropout: dropout rate before the classifier layer.
        augment: False, "flip", "basic" (flip, small rotation and zoom), "random_resized_crop"
            (torchvision's training crop + flip, per image at decode time) or a callable on
            image batches; with augmentation the head phase trains through the backbone
            (cached embeddings would freeze the augmentation).
        validation_split: held-out fraction for a one-folder layout (ignored for train/val
            layouts, None: no validation; then training accuracy is monitored).
        seed: seeds Keras, NumPy, Python and TensorFlow, the split, shuffling and augmentation.
        out_dir: run folder (default `runs/<model>-<timestamp>`); pass the same folder again
            to resume an interrupted run. Only the chief writes it; other workers of a
            multi-worker run keep their state in `out_dir/workers/<task>_<index>`
            (`distribute.worker_dir`). Required under multi-worker.
        early_stopping_patience: epochs without improvement before a phase stops (None: off).
        strategy: None (the default strategy), a kind for `keras_vggres.distribute.strategy`
            ("auto", "tpu", "multiworker", "mirrored", "none") or a `tf.distribute.Strategy`;
            the model and its optimizers are built inside `strategy.scope()`. Under
            multi-worker the head trains through the frozen backbone (no cached embeddings).
        verbose: "auto" (progress bars in a terminal or notebook, one line per epoch in logs),
            0 (silent: no bars, no printed reports), 1 (bars) or 2 (one line per epoch).
            Forced to 0 on workers other than the chief.
        callbacks: extra Keras callbacks, appended to every `fit` call.
        precision: "float32", "mixed" (float16 on GPU, bfloat16 elsewhere), "mixed_float16"
            or "mixed_bfloat16"; the global Keras dtype policy during the run (the caller's
            policy is restored afterwards). The classifier output stays float32.
        jit_compile: `model.compile`'s XLA switch: "auto" (Keras' default), True or False.
        optimizer: "adam" (default), "adamw", "sgd" (momentum 0.9, Nesterov), "rmsprop", a
            Keras optimizer (copied per phase with that phase's learning rate) or a callable
            `learning_rate -> optimizer`.
        label_smoothing: in [0, 1); > 0 trains with one-hot labels and
            `CategoricalCrossentropy(label_smoothing=...)`.
        class_weights: True (default): balanced class weights for imbalanced folders; False:
            every image counts the same.
        cache: None (default: images streamed from disk each epoch; memory does not grow with
            the dataset), "memory" or "disk" (decoded images cached after the first epoch).
        restart: start over in `out_dir`, removing an earlier run's files (needed when the
            settings or the data changed).

    Returns:
        A `FinetuneResult`.
    """
    require_tensorflow("finetune() (tf.data pipelines, tf.distribute, SavedModel export)",
                       instead=_INSTEAD)
    settings = finetune_settings(locals())
    strategy = _strategy(strategy)
    settings["global_batch_size"] = distribute.global_batch_size(batch_size, strategy)
    multiworker = distribute.is_multiworker(strategy)
    if out_dir is None and multiworker:
        raise ValueError("`out_dir` is required under a multi-worker strategy: every worker "
                         "must use the same run folder (restart them all with it to resume).")
    if not distribute.is_chief(strategy):
        verbose = 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = distribute.worker_dir(out_dir or os.path.join("runs", f"{settings['model']}-{stamp}"),
                                   strategy)
    files = fingerprint.folder_files(settings["data_dir"])
    ctx = _Context(run=None, settings=settings, strategy=strategy,
                   verbose=_fit_verbose(verbose), user_callbacks=list(callbacks or ()),
                   augment=augment, multiworker=multiworker, cache=cache, optimizer=optimizer)
    keras.utils.set_random_seed(seed)
    with distribute.precision_scope(precision, strategy), data_errors():
        if restart or not os.path.exists(os.path.join(folder, STATE_FILE)):
            _scan_and_build(ctx)  # a new run: data and weights checked before anything is written
        with RunState(folder, settings, files=files, restart=restart) as run:
            if run.complete:  # the same command again: the finished run's result, as it was
                summary = exports.reporting.read_json(run.file(SUMMARY))
                result = exports.result(run, summary, history={})
            else:
                ctx.run, ctx.settings = run, run.settings
                _prepare(ctx)
                run.begin_attempt()
                _head_phase(ctx)
                _finetune_phase(ctx)
                result = exports.finish(run, ctx.data, ctx.model, ctx.settings,
                                        monitor=ctx.monitor, timings=ctx.timings, info=ctx.info)
    if verbose:
        print(result)
    return result


@dataclass
class _Context:
    run: RunState
    settings: dict
    strategy: object
    verbose: int
    user_callbacks: list
    augment: object = False
    multiworker: bool = False
    cache: object = None
    optimizer: object = "adam"     # the caller's: a name, an optimizer or a callable
    scan: object = None
    data: object = None
    model: object = None
    info: object = None
    monitor: str = "val_accuracy"
    timings: dict = field(default_factory=dict)


def _fit_verbose(verbose):
    """Keras `fit` verbosity: "auto" -> a live bar where someone sees it, else a line per epoch."""
    if verbose == "auto":
        return 1 if interactive() else 2
    return int(verbose)


def _strategy(strategy):
    """None, a kind (`distribute.STRATEGY_KINDS`) or a Strategy -> a `tf.distribute.Strategy`."""
    import tensorflow as tf

    if strategy is not None and not isinstance(strategy, (str, tf.distribute.Strategy)):
        raise TypeError("`strategy` must be None, one of "
                        f"{distribute.STRATEGY_KINDS} or a tf.distribute.Strategy; received "
                        f"{type(strategy).__name__}.")
    return distribute.strategy("none" if strategy is None else strategy)


# ----------------------------------------------------------------------------- data + model
def _scan_and_build(ctx):
    """Scan the folder and build the classifier (loading the weights): every problem with the
    data or the weights shows here, before a run folder is written."""
    s = ctx.settings
    start = time.perf_counter()
    ctx.scan = scan_folder(s["data_dir"], verbose=1 if ctx.verbose == 1 else 0)
    ctx.timings["scan"] = round(time.perf_counter() - start, 3)
    if ctx.verbose:
        print(ctx.scan)
    ctx.model = distribute.build_in_scope(ctx.strategy, build_classifier, s["model"],
                                          weights_argument(s["weights"]), s["image_size"],
                                          len(ctx.scan.class_names), s["dropout"])


def _prepare(ctx):
    """The scan and classifier (made now unless `_scan_and_build` ran), then the streaming
    pipelines (the weights' own eval transform at the run's image size)."""
    from keras_vggres.transfer.stages import find_backbone
    from keras_vggres.weights.info import scaled_to, weights_info

    s = ctx.settings
    if ctx.model is None:
        _scan_and_build(ctx)
    scan = ctx.scan
    scan.save(ctx.run.file(HYGIENE_JSON))
    size = (s["image_size"], s["image_size"])
    backbone_info = weights_info(find_backbone(ctx.model)[0])
    ctx.info = backbone_info.replace(transform=scaled_to(backbone_info.transform, size))
    split = (None if scan.layout == "train/val" and "val" in scan.files
             else s["validation_split"])
    ctx.data = from_scan(scan, image_size=size, batch_size=s["global_batch_size"],
                         validation_split=split, seed=s["seed"], preprocessing="raw",
                         augment=ctx.augment, cache=run_cache(ctx),
                         transform=ctx.info.transform)
    for name in ("train", "val", "test"):
        pipeline = getattr(ctx.data, name)
        if pipeline is not None:
            setattr(ctx.data, name, _labels_for_loss(
                distribute.with_auto_shard(pipeline, "data"), s, len(scan.class_names)))
    ctx.monitor = "val_accuracy" if ctx.data.val is not None else "accuracy"


def run_cache(ctx):
    """`cache` for the pipelines: "disk" caches inside the run folder (removed at the end)."""
    if ctx.cache == "disk":
        folder = ctx.run.file(CACHE_DIR)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, "images")
    return ctx.cache


def _labels_for_loss(dataset, settings, num_classes):
    """One-hot labels when label smoothing is on (Keras' sparse loss has no smoothing)."""
    if not settings["label_smoothing"]:
        return dataset
    import tensorflow as tf

    return dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)))


# ----------------------------------------------------------------------------- phases
def _already_done(ctx, phase, epochs):
    """True when `phase` has nothing to train: finished by an earlier attempt (its weights are
    restored) or given 0 epochs (recorded as finished)."""
    if ctx.run.phase(phase)["done"]:
        ctx.model.load_weights(ctx.run.file(ctx.run.phase(phase)["weights"]))
        return True
    if epochs == 0:
        ctx.run.finish_phase(phase, ctx.model, epochs=0)
        return True
    return False


def _fit(ctx, fit_model, train, val, *, phase, epochs, epoch_offset, earlier_phases):
    fit_model.fit(train, validation_data=val, epochs=epochs, verbose=ctx.verbose,
                  shuffle=False,
                  class_weight=ctx.data.class_weights if ctx.settings["class_weights"] else None,
                  callbacks=phase_callbacks(ctx.run, ctx.model, ctx.settings, phase=phase,
                                            epoch_offset=epoch_offset,
                                            earlier_phases=earlier_phases, monitor=ctx.monitor,
                                            verbose=ctx.verbose,
                                            user_callbacks=ctx.user_callbacks))
    fit_model._initial_epoch = None  # set by the backup callback; must not leak into a later fit


def _restore_best(ctx):
    """Load the best epoch so far (`best.keras`, kept across attempts) into the classifier:
    what Keras' `restore_best_weights` does, but correct after a resume too."""
    path = ctx.run.file(BEST_MODEL)
    if os.path.exists(path):
        ctx.model.set_weights(keras.models.load_model(path, compile=False).get_weights())


def _head_phase(ctx):
    """Phase 1: backbone frozen; head trained on cached embeddings unless augmenting."""
    run, s, phase = ctx.run, ctx.settings, "head"
    if _already_done(ctx, phase, s["epochs_head"]):
        return
    freeze_backbone(ctx.model, s["model"])
    start = time.perf_counter()
    with ctx.strategy.scope():
        if ctx.augment in (False, None) and not ctx.multiworker:
            fit_model, train, val = _embedding_data(ctx)
        else:  # augmenting, or multi-worker: through the frozen backbone
            fit_model, train, val = ctx.model, ctx.data.train, ctx.data.val
        compile_phase(fit_model, s, s["lr"], ctx.optimizer)
    if ctx.multiworker:
        distribute.fix_multiworker_fit(fit_model)
    _fit(ctx, fit_model, train, val, phase=phase, epochs=s["epochs_head"], epoch_offset=0,
         earlier_phases=[])
    _restore_best(ctx)  # the fine-tuning phase starts from the best head
    run.add_seconds(phase, time.perf_counter() - start)
    run.finish_phase(phase, ctx.model, epochs=phase_epochs(run, phase),
                     embeddings=fit_model is not ctx.model)
    shutil.rmtree(run.file(EMBEDDINGS_DIR), ignore_errors=True)


def _embedding_data(ctx):
    """(head model, train features, val features or None).

    One backbone pass per split, cached in `embeddings/` (keyed by the backbone's weights, the
    splits and the data fingerprint, so a resumed attempt reuses it and changed data cannot);
    the head model shares the classifier's layers.
    """
    from keras_vggres.transfer.heads import classifier_head
    from keras_vggres.transfer.stages import find_backbone

    start = time.perf_counter()
    s = ctx.settings
    batch = s["global_batch_size"]
    arrays = embed_splits(find_backbone(ctx.model)[0], ctx.data, ("train", "val"),
                          batch_size=EMBEDDING_BATCH_FACTOR * batch,
                          cache_dir=ctx.run.file(EMBEDDINGS_DIR),
                          cache_key=s.get("data_fingerprint"))
    ctx.timings["embeddings"] = round(time.perf_counter() - start, 3)
    classes = len(ctx.data.class_names)

    def features(split, shuffle):
        x, y = arrays[split]
        ds = feature_dataset(x, y, batch, shuffle=shuffle, seed=s["seed"])
        return _labels_for_loss(ds, s, classes)

    val = features("val", False) if "val" in arrays else None
    return classifier_head(ctx.model), features("train", True), val


def _finetune_phase(ctx):
    """Phase 2: unfreeze the chosen stages (BatchNorm per `bn`), warmup + cosine learning rate."""
    from keras_vggres.transfer.stages import unfreeze

    run, s, phase = ctx.run, ctx.settings, "finetune"
    if _already_done(ctx, phase, s["epochs_finetune"]):
        return
    freeze_backbone(ctx.model, s["model"])
    summary = unfreeze(ctx.model, stages=s["unfreeze"], bn=s["bn"])
    if ctx.verbose:
        print(summary)
    steps = ctx.data.steps("train")
    schedule = WarmupCosine(s["finetune_lr"], total_steps=steps * s["epochs_finetune"],
                            warmup_steps=min(int(round(s["warmup_epochs"] * steps)),
                                             steps * s["epochs_finetune"]))
    start = time.perf_counter()
    with ctx.strategy.scope():
        compile_phase(ctx.model, s, schedule, ctx.optimizer)
    _fit(ctx, ctx.model, ctx.data.train, ctx.data.val, phase=phase, epochs=s["epochs_finetune"],
         epoch_offset=phase_epochs(run, "head"), earlier_phases=["head"])
    run.add_seconds(phase, time.perf_counter() - start)
    run.finish_phase(phase, ctx.model, epochs=phase_epochs(run, phase))
