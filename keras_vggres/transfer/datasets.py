"""Image-folder datasets for transfer learning: splits, class weights, streaming tf.data pipelines.

`from_folder(data_dir)` scans the folder (`keras_vggres.transfer.hygiene.scan_folder`: broken
files are skipped and listed with reasons), splits it, and builds `tf.data` pipelines that
stream from disk: shuffle the file names, decode in parallel, batch, prefetch. Decoding is the
very function `keras_vggres.load_images` uses (Pillow: EXIF orientation, odd modes to RGB,
resize of the shorter side + centre crop, size limits), run through `tf.numpy_function`, so
training, evaluation and inference see the same pixels, and no converted copy of any file is
ever written. Memory does not grow with the dataset unless a cache is asked for
(`cache="memory"` or `"disk"`).

Pixel values: by default the pipelines yield raw RGB in 0-255 (float32), meant for models built
with `include_preprocessing=True`, as `finetune` does; pass `preprocessing=<mode>`, or a model
name (+ `weights` tag) whose preprocessing should be applied in the pipeline instead.

The pipelines are TensorFlow programs: on another Keras backend `from_folder`, `from_scan` and
`decode_resize` raise a RuntimeError saying so (`keras_vggres._backend.require_tensorflow`);
`keras_vggres.load_images` decodes the same pixels into NumPy arrays on every backend.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from keras_vggres._backend import require_tensorflow
from keras_vggres._checks import check_choice, check_int, check_number
from keras_vggres.transfer.augment import make_augment
from keras_vggres.transfer.hygiene import ScanReport, scan_folder

RAW = "raw"
SPLITS = ("train", "val", "test")
CACHE_CHOICES = (None, False, True, "memory", "disk")
ERROR_MARK = "keras_vggres image error"
_INSTEAD = ("On this backend, load images as NumPy arrays with keras_vggres.load_images (the same "
            "decoding) and pass them to model.fit / predict.")


def _require_tf_data(feature):
    return require_tensorflow(f"{feature} (tf.data pipelines)", instead=_INSTEAD)


class ImageDataError(ValueError):
    """An image file failed while a pipeline read it (e.g. deleted after the scan)."""


@dataclass
class FolderData:
    """Train, validation and test pipelines of an image folder, and what rebuilds them.

    `train` yields shuffled (and augmented, if asked) batches of `(images, labels)`; `val` and
    `test` are `None` without such data. Labels are int32 class indices into `class_names`.
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
    files: dict = field(default_factory=dict)       # {split: (paths, labels)}
    options: dict = field(default_factory=dict)     # seed / augment / cache used by `make`
    test: object = None

    def count(self, split):
        return len(self.files.get(split, ((), ()))[0])

    def steps(self, split="train"):
        """Batches per epoch of `split`."""
        return -(-self.count(split) // self.batch_size)

    def labels(self, split):
        return np.asarray(self.files[split][1], dtype=np.int32)

    def make(self, split, *, shuffle=False, augment=False, cache=None, batch_size=None):
        """A new pipeline over the files of `split` with this data's size and preprocessing
        (and batch size, unless `batch_size` is given)."""
        paths, labels = self.files[split]
        return make_pipeline(paths, labels, self.image_size, batch_size or self.batch_size,
                             shuffle=shuffle, seed=self.options.get("seed"), cache=cache,
                             augment=self.options.get("augment") if augment else None,
                             preprocessing=self.preprocessing,
                             transform=self.options.get("transform"))


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
                weights=None, model=None, preprocessing=None, augment=False, cache=None,
                shuffle=True, transform=None, verbose=0):
    """Scan `data_dir` and build its training (and validation / test) pipelines.

    Args:
        data_dir: `root/<class>/*.jpg`, or `root/train/<class>/...` + `root/val/<class>/...`
            (+ `root/test/<class>/...`, evaluated by `finetune` once at the end).
        image_size: int or (height, width): shorter side resized to its max, then centre crop.
        batch_size: images per batch.
        validation_split: fraction of each class held out for validation (stratified, fixed by
            `seed`), for the one-folder layout only; None: no validation set (or the `val/`
            folder of a train/val layout).
        seed: seed of the split, the shuffling and the augmentation.
        weights: a weights tag of `model` (its preprocessing mode is applied), or None.
        model: a model name (with `weights`, selects the preprocessing mode), a `keras.Model`
            (raw pixels if it preprocesses inside), or None.
        preprocessing: None (decided by `model`/`weights`; raw 0-255 without them), `"raw"`,
            or a mode of `keras_vggres.transforms.PREPROCESS_MODES`.
        augment: see `keras_vggres.transfer.augment.AUGMENTATIONS`: False, "flip", "basic",
            "random_resized_crop", or a callable applied to each training batch (0-255).
        cache: None / False (default: stream from disk every epoch, memory independent of the
            dataset size), "memory" (or True: decoded images kept in RAM after the first
            epoch), "disk" (a private temporary folder, removed at exit), or a file path prefix
            in an existing folder (tf.data reuses a complete cache found there: give each
            dataset its own prefix).
        shuffle: reshuffle the training set every epoch.
        transform: a `keras_vggres.transforms.Transform` to decode with (default: shorter side
            resized to the crop size, as before; `finetune` passes the weights' own ratio).
        verbose: 1 shows the scan's progress.

    Returns:
        A `FolderData`.
    """
    _require_tf_data("keras_vggres.transfer.from_folder()")
    return from_scan(scan_folder(data_dir, verbose=verbose), image_size=image_size,
                     batch_size=batch_size, validation_split=validation_split, seed=seed,
                     weights=weights, model=model, preprocessing=preprocessing, augment=augment,
                     cache=cache, shuffle=shuffle, transform=transform)


