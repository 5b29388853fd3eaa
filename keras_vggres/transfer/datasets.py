"""Image-folder datasets for transfer learning: hygiene scan, split, class weights, tf.data.

`from_folder(data_dir)` scans the folder (`keras_vggres.transfer.hygiene.scan_folder`: broken
files are skipped and listed with reasons, odd modes are converted to RGB), splits it, and builds
`tf.data` pipelines: parallel decode, resize of the shorter side + centre crop (the transform of
`keras_vggres.load_images`), cache, shuffle, batch, optional augmentation, prefetch.

Pixel values: by default the pipelines yield raw RGB in 0-255 (float32), meant for models built
with `include_preprocessing=True`, as `finetune` does; pass `preprocessing=<mode>`, or a model
name (+ `weights` tag) whose preprocessing should be applied in the pipeline instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from keras_vggres._atomic import replacing
from keras_vggres.transfer.hygiene import ScanReport, scan_folder

RAW = "raw"
AUGMENTATIONS = (False, None, "basic")


@dataclass
class FolderData:
    """Train and validation pipelines of an image folder, with everything needed to rebuild them.

    `train` yields shuffled (and augmented, if asked) batches of `(images, labels)`; `val` is
    `None` without validation data. Labels are int32 class indices into `class_names`.
    `class_weights` is `compute_class_weights` of the training counts (pass as `class_weight=`).
    `make(split, ...)` builds another pipeline over the same files (e.g. unshuffled, for
    embeddings).
    """

    train: object
    val: object
    class_names: tuple
    class_weights: dict
    report: ScanReport
    image_size: tuple
    batch_size: int
    preprocessing: str                              # a mode name or "raw"
    files: dict = field(default_factory=dict)       # {"train"/"val": (paths, labels)}
    options: dict = field(default_factory=dict)     # cache / augment / seed used by `make`

    def count(self, split):
        return len(self.files.get(split, ((), ()))[0])

    def steps(self, split="train"):
        """Batches per epoch of `split`."""
        return -(-self.count(split) // self.batch_size)

    def labels(self, split):
        return np.asarray(self.files[split][1], dtype=np.int32)

    def make(self, split, *, shuffle=False, augment=False, cache=False, batch_size=None):
        """A new pipeline over the files of `split` with this data's size and preprocessing
        (and batch size, unless `batch_size` is given)."""
        paths, labels = self.files[split]
        return make_pipeline(paths, labels, self.image_size, batch_size or self.batch_size,
                             shuffle=shuffle, seed=self.options.get("seed"), cache=cache,
                             augment=self.options.get("augment") if augment else None,
                             preprocessing=self.preprocessing)


def compute_class_weights(counts):
    """scikit-learn's "balanced" weights: `n_samples / (n_classes * count)`, as {index: weight}.

    Args:
        counts: images per class, a sequence (index order) or a mapping (insertion order).
    """
    values = list(counts.values()) if isinstance(counts, dict) else list(counts)
    if not values or any(isinstance(n, bool) or not float(n).is_integer() or n <= 0
                          for n in values):
        raise ValueError(f"`counts` must hold a positive image count per class; received "
                         f"{counts!r}.")
    total = float(sum(values))
    return {i: total / (len(values) * n) for i, n in enumerate(values)}


def from_folder(data_dir, image_size=224, batch_size=32, validation_split=None, seed=1337,
                weights=None, model=None, preprocessing=None, augment=False, cache=True,
                shuffle=True, convert_dir=None):
    """Scan `data_dir` and build its training (and validation) pipelines.

    Args:
        data_dir: `root/<class>/*.jpg`, or `root/train/<class>/...` + `root/val/<class>/...`.
        image_size: int or (height, width): shorter side resized to its max, then centre crop.
        batch_size: images per batch.
        validation_split: fraction of each class held out for validation (stratified, fixed by
            `seed`), for the one-folder layout only; None: no validation set (or the `val/`
            folder of a train/val layout).
        seed: seed of the split, the shuffling and the augmentation.
        weights: a weights tag of `model` (its preprocessing mode is applied), or None.
        model: a model name (with `weights`, selects the preprocessing mode), a `keras.Model`
            (raw pixels if it contains an `ImageNetPreprocessing` layer), or None.
        preprocessing: None (decided by `model`/`weights`; raw 0-255 without them), `"raw"`,
            or a mode of `keras_vggres.imagenet.PREPROCESS_MODES`.
        augment: False, `"basic"` (flip, small rotation and zoom) or a callable applied to
            each training batch of images (0-255, before preprocessing).
        cache: True (memory), False, or a file path prefix for `tf.data`'s file cache.
        shuffle: reshuffle the training set every epoch.
        convert_dir: where files in odd modes are converted to RGB PNGs once (default: a
            folder under the system temp dir, keyed by the data folder).

    Returns:
        A `FolderData`.
    """
    return from_scan(scan_folder(data_dir), image_size=image_size, batch_size=batch_size,
                     validation_split=validation_split, seed=seed, weights=weights, model=model,
                     preprocessing=preprocessing, augment=augment, cache=cache, shuffle=shuffle,
                     convert_dir=convert_dir)


def from_scan(report, *, image_size=224, batch_size=32, validation_split=None, seed=1337,
              weights=None, model=None, preprocessing=None, augment=False, cache=True,
              shuffle=True, convert_dir=None):
    """`from_folder` for an existing `ScanReport` (no second scan)."""
    from keras_vggres.imagenet import _check_size

    size = _check_size("image_size", image_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1; received {batch_size!r}.")
    mode = resolve_preprocessing(model=model, weights=weights, preprocessing=preprocessing)
    augment_fn = make_augment(augment, seed)
    paths = dict(_converted_paths(report, convert_dir))
    splits = split_files(report, validation_split, seed)
    files = {s: ([paths[f.path] for f in fs], [f.label for f in fs]) for s, fs in splits.items()}
    counts = np.bincount(files["train"][1], minlength=len(report.class_names))
    data = FolderData(train=None, val=None, class_names=report.class_names,
                      class_weights=compute_class_weights([int(n) for n in counts]),
                      report=report, image_size=size, batch_size=batch_size, preprocessing=mode,
                      files=files, options={"seed": seed, "augment": augment_fn})
    data.train = data.make("train", shuffle=shuffle, augment=augment_fn is not None, cache=cache)
    if "val" in files:
        val_cache = cache if not isinstance(cache, str) else f"{cache}-val"
        data.val = data.make("val", cache=val_cache)
    return data


def split_files(report, validation_split, seed):
    """{"train": [ImageFile], "val": [...]}: the train/val folders, or a stratified split."""
    if validation_split is not None and (isinstance(validation_split, bool) or not isinstance(
            validation_split, (int, float)) or not 0 < validation_split < 1):
        raise ValueError("`validation_split` must be None or a fraction strictly between 0 and "
                         f"1; received validation_split={validation_split!r}.")
    if report.layout == "train/val":
        if validation_split is not None and "val" in report.files:
            raise ValueError(f"{report.root!r} already has a train/val layout; pass "
                             f"validation_split=None (received {validation_split!r}).")
        if validation_split is None:
            return dict(report.files)
    files = report.files.get("all") or report.files["train"]
    if validation_split is None:
        return {"train": list(files)}
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(len(report.class_names)):
        members = sorted((f for f in files if f.label == label), key=lambda f: f.path)
        order = rng.permutation(len(members))
        n_val = min(max(int(round(len(members) * validation_split)), 1), len(members) - 1)
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return {"train": train, "val": val}


def resolve_preprocessing(*, model=None, weights=None, preprocessing=None):
    """The pipeline's preprocessing: a mode name, or "raw" (pixels stay 0-255)."""
    from keras_vggres.imagenet import PREPROCESS_MODES

    if preprocessing is not None:
        choices = (None, RAW) + tuple(PREPROCESS_MODES)
        if preprocessing not in choices:
            raise ValueError(f"`preprocessing` must be one of {choices}; received "
                             f"preprocessing={preprocessing!r}.")
        return preprocessing
    if model is None:
        if weights is not None:
            raise ValueError(f"`weights`={weights!r} needs `model` (a model name) to select a "
                             "preprocessing mode.")
        return RAW
    if isinstance(model, str):
        from keras_vggres.registry import get_spec
        from keras_vggres.weights import pretrained

        name = get_spec(model).name
        weights = None if weights in (None, "none") else weights
        return pretrained.preprocessing_mode(name, True, pretrained.resolve(name, weights), None)
    if has_preprocessing_layer(model):
        return RAW
    raise ValueError(f"Model {getattr(model, 'name', model)!r} has no ImageNetPreprocessing layer;"
                     f" pass preprocessing= one of {(RAW,) + tuple(PREPROCESS_MODES)}.")


