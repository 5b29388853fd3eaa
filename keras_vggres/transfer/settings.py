"""The settings of a fine-tuning run: every argument checked before anything is written.

`finetune_settings` turns `finetune`'s arguments into the JSON-able settings that identify a
run (a resume must have the same ones): a rejected call leaves no trace on disk, and a weights
file that does not exist is refused here, not after a run folder was created.
"""

from __future__ import annotations

import os

from keras_vggres._checks import (BN_POLICIES, JIT_CHOICES, OPTIMIZERS, PRECISIONS,  # noqa: F401
                                  VERBOSITY, check_bool,
                                  check_choice, check_int, check_number, check_optional)
from keras_vggres.transfer.augment import describe, make_augment

CACHE_CHOICES = (None, "memory", "disk")


def finetune_settings(args):
    """Check `finetune`'s arguments (a dict of them); return the run's settings."""
    from keras_vggres.registry import get_spec
    from keras_vggres.transfer.stages import unfreeze_stages

    spec = get_spec(args["model"])
    data_dir = os.path.abspath(os.fspath(args["data_dir"]))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"`data_dir` {data_dir!r} does not exist or is not a folder.")
    check_int("image_size", args["image_size"], low=32)
    check_int("batch_size", args["batch_size"], low=1)
    check_int("epochs_head", args["epochs_head"], low=0)
    check_int("epochs_finetune", args["epochs_finetune"], low=0)
    check_int("seed", args["seed"], low=0)
    check_optional(check_int, "early_stopping_patience", args["early_stopping_patience"], low=0)
    if args["epochs_head"] + args["epochs_finetune"] == 0:
        raise ValueError("`epochs_head` and `epochs_finetune` are both 0: nothing to train.")
    lr = check_number("lr", args["lr"], low=0, low_open=True)
    finetune_lr = check_optional(check_number, "finetune_lr", args["finetune_lr"], low=0,
                                 low_open=True)
    check_number("warmup_epochs", args["warmup_epochs"], low=0)
    check_number("dropout", args["dropout"], low=0, high=1, high_open=True)
    check_number("label_smoothing", args["label_smoothing"], low=0, high=1, high_open=True)
    check_optional(check_number, "validation_split", args["validation_split"], low=0, high=1,
                   low_open=True, high_open=True)
    check_choice("bn", args["bn"], BN_POLICIES)
    make_augment(args["augment"], None)  # raises for an unknown value
    check_choice("precision", args["precision"], PRECISIONS)
    check_choice("jit_compile", args["jit_compile"], JIT_CHOICES)
    check_bool("class_weights", args["class_weights"])
    check_bool("restart", args["restart"])
    check_choice("cache", args["cache"], CACHE_CHOICES)
    check_choice("verbose", args["verbose"], VERBOSITY)
    return {
        "data_dir": data_dir, "model": spec.name, "weights": check_weights(spec.name,
                                                                           args["weights"]),
        "image_size": args["image_size"], "batch_size": args["batch_size"],
        "epochs_head": args["epochs_head"], "epochs_finetune": args["epochs_finetune"],
        "unfreeze": list(unfreeze_stages(spec.stages, args["unfreeze"])),
        "bn": args["bn"], "lr": lr, "finetune_lr": finetune_lr or lr / 10,
        "warmup_epochs": args["warmup_epochs"], "dropout": float(args["dropout"]),
        "augment": describe(args["augment"]),
        "validation_split": args["validation_split"], "seed": args["seed"],
        "early_stopping_patience": args["early_stopping_patience"], "verbose": args["verbose"],
        "precision": args["precision"], "jit_compile": args["jit_compile"],
        "optimizer": describe_optimizer(args["optimizer"]),
        "label_smoothing": float(args["label_smoothing"]),
        "class_weights": args["class_weights"], "cache": args["cache"],
    }


def check_weights(model_name, weights):
    """None, a tag of `model_name`, or an existing weights file: its absolute path, size and
    modification time (so that a replaced file is a changed run)."""
    from keras_vggres.weights import manifest

    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    weights = os.fspath(weights)
    if manifest.is_known_tag(model_name, weights):
        return weights
    if os.path.isfile(weights):
        info = os.stat(weights)
        return {"file": os.path.abspath(weights), "size": info.st_size,
                "mtime_ns": info.st_mtime_ns}
    tags = ("imagenet",) + tuple(manifest.list_weights(model_name))
    raise ValueError(f"`weights` must be None / 'none', a weights tag of {model_name} {tags} or "
                     f"the path of an existing weights file; received weights={weights!r} "
                     "(no such tag, no such file).")


def weights_argument(setting):
    """The builder's `weights` argument for a `check_weights` setting (a tag, a path, None)."""
    return setting["file"] if isinstance(setting, dict) else setting


def describe_optimizer(optimizer):
    """A JSON-able description: a name, or the class and config of an optimizer instance."""
    if isinstance(optimizer, str):
        return check_choice("optimizer", optimizer.lower(), OPTIMIZERS)
    import keras

    if isinstance(optimizer, keras.optimizers.Optimizer):
        config = {k: v for k, v in optimizer.get_config().items()
                  if k != "learning_rate" and isinstance(v, (int, float, str, bool, type(None)))}
        return {"class": type(optimizer).__name__, "config": config}
    if callable(optimizer):
        return describe(optimizer)
    raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, a keras optimizer or a callable "
                     f"`learning_rate -> optimizer`; received optimizer={optimizer!r}.")