def from_scan(report, *, image_size=224, batch_size=32, validation_split=None, seed=1337,
              weights=None, model=None, preprocessing=None, augment=False, cache=None,
              shuffle=True, transform=None):
    """`from_folder` for an existing `ScanReport` (no second scan)."""
    from keras_vggres.images import check_size

    _require_tf_data("keras_vggres.transfer.from_scan()")
    size = check_size("image_size", image_size)
    check_int("batch_size", batch_size, low=1)
    _check_cache(cache)
    mode = resolve_preprocessing(model=model, weights=weights, preprocessing=preprocessing)
    augment_fn = make_augment(augment, seed)
    splits = split_files(report, validation_split, seed)
    files = {s: ([f.path for f in fs], [f.label for f in fs]) for s, fs in splits.items()}
    counts = np.bincount(files["train"][1], minlength=len(report.class_names))
    data = FolderData(train=None, val=None, class_names=report.class_names,
                      class_weights=compute_class_weights([int(n) for n in counts]),
                      report=report, image_size=size, batch_size=batch_size, preprocessing=mode,
                      files=files, options={"seed": seed, "augment": augment_fn,
                                            "transform": transform})
    data.train = data.make("train", shuffle=shuffle, augment=augment_fn is not None,
                           cache=_split_cache(cache, "train"))
    if "val" in files:
        data.val = data.make("val", cache=_split_cache(cache, "val"))
    if "test" in files:
        data.test = data.make("test")
    return data


def _check_cache(cache):
    """None/False, True/"memory", "disk", or a path prefix in an existing folder (a path with
    a folder part, or an os.PathLike), so that a typo ("Memory") is not taken for a prefix."""
    if cache is None or isinstance(cache, bool) or cache in ("memory", "disk"):
        return
    path = os.fspath(cache) if isinstance(cache, (str, os.PathLike)) else None
    folder = os.path.dirname(path) if path else ""
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"`cache` must be one of {CACHE_CHOICES} or a file path prefix in an "
                         f"existing folder (e.g. 'cache/flowers'); received cache={cache!r}.")


def _split_cache(cache, split):
    """The `cache` argument of one split's pipeline (a path prefix gets the split's name)."""
    if cache in (None, False):
        return None
    if cache in (True, "memory"):
        return "memory"
    if cache == "disk":
        return os.path.join(_private_cache_folder(), split)
    return f"{os.fspath(cache)}-{split}"


