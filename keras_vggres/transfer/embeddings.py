"""Pooled embeddings (N, D) of images through a backbone: arrays, image files or tf.data, cached.

Images are fed to the model as they are. Image files are loaded as RGB 0-255 by
`keras_vggres.load_images` with the model's own eval transform (`weights_info(model)`, scaled
to its input size): use a model built with `include_preprocessing=True`, or preprocess arrays
yourself and pass the array.

The on-disk cache (`cache_dir`) holds one `.npz` per key (`embeddings`, `labels` when the
input has labels, and the key itself, checked on read). The key is the SHA-256 of a JSON record
of everything the numbers depend on:

- `model`: the model name; `architecture`: a hash of every layer's class and config (names and
  `trainable` left out, so freezing or a new session does not invalidate it);
- `weights`: the caller's `weights_id`, else a hash of every weight's shape, dtype and bytes;
- `preprocessing`: the mode of the model's in-model preprocessing, if any; `pooling`;
- `data`: an array's shape, dtype and bytes hash; for image files each absolute path, size and
  modification time (ns) plus the load transform; for a `tf.data.Dataset` (whose contents cannot be
  hashed without reading it) its element spec and the caller's `cache_key`, required then;
- `cache_key`: the caller's extra string, also used as the file-name prefix.

Any change gives a new file name; stale files are left in place. Files are written to a
temporary name and renamed (`os.replace`), so a killed run never leaves a partial cache file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from keras_vggres import images as image_files
from keras_vggres._atomic import replacing
from keras_vggres._checks import VERBOSITY, check_choice, check_int
from keras_vggres._progress import Progress
from keras_vggres.transfer import heads

CACHE_VERSION = 2
_IGNORED_CONFIG_KEYS = ("name", "trainable")


@dataclass
class _Source:
    """Batches of images (and labels) plus what identifies them for the cache."""

    count: int | None
    has_labels: bool
    identity: Callable[[], dict]
    batches: Callable[[], object]


def embed(model, images_or_dataset, batch_size=32, pooling="avg", cache_dir=None, cache_key=None,
          verbose="auto", *, return_labels=False, weights_id=None, image_size=None):
    """Pooled embeddings of images through a backbone, as a float32 array (N, D).

    Args:
        model: a no-top model: 4D feature map output (pooled here with `pooling`) or already
            pooled (`pooling="avg"`/`"max"` at build time). A model with a classifier top
            raises a ValueError: build the backbone with `include_top=False`.
        images_or_dataset: a NumPy array (N, H, W, 3); a list of image file paths, loaded
            `batch_size` at a time with `keras_vggres.load_images` (never all at once);
            or a `tf.data.Dataset` of images or `(images, labels)` (batched or not).
        batch_size: images per forward pass (arrays, files and unbatched datasets; a batched
            dataset keeps its own batches).
        pooling: `"avg"` or `"max"` for a 4D output; None or the model's own pooling for a
            pooled model.
        cache_dir: folder for the on-disk cache (see the module docstring); None: no cache.
        cache_key: extra string mixed into the cache key and used as file-name prefix (e.g.
            `"train"`); required to cache a `tf.data.Dataset`.
        verbose: `"auto"` (a progress bar in a terminal or notebook, silent in CI logs), 1
            (progress bar), 2 (one line at the end), 0 (silent).
        return_labels: also return the labels of a `(images, labels)` dataset.
        weights_id: a string identifying the weights (e.g. a tag and checkpoint hash); skips
            hashing the weight bytes for the cache key.
        image_size: load size of image files, int or (height, width); default: the model's
            static input size, else its weights' crop size. Files go through the weights'
            own eval transform (resize ratio and interpolation), scaled to this size.

    Returns:
        `embeddings` (float32, (N, D)), or `(embeddings, labels)` with `return_labels=True`.
    """
    check_int("batch_size", batch_size, low=1)
    check_choice("verbose", verbose, VERBOSITY)
    forward = pooled_model(model, pooling)
    source = _make_source(images_or_dataset, batch_size, model, image_size)
    if return_labels and not source.has_labels:
        raise ValueError("`return_labels=True` needs a tf.data.Dataset of (images, labels); "
                         f"received {type(images_or_dataset).__name__} without labels.")
    path = key = None
    if cache_dir is not None:
        key = cache_record(model, pooling, source, cache_key, weights_id)
        path = cache_path(cache_dir, model.name, key, cache_key)
        cached = _read_cache(path, key)
        if cached is not None:
            return cached if return_labels else cached[0]
    embeddings, labels = _compute(forward, source, verbose)
    if path is not None:
        _write_cache(path, key, embeddings, labels)
    return (embeddings, labels) if return_labels else embeddings


def embed_dataset(model, dataset, *, batch_size=32, pooling="avg", cache_dir=None,
                  cache_key=None, verbose="auto", weights_id=None):
    """`(embeddings, labels)` of a `tf.data.Dataset` of `(images, labels)`; see `embed`.

    Made for training a head on cached features: one backbone pass, then cheap epochs (train
    `keras_vggres.transfer.classifier_head(model)` on them with the classifier's pooling). Use
    an unshuffled dataset, or the features of a later call will not line up with the cache.
    """
    if not _is_dataset(dataset):
        raise TypeError("`dataset` must be a tf.data.Dataset of (images, labels); received an "
                        f"object of type {type(dataset).__name__}.")
    return embed(model, dataset, batch_size=batch_size, pooling=pooling, cache_dir=cache_dir,
                 cache_key=cache_key, verbose=verbose, return_labels=True, weights_id=weights_id)


def pooled_model(model, pooling):
    """`model` itself if it already pools as asked, else a model adding the global pooling."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received an object of type "
                        f"{type(model).__name__}.")
    already = heads.output_pooling(model)
    pooled = heads.pool(model, model.outputs[0], pooling, name="embedding_pool")
    if already is not None:
        return model
    return keras.Model(heads.single_input(model.inputs), pooled, name=f"{model.name}_embedding")


