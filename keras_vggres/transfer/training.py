"""How a fine-tuning phase trains: its optimizer, loss, compile call and callbacks."""

from __future__ import annotations

import keras

from keras_vggres import distribute
from keras_vggres.transfer import report as reporting
from keras_vggres.transfer.callbacks import (AtomicBackupAndRestore, BestModelCheckpoint,
                                             ResumableEarlyStopping, StopOnNaN, best_so_far)
from keras_vggres.transfer.layout import BACKUP_DIR, BEST_MODEL, METRICS
from keras_vggres.transfer.settings import OPTIMIZERS


def make_optimizer(optimizer, learning_rate):
    """A new optimizer for one phase: a name (`OPTIMIZERS`, Keras defaults; SGD with momentum
    0.9 and Nesterov), a copy of an optimizer instance with this phase's learning rate, or
    `optimizer(learning_rate)` for a callable."""
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name == "sgd":
            return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
        return {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                "rmsprop": keras.optimizers.RMSprop}[name](learning_rate)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        config = dict(optimizer.get_config(), learning_rate=learning_rate)
        return type(optimizer).from_config(config)
    made = optimizer(learning_rate)
    if not isinstance(made, keras.optimizers.Optimizer):
        raise TypeError(f"`optimizer` returned {type(made).__name__}, not a keras optimizer; "
                        f"pass one of {OPTIMIZERS}, an optimizer or a callable returning one.")
    return made


def compile_phase(model, settings, learning_rate, optimizer):
    """Compile for one phase: sparse labels, or one-hot ones with label smoothing."""
    smoothing = settings["label_smoothing"]
    if smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss=loss,
                  metrics=metrics, **distribute.compile_kwargs(settings["jit_compile"]))


def phase_callbacks(run, model, settings, *, phase, epoch_offset, earlier_phases, monitor,
                    verbose, user_callbacks):
    """CSV log, best checkpoint, crash-consistent backup, NaN stop, early stopping, the user's."""
    metrics = run.file(METRICS)
    initial = best_so_far(metrics, monitor, phases=earlier_phases + [phase])
    callbacks = [StopOnNaN(phase),
                 reporting.EpochCSVLogger(metrics, phase=phase, run=run.attempt,
                                          epoch_offset=epoch_offset),
                 BestModelCheckpoint(model, run.file(BEST_MODEL), monitor=monitor,
                                     initial_best=initial),
                 # kept when fit ends: removed by RunState.finish_phase once the phase is done
                 AtomicBackupAndRestore(run.file(BACKUP_DIR, phase), delete_checkpoint=False)]
    if settings["early_stopping_patience"] is not None:
        callbacks.append(ResumableEarlyStopping(
            metrics, phase=phase, epoch_offset=epoch_offset, monitor=monitor, mode="max",
            patience=settings["early_stopping_patience"],
            verbose=min(verbose, 1)))
    return callbacks + list(user_callbacks)


def phase_epochs(run, phase):
    """Epochs of `phase` logged in the run's metrics CSV."""
    return sum(1 for r in reporting.read_metrics(run.file(METRICS)) if r["phase"] == phase)