def _private_cache_folder():
    """A private temporary folder for `cache="disk"`, removed when the process exits."""
    import atexit
    import shutil

    folder = tempfile.mkdtemp(prefix="keras_vggres_cache_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def split_files(report, validation_split, seed):
    """{"train": [ImageFile], "val": [...], "test": [...]}: the split folders, or a stratified
    split of one folder of classes (a `test/` folder is never split, only passed on)."""
    if validation_split is not None:
        check_number("validation_split", validation_split, low=0, high=1, low_open=True,
                     high_open=True)
    test = {"test": list(report.files["test"])} if report.files.get("test") else {}
    if report.layout == "train/val":
        if validation_split is not None and "val" in report.files:
            raise ValueError(f"{report.root!r} already has a train/val layout; pass "
                             f"validation_split=None (received {validation_split!r}).")
        if validation_split is None:
            return {s: list(fs) for s, fs in report.files.items() if fs or s == "train"}
    files = report.files.get("all") or report.files["train"]
    if validation_split is None:
        return {"train": list(files), **test}
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(len(report.class_names)):
        members = sorted((f for f in files if f.label == label), key=lambda f: f.path)
        order = rng.permutation(len(members))
        n_val = min(max(int(round(len(members) * validation_split)), 1), len(members) - 1)
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return {"train": train, "val": val, **test}


def resolve_preprocessing(*, model=None, weights=None, preprocessing=None):
    """The pipeline's preprocessing: a mode name, or "raw" (pixels stay 0-255)."""
    from keras_vggres.transforms import PREPROCESS_MODES

    if preprocessing is not None:
        check_choice("preprocessing", preprocessing, (None, RAW) + tuple(PREPROCESS_MODES))
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
    raise ValueError(f"Model {getattr(model, 'name', model)!r} has no ImageNetPreprocessing layer"
                     " (nor the builders' `preprocessing` layer of include_preprocessing=True); "
                     f"pass preprocessing= one of {(RAW,) + tuple(PREPROCESS_MODES)}.")


def has_preprocessing_layer(model):
    """Whether `model` (or a nested model) preprocesses its raw RGB 0-255 input itself."""
    from keras_vggres.preprocessing import preprocessing_layer

    return preprocessing_layer(model) is not None


def make_pipeline(paths, labels, image_size, batch_size, *, shuffle, seed, cache, augment,
                  preprocessing, transform=None):
    """tf.data: shuffle names -> decode (parallel, Pillow) -> [cache] -> batch -> [augment] ->
    [preprocess] -> prefetch. With a cache, the shuffle moves after it (decoded images)."""
    tf = _require_tf_data("keras_vggres.transfer.datasets.make_pipeline()")

    from keras_vggres.transfer.augment import DecodeTimeAugment

    autotune = tf.data.AUTOTUNE
    per_image = augment if isinstance(augment, DecodeTimeAugment) else None
    batch_augment = None if per_image is not None else augment
    if per_image is not None:
        cache = None  # a cache would freeze the random crops of the first epoch
    ds = tf.data.Dataset.from_tensor_slices(
        ([os.fsencode(os.fspath(p)) for p in paths], np.asarray(labels, np.int32)))
    if shuffle and not cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    decode = decoder(image_size, transform, per_image)
    if per_image is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda item, s: (decode(item[0], s), item[1]), num_parallel_calls=autotune)
    else:
        ds = ds.map(lambda p, y: (decode(p), y), num_parallel_calls=autotune)
    if cache:
        ds = ds.cache("" if cache == "memory" else os.fspath(cache))
    if shuffle and cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if batch_augment is not None:
        ds = ds.map(lambda x, y: (batch_augment(x), y), num_parallel_calls=autotune)
    if preprocessing != RAW:
        from keras_vggres.preprocessing import preprocess_input

        ds = ds.map(lambda x, y: (preprocess_input(x, mode=preprocessing), y),
                    num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def decoder(image_size, transform=None, augment=None):
    """A TensorFlow function `path (bytes) [, seed] -> float32 (h, w, 3)` that runs
    `keras_vggres.images.load_image` (or the decode-time augmentation) on the host."""
    tf = _require_tf_data("keras_vggres.transfer.datasets.decoder()")

    from keras_vggres.images import load_image
    from keras_vggres.transforms import Transform

    crop_h, crop_w = image_size
    transform = transform or Transform(max(image_size), tuple(image_size))

    def load(path):
        with _marked_errors():
            return load_image(_host_path(path), transform)

    def load_augmented(path, seed):
        with _marked_errors():
            return augment.load(_host_path(path), transform, int(seed))

    def decode(path, seed=None):
        if augment is None:
            img = tf.numpy_function(load, [path], tf.float32, stateful=False)
        else:
            img = tf.numpy_function(load_augmented, [path, seed], tf.float32, stateful=False)
        img.set_shape([crop_h, crop_w, 3])
        return img

    return decode


@contextmanager
def _marked_errors():
    """Inside tf.data: tag our errors so `data_errors` can find their message again."""
    try:
        yield
    except (OSError, ValueError) as err:
        raise ValueError(f"{ERROR_MARK}: {err}") from None


@contextmanager
def data_errors():
    """Turn a pipeline's failure on an image file (TensorFlow wraps it in a long op error)
    into one `ImageDataError` naming the file and the problem."""
    try:
        yield
    except Exception as err:  # only TensorFlow op errors carrying our mark are rewritten
        tf = sys.modules.get("tensorflow")
        found = re.search(re.escape(ERROR_MARK) + r": ([^\n]*)", str(err))
        if tf is None or not isinstance(err, tf.errors.OpError) or found is None:
            raise
        raise ImageDataError(f"An image failed while it was read for training: "
                             f"{found.group(1)} (did the folder change after the scan? Run "
                             "again: the scan skips files that no longer load).") from None


def _host_path(value):
    """The file name a numpy_function receives (bytes, maybe in a 0-d array) as a str."""
    return os.fsdecode(value.item() if isinstance(value, np.ndarray) else value)


def decode_resize(path, image_size, transform=None):
    """One file -> float32 (h, w, 3) tensor, exactly as the pipelines decode it."""
    return decoder(tuple(image_size), transform)(os.fsencode(os.fspath(path)))