# ----------------------------------------------------------------------------- sources
def _make_source(data, batch_size, model, image_size):
    is_files = isinstance(data, (list, tuple)) and bool(data) and all(
        isinstance(p, (str, os.PathLike)) for p in data)
    if image_size is not None and not is_files:
        raise ValueError("`image_size` applies to image file paths only; received "
                         f"image_size={image_size!r} with a {type(data).__name__}.")
    if is_files:
        return _file_source([os.fspath(p) for p in data], batch_size,
                            load_transform(model, image_size))
    if isinstance(data, np.ndarray):
        return _array_source(data, batch_size)
    if _is_dataset(data):
        return _dataset_source(data, batch_size)
    raise TypeError("`images_or_dataset` must be a NumPy array (N, H, W, 3), a non-empty list "
                    "of image file paths or a tf.data.Dataset; received an object of type "
                    f"{type(data).__name__}.")


def _array_source(images, batch_size):
    if images.ndim != 4 or len(images) == 0:
        raise ValueError("An image array must be a non-empty batch (N, height, width, channels); "
                         f"received shape {images.shape}.")

    def identity():
        return {"kind": "array", "shape": list(images.shape), "dtype": str(images.dtype),
                "sha256": _hash_bytes([np.ascontiguousarray(images)])}

    def batches():
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size], None

    return _Source(len(images), False, identity, batches)


def _file_source(paths, batch_size, transform):
    def identity():
        files = []
        for path in paths:
            info = os.stat(path)
            files.append([os.path.abspath(path), info.st_size, info.st_mtime_ns])
        return {"kind": "files", "transform": transform.as_dict(), "files": files}

    def batches():
        for start in range(0, len(paths), batch_size):
            yield image_files.load_images(
                paths[start:start + batch_size], size=transform.crop_size,
                resize=transform.resize, interpolation=transform.interpolation), None

    return _Source(len(paths), False, identity, batches)


def _dataset_source(dataset, batch_size):
    import tensorflow as tf

    spec = dataset.element_spec
    image_spec = spec[0] if isinstance(spec, tuple) else spec
    if not isinstance(image_spec, tf.TensorSpec) or image_spec.shape.rank not in (3, 4):
        raise ValueError("A dataset must yield images (H, W, C), batches (N, H, W, C) or tuples "
                         f"(images, labels); its element spec is {spec}.")
    has_labels = isinstance(spec, tuple) and len(spec) >= 2
    if image_spec.shape.rank == 3:
        dataset = dataset.batch(batch_size)

    def identity():
        return {"kind": "dataset", "element_spec": repr(spec),
                "batch_size": batch_size if image_spec.shape.rank == 3 else None}

    def batches():
        for element in dataset:
            images = element[0] if isinstance(element, tuple) else element
            yield np.asarray(images), np.asarray(element[1]) if has_labels else None

    return _Source(None, has_labels, identity, batches)


def _is_dataset(data):
    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset exists only once TensorFlow is loaded
    return tf is not None and hasattr(data, "element_spec") and isinstance(data, tf.data.Dataset)


def load_transform(model, image_size=None):
    """The eval transform for loading files into `model`: its weights' own (`weights_info`),
    at `image_size` or the model's static input size."""
    from keras_vggres.weights.info import scaled_to, weights_info

    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    channels_first = keras.config.image_data_format() == "channels_first"
    spatial = tuple(shape[2:4] if channels_first else shape[1:3])
    static = len(spatial) == 2 and all(isinstance(dim, int) for dim in spatial)
    own = weights_info(model).transform
    if image_size is None:
        return scaled_to(own, spatial if static else own.crop_size)
    size = image_files.check_size("image_size", image_size)
    if static and size != spatial:
        raise ValueError(f"`image_size`={image_size!r} does not match the input size {spatial} "
                         f"of model {model.name!r}; leave it None or build the model with "
                         "input_shape=(None, None, 3).")
    return scaled_to(own, size)


