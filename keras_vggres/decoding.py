"""ImageNet class names and `decode_predictions`, from the class index bundled with the package."""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from keras_vggres._checks import check_int

NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def class_index():
    """[(wnid, name)] for the 1000 ImageNet classes, read once from the bundled JSON."""
    text = resources.files("keras_vggres").joinpath("data").joinpath("imagenet_class_index.json")
    raw = json.loads(text.read_text(encoding="utf-8"))
    return tuple(tuple(raw[str(i)]) for i in range(NUM_CLASSES))


def class_names():
    """The 1000 ImageNet class names in index order (e.g. "tench", "goldfish", ...)."""
    return tuple(name for _, name in class_index())


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into ``(wnid, class_name, score)`` tuples.

    Same output as ``keras.applications.imagenet_utils.decode_predictions``, but the class
    index is bundled (never downloaded). Unlike Keras, ``top`` must be an integer >= 1
    (Keras returns all 1000 classes for ``top=0``; ask for ``top=1000`` instead). Values above
    1000 return all 1000 classes, as in Keras.

    Args:
        preds: array or tensor of shape ``(samples, 1000)``.
        top: how many of the best classes to return per sample.

    Returns:
        A list with one list per sample of ``(wnid, class_name, score)`` tuples, best first.
    """
    check_int("top", top, low=1)
    preds = _as_numpy(preds)
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions "
            f"(i.e. a 2D array of shape (samples, {NUM_CLASSES})). "
            f"Received array with shape: {preds.shape}"
        )
    index = class_index()
    results = []
    for pred in preds:
        best = pred.argsort()[-int(top):][::-1]
        result = [index[i] + (pred[i],) for i in best]
        result.sort(key=lambda item: item[2], reverse=True)
        results.append(result)
    return results


def _as_numpy(preds):
    if isinstance(preds, (list, tuple, np.ndarray)):
        return np.asarray(preds)
    from keras import ops  # a backend tensor: only then is Keras needed

    return np.asarray(ops.convert_to_numpy(preds))
