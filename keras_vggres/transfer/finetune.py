"""The fine-tuning recipe: train a head on a frozen backbone, then fine-tune the late stages.

Phase "head": the backbone is frozen. Without augmentation the head trains on cached embeddings
(one backbone pass, then cheap epochs): the head model shares its layers with the classifier,
and frozen BatchNorm runs in inference mode, so this is the same computation as fitting the
classifier through the frozen backbone, only faster. Phase "finetune": `unfreeze` stages are
made trainable (BatchNorm per `bn`) and trained with a lower, warmed-up cosine learning rate.

The model is built with `include_preprocessing=True`: the data stays raw RGB 0-255 and the
exported `model.keras` and SavedModel take raw RGB 0-255 images. Everything lands in `out_dir`
(see `FinetuneResult`); a run killed mid-way and restarted with the same `out_dir` and settings
continues where it stopped (`keras_vggres.transfer.runstate`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

import keras

from keras_vggres import distribute
from keras_vggres.transfer import exports
from keras_vggres.transfer import report as reporting
from keras_vggres.transfer.datasets import from_scan
from keras_vggres.transfer.exports import FinetuneResult
from keras_vggres.transfer.hygiene import scan_folder
from keras_vggres.transfer.runstate import (BestModelCheckpoint, ResumableEarlyStopping, RunState,
                                           best_so_far)
from keras_vggres.transfer.schedules import WarmupCosine

ALL_STAGES = "all"
# The embedding pass needs no gradients: a batch this many times the training batch fits
# wherever training fits, and runs faster.
EMBEDDING_BATCH_FACTOR = 2
__all__ = ["finetune", "FinetuneResult", "build_classifier", "embed_splits", "feature_dataset",
           "freeze_backbone", "unfreeze_stages"]


def finetune(data_dir, model="resnet50", weights="imagenet", image_size=224, batch_size=32,
             epochs_head=5, epochs_finetune=5, unfreeze=None, bn="frozen", lr=1e-3,
             finetune_lr=None, warmup_epochs=1, dropout=0.2, augment=False, validation_split=0.2,
             seed=1337, out_dir=None, early_stopping_patience=3, strategy=None, verbose=1,
             callbacks=None, precision="float32", jit_compile="auto"):
    """Fine-tune a registered model on an image folder and export it.

    Args:
        data_dir: `root/<class>/*.jpg` or `root/train/<class>/...` + `root/val/<class>/...`;
            broken files are skipped and listed in `hygiene.txt`.
        model: a registered model name (`keras_vggres.list_models()`).
        weights: `"imagenet"`, a weights tag, a weights file, or None / `"none"` (random).
        image_size: square input size (int).
        batch_size: images per batch PER REPLICA; the pipelines are batched with the global
            batch `batch_size * strategy.num_replicas_in_sync` (`distribute.global_batch_size`).
        epochs_head: epochs of the head phase (backbone frozen).
        epochs_finetune: epochs of the fine-tuning phase (0: skip it).
        unfreeze: stages trained in the fine-tuning phase: None (the last stage: "conv5" for
            ResNet, with "post" for V2; "block5" for VGG), a stage name (that stage and every
            later one, e.g. "conv4"), a list of stage names, or "all".
        bn: BatchNorm policy for the unfrozen stages, passed to `transfer.stages.unfreeze`
            ("frozen": BatchNorm keeps its statistics and runs in inference mode).
        lr: learning rate of the head phase (Adam).
        finetune_lr: peak learning rate of the fine-tuning phase (default `lr / 10`), reached
            after `warmup_epochs` of linear warmup, then cosine decay to 0.
        warmup_epochs: warmup length in epochs (may be fractional).
        dropout: dropout rate before the classifier layer.
        augment: False, "basic" or a callable on image batches; with augmentation the head
            phase trains through the backbone (cached embeddings would freeze the augmentation).
        validation_split: held-out fraction for a one-folder layout (ignored for train/val
            layouts, None: no validation; then training accuracy is monitored).
        seed: seeds Keras, NumPy, Python and TensorFlow, the split and the shuffling.
        out_dir: run folder (default `runs/<model>-<timestamp>`); pass the same folder again
            to resume an interrupted run. Only the chief writes it; other workers of a
            multi-worker run keep their state in `out_dir/workers/<task>_<index>`
            (`distribute.worker_dir`). Required under multi-worker.
        early_stopping_patience: epochs without improvement before a phase stops (None: off).
        strategy: None (the default strategy), a kind for `keras_vggres.distribute.strategy`
            (`distribute.STRATEGY_KINDS`: "auto", "tpu", "multiworker", "mirrored", "none") or
            a `tf.distribute.Strategy`; the model and its optimizers are built inside
            `strategy.scope()`. It is resolved before any other TensorFlow work. Under
            multi-worker the head trains through the frozen backbone (no cached embeddings).
        verbose: Keras `fit` verbosity; 0 also silences the printed reports (forced to 0 on
            workers other than the chief).
        callbacks: extra Keras callbacks, appended to every `fit` call.
        precision: `distribute.PRECISIONS`: "float32", "mixed" (float16 on GPU, bfloat16
            elsewhere), "mixed_float16" or "mixed_bfloat16"; the global Keras dtype policy
            during the run (the caller's policy is restored afterwards). The classifier output
            stays float32.
        jit_compile: `model.compile`'s XLA switch: "auto" (Keras' default), True or False.

    Returns:
        A `FinetuneResult`.
    """
    settings = _settings(locals())
    strategy = _strategy(strategy)
    settings["global_batch_size"] = distribute.global_batch_size(batch_size, strategy)
    multiworker = distribute.is_multiworker(strategy)
    if out_dir is None and multiworker:
        raise ValueError("`out_dir` is required under a multi-worker strategy: every worker "
                         "must use the same run folder (restart them all with it to resume).")
    verbose = verbose if distribute.is_chief(strategy) else 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = out_dir or os.path.join("runs", f"{settings['model']}-{stamp}")
    run = RunState(distribute.worker_dir(folder, strategy), settings)
    if run.complete:
        return exports.result(run, reporting.read_json(run.file("summary.json")), history={})
    ctx = _Context(run=run, settings=settings, strategy=strategy, verbose=verbose,
                   user_callbacks=list(callbacks or ()), augment=augment,
                   multiworker=multiworker)
    keras.utils.set_random_seed(seed)
    with distribute.precision_scope(precision, strategy):
        _prepare(ctx, data_dir)
        _head_phase(ctx)
        _finetune_phase(ctx)
        result = exports.finish(ctx)
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
    data: object = None
    model: object = None
    monitor: str = "val_accuracy"
    timings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- settings
def _settings(args):
    """Check every argument (nothing is written for a rejected call); return the JSON-able
    settings that identify the run (a resumed run must have the same ones)."""
    from keras_vggres.models._common import check_choice
    from keras_vggres.registry import get_spec
    from keras_vggres.transfer.datasets import make_augment
    from keras_vggres.transfer.stages import BN_POLICIES

    spec = get_spec(args["model"])
    data_dir = os.path.abspath(os.fspath(args["data_dir"]))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"`data_dir` {data_dir!r} does not exist or is not a folder.")
    _check_int(args, "image_size", 32)
    _check_int(args, "batch_size", 1)
    _check_int(args, "epochs_head", 0)
    _check_int(args, "epochs_finetune", 0)
    _check_int(args, "seed", 0)
    if args["early_stopping_patience"] is not None:
        _check_int(args, "early_stopping_patience", 0)
    if args["epochs_head"] + args["epochs_finetune"] == 0:
        raise ValueError("`epochs_head` and `epochs_finetune` are both 0: nothing to train.")
    _check_number(args, "lr", low=0, low_open=True)
    if args["finetune_lr"] is not None:
        _check_number(args, "finetune_lr", low=0, low_open=True)
    _check_number(args, "warmup_epochs", low=0)
    _check_number(args, "dropout", low=0, high=1)
    if args["validation_split"] is not None:
        _check_number(args, "validation_split", low=0, low_open=True, high=1)
    check_choice("bn", args["bn"], BN_POLICIES)
    make_augment(args["augment"], None)  # raises for an unknown value
    check_choice("precision", args["precision"], distribute.PRECISIONS)
    distribute.compile_kwargs(args["jit_compile"])  # raises for an unknown value
    weights = args["weights"]
    weights = None if weights is None or str(weights).lower() == "none" else os.fspath(weights)
    return {
        "data_dir": data_dir, "model": spec.name, "weights": weights,
        "image_size": args["image_size"], "batch_size": args["batch_size"],
        "epochs_head": args["epochs_head"], "epochs_finetune": args["epochs_finetune"],
        "unfreeze": list(unfreeze_stages(spec.stages, args["unfreeze"])),
        "bn": args["bn"], "lr": float(args["lr"]),
        "finetune_lr": float(args["finetune_lr"] or args["lr"] / 10),
        "warmup_epochs": args["warmup_epochs"], "dropout": float(args["dropout"]),
        "augment": _describe_augment(args["augment"]),
        "validation_split": args["validation_split"], "seed": args["seed"],
        "early_stopping_patience": args["early_stopping_patience"], "verbose": args["verbose"],
        "precision": args["precision"], "jit_compile": args["jit_compile"],
    }


def _check_int(args, name, low):
    value = args[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}; received {name}={value!r}.")


def _check_number(args, name, *, low, low_open=False, high=None):
    value = args[name]
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (
        value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and < {high}")
        raise ValueError(f"`{name}` must be a number {bounds}; received {name}={value!r}.")


def _describe_augment(augment):
    """A stable description of `augment` for the settings (a callable by its qualified name)."""
    if augment in (False, None, "basic"):
        return augment
    name = getattr(augment, "__qualname__", None) or type(augment).__qualname__
    layer = getattr(augment, "name", None)
    return f"callable:{getattr(augment, '__module__', '')}.{name}" + (f"[{layer}]" if layer else "")


def unfreeze_stages(stages, unfreeze):
    """The backbone stages trained in the fine-tuning phase (the model's own `head` excluded)."""
    body = tuple(s for s in stages if s != "head")
    if unfreeze is None:
        unfreeze = next(s for s in reversed(body) if s != "post")
    if unfreeze == ALL_STAGES:
        return body
    if isinstance(unfreeze, str):
        if unfreeze not in body:
            raise ValueError(f"`unfreeze` must be a stage name of the model {body}, a list of "
                             f"them or {ALL_STAGES!r}; received unfreeze={unfreeze!r}.")
        return body[body.index(unfreeze):]
    names = list(unfreeze) if isinstance(unfreeze, (list, tuple)) else None
    if not names or any(n not in body for n in names):
        raise ValueError(f"`unfreeze` must be a stage name of the model {body}, a list of them "
                         f"or {ALL_STAGES!r}; received unfreeze={unfreeze!r}.")
    return tuple(s for s in body if s in names)


def _strategy(strategy):
    """None, a kind (`distribute.STRATEGY_KINDS`) or a Strategy -> a `tf.distribute.Strategy`."""
    import tensorflow as tf

    if strategy is not None and not isinstance(strategy, (str, tf.distribute.Strategy)):
        raise TypeError("`strategy` must be None, one of "
                        f"{distribute.STRATEGY_KINDS} or a tf.distribute.Strategy; received "
                        f"{type(strategy).__name__}.")
    return distribute.strategy("none" if strategy is None else strategy)


# ----------------------------------------------------------------------------- data + model
def _prepare(ctx, data_dir):
    s = ctx.settings
    start = time.perf_counter()
    scan = scan_folder(data_dir)
    scan.save(ctx.run.file("hygiene.json"))
    split = None if scan.layout == "train/val" and "val" in scan.files else s["validation_split"]
    ctx.data = from_scan(scan, image_size=s["image_size"], batch_size=s["global_batch_size"],
                         validation_split=split, seed=s["seed"], preprocessing="raw",
                         augment=ctx.augment)
    ctx.data.train = distribute.with_auto_shard(ctx.data.train, "data")
    if ctx.data.val is not None:
        ctx.data.val = distribute.with_auto_shard(ctx.data.val, "data")
    ctx.monitor = "val_accuracy" if ctx.data.val is not None else "accuracy"
    ctx.timings["scan"] = round(time.perf_counter() - start, 3)
    if ctx.verbose:
        print(scan)
    ctx.model = distribute.build_in_scope(ctx.strategy, build_classifier, s["model"],
                                          s["weights"], s["image_size"],
                                          len(scan.class_names), s["dropout"])


def build_classifier(model_name, weights, image_size, num_classes, dropout):
    """Backbone with preprocessing inside (raw RGB 0-255 input) + a pooled softmax head."""
    from keras_vggres.registry import get_model
    from keras_vggres.transfer.heads import classifier

    backbone = get_model(model_name, include_top=False, weights=weights,
                         input_shape=(image_size, image_size, 3), include_preprocessing=True)
    return classifier(backbone, num_classes, pooling="avg", dropout=dropout,
                      name=f"{model_name}_classifier")


def freeze_backbone(model, model_name):
    """Freeze every backbone stage (BatchNorm included); the classifier head stays trainable."""
    from keras_vggres.registry import get_spec
    from keras_vggres.transfer.stages import HEAD, freeze

    return freeze(model, stages=[s for s in get_spec(model_name).stages if s != HEAD])


def _compile(model, learning_rate, jit_compile="auto"):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  **distribute.compile_kwargs(jit_compile))