# ----------------------------------------------------------------------------- the forward pass
def _compute(forward, source, verbose):
    """Run `forward` over every batch of `source`: (embeddings, labels or None).

    A last batch smaller than the first is zero-padded to the first one's size and its padding
    dropped from the output: every call has one shape, so the predict function is traced once
    instead of twice (a second trace of ResNet18 costs as much as a few hundred images).
    """
    bar = Progress("Embedding", source.count, verbose=verbose, unit="images")
    chunks, labels, done, full = [], [], 0, None
    for images, batch_labels in source.batches():
        if not np.issubdtype(images.dtype, np.floating):
            images = images.astype(np.float32)
        count = len(images)
        full = full or count
        if count < full:
            padding = np.zeros((full - count,) + images.shape[1:], images.dtype)
            images = np.concatenate([images, padding])
        chunks.append(np.asarray(forward.predict_on_batch(images), dtype=np.float32)[:count])
        if batch_labels is not None:
            labels.append(batch_labels)
        done += count
        bar.update(done)
    bar.close()
    if not chunks:
        raise ValueError("There are no images to embed (the dataset is empty).")
    return np.concatenate(chunks), (np.concatenate(labels) if labels else None)


# ----------------------------------------------------------------------------- the cache
def cache_record(model, pooling, source, cache_key, weights_id):
    """The JSON text the cache key hashes (see the module docstring)."""
    if cache_key is not None and not isinstance(cache_key, str):
        raise TypeError(f"`cache_key` must be a string; received {cache_key!r}.")
    identity = source.identity()
    if identity["kind"] == "dataset" and cache_key is None:
        raise ValueError("Caching the embeddings of a tf.data.Dataset needs `cache_key` (a name "
                         "for its contents, e.g. 'train-v1'): a dataset cannot be hashed "
                         "without reading it. Change the key when the data changes.")
    record = {
        "version": CACHE_VERSION,
        "model": model.name,
        "architecture": _hash_bytes([json.dumps(_signature(model), sort_keys=True,
                                                default=str).encode()]),
        "weights": str(weights_id) if weights_id is not None else weights_hash(model),
        "preprocessing": _preprocessing_mode(model),
        "pooling": heads.output_pooling(model) or pooling,
        "data": identity,
        "cache_key": cache_key,
    }
    return json.dumps(record, sort_keys=True)


def cache_path(cache_dir, model_name, record, cache_key=None):
    """`{cache_dir}/[{cache_key}-]{model name}-{sha256 of record, 24 hex}.npz`."""
    digest = hashlib.sha256(record.encode()).hexdigest()[:24]
    prefix = f"{_slug(cache_key)}-" if cache_key else ""
    return os.path.join(os.fspath(cache_dir), f"{prefix}{_slug(model_name)}-{digest}.npz")


def weights_hash(model):
    """SHA-256 of every weight's shape, dtype and bytes, in model order (names left out)."""
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{value.shape}{value.dtype};".encode())
        digest.update(value.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _read_cache(path, record):
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != record:
                return None
            labels = data["labels"] if "labels" in data.files else None
            return data["embeddings"], labels
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"Ignoring unreadable embeddings cache file {path!r} ({err}); "
                      "recomputing it.", stacklevel=3)
        return None


def _write_cache(path, record, embeddings, labels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {"embeddings": embeddings, "key": np.array(record)}
    if labels is not None:
        arrays["labels"] = labels
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _preprocessing_mode(model):
    from keras_vggres.preprocessing import mode_of_layer, preprocessing_layer

    layer = preprocessing_layer(model)
    return None if layer is None else mode_of_layer(layer)


def _signature(layer):
    """A layer's class and config without names; models recurse into their layers."""
    if isinstance(layer, keras.Model):
        return [type(layer).__name__, [_signature(inner) for inner in layer.layers]]
    try:
        config = layer.get_config()
    except NotImplementedError:
        config = {}
    return [type(layer).__name__,
            {k: v for k, v in config.items() if k not in _IGNORED_CONFIG_KEYS}]


def _hash_bytes(chunks):
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk.reshape(-1).view(np.uint8) if isinstance(chunk, np.ndarray)
                      else chunk)
    return digest.hexdigest()


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:64]


# ----------------------------------------------------------------------------- for finetune
def embed_splits(backbone, data, splits, *, batch_size, cache_dir=None, cache_key=None):
    """{split: (embeddings, labels)} of a `FolderData` from ONE `embed_dataset` pass over the
    splits in order (one pooled model and one set of traces instead of one per split).

    `cache_key` should identify the data's contents (e.g. its fingerprint): a dataset cannot
    be hashed without reading it.
    """
    import tensorflow as tf

    splits = [s for s in splits if data.count(s)]
    dataset = None
    for split in splits:
        part = data.make(split).unbatch()
        dataset = part if dataset is None else dataset.concatenate(part)
    total = sum(data.count(s) for s in splits)
    dataset = dataset.batch(batch_size).apply(  # unbatch() hides the size; Keras wants it
        tf.data.experimental.assert_cardinality(-(-total // batch_size)))
    key = "+".join(splits) + (f"-{cache_key}" if cache_key else "")
    x, y = embed_dataset(backbone, dataset, pooling="avg", cache_dir=cache_dir,
                         cache_key=key, verbose=0)
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
