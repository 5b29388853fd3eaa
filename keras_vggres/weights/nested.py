"""Weights of a model nested in a `.keras` file: a fine-tuned run's backbone into a builder.

`finetune`, `export` and `classifier()` save a classifier whose backbone is a sub-model, so
`ResNet18(weights="run/model.keras", include_top=False)` does not match the file's structure.
Keras then refuses by structure; here the file's model is loaded whole (Keras' safe mode, after
the file passed the native refusal rules) and the one sub-model whose variables have exactly
the target's shapes, in order, gives its values. No match, or two, is an error naming both
models.
"""

from __future__ import annotations

import keras


def matching_submodel(path, model):
    """`(donor, source)`: the sub-model of the model in `path` whose variables match `model`'s
    shapes in order (None if none does), and that loaded source model."""
    source = keras.saving.load_model(path, compile=False, safe_mode=True)
    want = _shapes(model)
    found = [m for m in _models(source) if _shapes(m) == want]
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