def _callbacks(ctx, phase, epoch_offset, earlier_phases):
    run = ctx.run
    metrics = run.file("metrics.csv")
    initial = best_so_far(metrics, ctx.monitor, phases=earlier_phases + [phase])
    cbs = [reporting.EpochCSVLogger(metrics, phase=phase, run=run.attempt,
                                    epoch_offset=epoch_offset),
           BestModelCheckpoint(ctx.model, run.file("best.keras"), monitor=ctx.monitor,
                               initial_best=initial),
           keras.callbacks.BackupAndRestore(run.file("backup", phase))]
    if ctx.settings["early_stopping_patience"] is not None:
        cbs.append(ResumableEarlyStopping(
            metrics, phase=phase, epoch_offset=epoch_offset, monitor=ctx.monitor, mode="max",
            restore_best_weights=True, patience=ctx.settings["early_stopping_patience"],
            verbose=min(ctx.verbose, 1)))
    return cbs + ctx.user_callbacks


def _phase_epochs(ctx, phase):
    return sum(1 for r in reporting.read_metrics(ctx.run.file("metrics.csv"))
               if r["phase"] == phase)


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
        _compile(fit_model, s["lr"], s["jit_compile"])
    if ctx.multiworker:
        distribute.fix_multiworker_fit(fit_model)
    fit_model.fit(train, validation_data=val, epochs=s["epochs_head"], verbose=ctx.verbose,
                  class_weight=ctx.data.class_weights, shuffle=False,
                  callbacks=_callbacks(ctx, phase, 0, []))
    fit_model._initial_epoch = None  # set by BackupAndRestore; must not leak into a later fit
    run.add_seconds(phase, time.perf_counter() - start)
    run.finish_phase(phase, ctx.model, epochs=_phase_epochs(ctx, phase),
                     embeddings=fit_model is not ctx.model)
    shutil.rmtree(run.file("embeddings"), ignore_errors=True)


