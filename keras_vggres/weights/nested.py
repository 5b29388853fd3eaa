"""Weights of a model nested in a `.keras` file: a fine-tuned run's backbone into a builder.

`finetune`, `export` and `classifier()` save a classifier whose backbone is a sub-model, so
`ResNet18(weights="run/model.keras", include_top=False)` does not match the file's structure.
Keras then refuses by structure; here the file's model is loaded whole (Keras' safe mode, after
the file passed the native refusal rules) and the one sub-model whose variables have exactly
the target's shapes, in order, gives its values. No match, or two, is an error naming both
models.
"""

from __future__ import annotations

import warnings

import keras

from keras_vggres.weights._keras_warnings import replay_warnings


def matching_submodel(path, model):
    """`(donor, source)`: the sub-model of the model in `path` whose variables match `model`'s
    shapes in order (None if none does), and that loaded source model. Models that hold the
    very same variables (a wrapper adding none, a model applied twice) count once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = keras.saving.load_model(path, compile=False, safe_mode=True)
    skipped = replay_warnings(caught, keep_skipped=False)
    if skipped:
        raise ValueError(f"{path!r} does not hold every variable of its own model: "
                         f"{skipped[0]}.")
    want = _shapes(model)
    found, seen = [], set()
    for candidate in _models(source):  # outermost first: it is the one kept
        ids = tuple(id(v) for v in candidate.weights)
        if _shapes(candidate) == want and ids not in seen:
            seen.add(ids)
            found.append(candidate)
    if len(found) > 1:
        raise ValueError(f"{path!r} holds {len(found)} sub-models that each match model "
                         f"{model.name!r} ({[m.name for m in found]}); load the file with "
                         "keras_vggres.load_model and pick one.")
    return (found[0] if found else None), source


def _models(model):
    """`model` and every model nested in it, outermost first."""
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _models(layer)


def _shapes(model):
    return [tuple(v.shape) for v in model.weights]
