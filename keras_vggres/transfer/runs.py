"""Predict with a fine-tuned run's own class names: `load_run(out_dir or model.keras)`.

A run folder written by `finetune` holds `run.json` (class names, weights record, image size)
and `model.keras` (which carries the same record inside), so either one is enough to classify
new images the way the run saw its training images: the weights' own eval transform at the
run's image size, raw RGB 0-255 into the model (its preprocessing is inside).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from keras_vggres._checks import check_int
from keras_vggres._progress import Progress
from keras_vggres.transfer.hygiene import EXTENSION_FORMATS
from keras_vggres.transfer.layout import MODEL_FILE, RUN_FILE, STATE_FILE

IMAGE_SUFFIXES = tuple(EXTENSION_FORMATS)


@dataclass
class Run:
    """A loaded classifier with its class names and weights record (`WeightsInfo`)."""

    model: object
    class_names: tuple | None
    info: object
    path: str

    def predict(self, images, top=5, *, batch_size=32, verbose="auto"):
        """`[(class name, probability), ...]` (best first, `top` of them) per image.

        Args:
            images: an image path, a folder (its images, recursively, sorted), a list of
                paths/folders, or an array (N, H, W, 3) of raw RGB 0-255.
            top: how many classes per image (>= 1; capped at the number of classes).
            batch_size: images loaded and run at a time (memory stays bounded).
            verbose: progress bar: "auto" (terminal or notebook), 0, 1 or 2.
        """
        check_int("top", top, low=1)
        if not self.class_names:
            raise ValueError(f"{self.path!r} carries no class names to predict with; use "
                             "`run.model.predict` for the raw outputs.")
        probabilities = self.predict_proba(images, batch_size=batch_size, verbose=verbose)
        return [self.decode(row, top) for row in probabilities]

    def predict_proba(self, images, *, batch_size=32, verbose="auto"):
        """Class probabilities (N, classes), rows in the order of `image_paths(images)`;
        an unreadable image is an error (see `predict_files` to skip and report those)."""
        check_int("batch_size", batch_size, low=1)
        if isinstance(images, np.ndarray):
            return np.asarray(self.model.predict(images.astype(np.float32, copy=False),
                                                 batch_size=batch_size, verbose=0))
        return self._predict_paths(image_paths(images), batch_size, verbose, skip=False)[1]

    def predict_files(self, images, *, batch_size=32, verbose="auto"):
        """`(paths, probabilities, skipped)` for image files and folders: files that cannot be
        decoded (truncated, not an image, too large) are left out and listed in `skipped` as
        `(path, reason)`, as `finetune`'s scan skips them in a training folder."""
        check_int("batch_size", batch_size, low=1)
        return self._predict_paths(image_paths(images), batch_size, verbose, skip=True)

    def _predict_paths(self, paths, batch_size, verbose, *, skip):
        kept, rows, skipped = [], [], []
        with Progress("Predicting", len(paths), verbose=verbose, unit="images") as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                batch, readable, bad = self._load(chunk, skip)
                skipped += bad
                if readable:
                    kept += readable
                    rows.append(np.asarray(self.model.predict_on_batch(batch)))
                bar.update(start + len(chunk))
        if not rows:
            raise ValueError(f"None of the {len(paths)} images could be read (first: "
                             f"{skipped[0][0]!r}: {skipped[0][1]}).")
        return kept, np.concatenate(rows), skipped

    def _load(self, paths, skip):
        """(batch, readable paths, [(path, reason)]): one by one only once a batch fails."""
        from keras_vggres.images import load_images

        try:
            return load_images(paths, model=self.model), list(paths), []
        except (ValueError, OSError):  # not an image, truncated, too large, gone, dangling
            if not skip:
                raise
        arrays, readable, bad = [], [], []
        for path in paths:
            try:
                arrays.append(load_images([path], model=self.model))
                readable.append(path)
            except (ValueError, OSError) as err:
                bad.append((path, str(err)))
        return (np.concatenate(arrays) if arrays else None), readable, bad

    def decode(self, probabilities, top=5):
        """`[(class name, probability), ...]` for one row of probabilities, best first."""
        order = np.argsort(probabilities)[::-1][:top]
        return [(self.class_names[i], float(probabilities[i])) for i in order]


def load_run(path, *, require_class_names=True):
    """Load a fine-tuned model with its class names: a `finetune` run folder or a `.keras`
    file written by keras_vggres (`finetune`, `keras_vggres.export`, `saving.save_model`).

    Args:
        require_class_names: when False, a model that carries no class names (a builder's or
            an unnamed `classifier()` saved by keras_vggres) loads with `class_names=None`,
            for uses that need no names (export, Grad-CAM); `.predict` then refuses.

    Returns:
        A `Run`: `.model`, `.class_names`, `.info` and `.predict(images, top=k)`.
    """
    from keras_vggres.saving import load_model, read_info

    path = os.fspath(path)
    if os.path.isdir(path):
        run_file, model_file = os.path.join(path, RUN_FILE), os.path.join(path, MODEL_FILE)
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"{path!r} is not a finished run folder: it has no "
                                    f"{MODEL_FILE} (is the run still going, or did it fail?).")
        names = _run_class_names(run_file) if os.path.isfile(run_file) else None
    elif os.path.isfile(path):
        model_file, names = path, None
    else:
        raise FileNotFoundError(f"No run folder or model file at {path!r}.")
    model = load_model(model_file)
    info = read_info(model_file)
    names = names or (info.class_names if info is not None else None) or (
        _names_of_its_run(model_file) if model_file == path else None)
    if not names and require_class_names:
        raise ValueError(f"{model_file!r} carries no class names (finetune writes them, "
                         "keras_vggres.export when given class_names); load it with "
                         "keras.models.load_model and map the outputs yourself.")
    outputs = int(model.outputs[0].shape[-1])
    if names and len(names) != outputs:
        raise ValueError(f"{path!r}: {len(names)} class names for a model with {outputs} "
                         "outputs.")
    from keras_vggres.weights.info import weights_info

    return Run(model=model, class_names=tuple(names) if names else None,
               info=weights_info(model), path=path)


def _names_of_its_run(model_file):
    """A file of a run folder with no names inside (best.keras, a checkpoint) takes its run's,
    if the folder is a run (its state file is there) and run.json reads; else None."""
    folder = os.path.dirname(os.path.realpath(model_file))
    if not os.path.isfile(os.path.join(folder, STATE_FILE)):
        return None
    try:
        return _run_class_names(os.path.join(folder, RUN_FILE))
    except ValueError:
        return None


def _run_class_names(run_file):
    try:
        with open(run_file, encoding="utf-8") as f:
            names = json.load(f)["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("class_names is not a list of strings")
        return tuple(names)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run_file!r} does not hold the run's class names ({err!r}); was it "
                         "written by keras_vggres' finetune?") from None


def image_paths(images):
    """Expand a path, a folder (recursively, sorted) or a list of them into image paths."""
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not items:
        raise ValueError("`images` is empty: give image files, folders or an array.")
    paths = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = [os.path.join(d, f) for d, _, files in sorted(os.walk(item))
                     for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)
                     and not f.startswith(".")]
            if not found:
                raise ValueError(f"Folder {item!r} holds no images ({IMAGE_SUFFIXES}).")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"No image file or folder at {item!r}.")
    return paths