def has_preprocessing_layer(model):
    """Whether `model` (or a nested model) contains an `ImageNetPreprocessing` layer."""
    from keras_vggres.imagenet import ImageNetPreprocessing

    stack = list(getattr(model, "layers", ()))
    while stack:
        layer = stack.pop()
        if isinstance(layer, ImageNetPreprocessing):
            return True
        stack += list(getattr(layer, "layers", ()))
    return False


def make_augment(augment, seed):
    """None, or a function `images -> images` for training batches (values 0-255)."""
    if augment in (False, None):
        return None
    if callable(augment):
        return augment
    if augment != "basic":
        raise ValueError(f"`augment` must be False, 'basic' or a callable; received "
                         f"augment={augment!r}.")
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
    ], name="basic_augmentation")


def make_pipeline(paths, labels, image_size, batch_size, *, shuffle, seed, cache, augment,
                  preprocessing):
    """tf.data: decode (parallel) -> cache -> shuffle -> batch -> augment -> preprocess ->
    prefetch. Without a cache, file names are shuffled before decoding instead."""
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
    if shuffle and not cache:  # without a cache, shuffling file names is enough and cheap
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    # Every file was fully decoded once by the scan (odd ones re-encoded as RGB PNGs), so
    # decoding here cannot fail mid-epoch unless a file changes after the scan.
    ds = ds.map(lambda p, y: (decode_resize(p, image_size), y), num_parallel_calls=autotune)
    if cache:
        ds = ds.cache("" if cache is True else os.fspath(cache))
    if shuffle and cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=autotune)
    if preprocessing != RAW:
        from keras_vggres.imagenet import preprocess_input

        ds = ds.map(lambda x, y: (preprocess_input(x, mode=preprocessing), y),
                    num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def decode_resize(path, image_size):
    """Read an RGB JPEG/PNG/BMP file; shorter side -> max(size), centre crop; float32 0-255."""
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    shape = tf.cast(tf.shape(img)[:2], tf.float64)
    crop_h, crop_w = image_size
    scale = float(max(image_size)) / tf.reduce_min(shape)
    new = tf.cast(tf.math.floor(shape * scale), tf.int32)
    new = tf.maximum(new, [crop_h, crop_w])  # guard against rounding just below the crop
    img = tf.image.resize(img, new, method="bilinear", antialias=True)
    top = tf.cast(tf.round((new[0] - crop_h) / 2), tf.int32)
    left = tf.cast(tf.round((new[1] - crop_w) / 2), tf.int32)
    img = img[top:top + crop_h, left:left + crop_w]
    img.set_shape([crop_h, crop_w, 3])
    return img


def _converted_paths(report, convert_dir):
    """Yield (original path, path to read): odd files are converted once to RGB PNGs."""
    folder = None
    for files in report.files.values():
        for f in files:
            if not f.convert:
                yield f.path, f.path
                continue
            if folder is None:
                folder = convert_dir or os.path.join(
                    tempfile.gettempdir(), "keras_vggres_rgb",
                    hashlib.sha1(report.root.encode()).hexdigest()[:12])
                os.makedirs(folder, exist_ok=True)
            yield f.path, convert_to_rgb_png(f.path, folder)


def convert_to_rgb_png(path, folder):
    """Convert `path` to an 8-bit RGB PNG in `folder` (once: keyed by path, size and mtime)."""
    from PIL import Image

    from keras_vggres.imagenet import _open_rgb

    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = os.path.join(folder, key.hexdigest()[:20] + ".png")
    if os.path.exists(target):
        return target
    img = _open_rgb(path)
    if img.mode == "F":  # 16-bit data scaled to 0-255 floats
        gray = np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
        img = Image.fromarray(gray, "L").convert("RGB")
    with replacing(target) as tmp:
        img.save(tmp, format="PNG")
    return target