def _embedding_data(ctx):
    """(head model, (train features, labels), (val features, labels) or None).

    One backbone pass per split, cached in `embeddings/` (keyed by the backbone's weights and
    the split, so a resumed attempt reuses it); the head model shares the classifier's layers.
    """
    from keras_vggres.transfer.heads import classifier_head
    from keras_vggres.transfer.stages import find_backbone

    start = time.perf_counter()
    batch, seed = ctx.settings["global_batch_size"], ctx.settings["seed"]
    arrays = embed_splits(find_backbone(ctx.model)[0], ctx.data, ("train", "val"),
                          batch_size=EMBEDDING_BATCH_FACTOR * batch,
                          cache_dir=ctx.run.file("embeddings"))
    ctx.timings["embeddings"] = round(time.perf_counter() - start, 3)
    train = feature_dataset(*arrays["train"], batch, shuffle=True, seed=seed)
    val = feature_dataset(*arrays["val"], batch) if "val" in arrays else None
    return classifier_head(ctx.model), train, val


def embed_splits(backbone, data, splits, *, batch_size, cache_dir=None):
    """{split: (embeddings, labels)} from ONE `embed_dataset` pass over the splits in order
    (one pooled model and one set of traces instead of one per split)."""
    import tensorflow as tf

    from keras_vggres.transfer.embeddings import embed_dataset

    splits = [s for s in splits if data.count(s)]
    dataset = None
    for split in splits:
        part = data.make(split).unbatch()
        dataset = part if dataset is None else dataset.concatenate(part)
    total = sum(data.count(s) for s in splits)
    dataset = dataset.batch(batch_size).apply(  # unbatch() hides the size; Keras wants it
        tf.data.experimental.assert_cardinality(-(-total // batch_size)))
    x, y = embed_dataset(backbone, dataset, pooling="avg", cache_dir=cache_dir,
                         cache_key="+".join(splits), verbose=0)
    out, start = {}, 0
    for split in splits:
        end = start + data.count(split)
        out[split] = (x[start:end], y[start:end])
        start = end
    return out



def feature_dataset(features, labels, batch_size, *, shuffle=False, seed=None):
    """tf.data over in-memory embeddings: `fit` on it has a fraction of the per-epoch
    overhead of `fit` on NumPy arrays (which matters when an epoch takes milliseconds)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        ds = ds.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
        _compile(ctx.model, schedule, s["jit_compile"])
    ctx.model.fit(ctx.data.train, validation_data=ctx.data.val, epochs=s["epochs_finetune"],
                  verbose=ctx.verbose, shuffle=False, class_weight=ctx.data.class_weights,
                  callbacks=_callbacks(ctx, phase, _phase_epochs(ctx, "head"), ["head"]))
    ctx.model._initial_epoch = None  # set by BackupAndRestore; must not leak into a later fit
    run.add_seconds(phase, time.perf_counter() - start)
    run.finish_phase(phase, ctx.model, epochs=_phase_epochs(ctx, phase))

