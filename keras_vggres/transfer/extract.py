"""Pooled embeddings of an image folder (or a list of images) -> a `.npz` file.

`extract_features` is the library side of `keras-vggres extract` and
`examples/extract_features.py`: a folder of class sub-folders gets labels (broken files skipped
by the hygiene scan); a flat folder of images, or a list of image paths, gets label -1. Images
are loaded as RGB 0-255 (resize + centre crop) and the model has its preprocessing inside.
"""

from __future__ import annotations

import logging
import os

from keras_vggres._checks import check_choice
from pathlib import Path

__all__ = ["extract_features", "list_images", "save_features"]

logger = logging.getLogger("keras_vggres")


def list_images(source, verbose=0):
    """(paths, labels, class names) of a folder or a list of image paths.

    A folder with class sub-folders goes through the hygiene scan (labels = class indices,
    broken files skipped); a flat folder lists its image files (sorted, label -1); a list or
    tuple of paths is taken as is (label -1).
    """
    from keras_vggres.transfer.hygiene import EXTENSION_FORMATS, scan_folder

    if isinstance(source, (list, tuple)):
        paths = [os.fspath(p) for p in source]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"Image file(s) not found: {missing[:5]}.")
        return paths, [-1] * len(paths), []
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"`source` {os.fspath(source)!r} is not a folder (nor a list "
                                "of image paths).")
    subdirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs:
        report = scan_folder(folder, verbose=verbose)
        logger.info("extract_features: %s", report)
        files = [f for split in report.files.values() for f in split]
        return [f.path for f in files], [f.label for f in files], list(report.class_names)
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in EXTENSION_FORMATS)
    return paths, [-1] * len(paths), []


def save_features(out, features, paths, labels, class_names):
    """Write the `.npz` atomically (a temporary file, then a rename); return `out`."""
    import numpy as np

    from keras_vggres._atomic import replacing

    out = os.fspath(out)
    with replacing(out) as tmp, open(tmp, "xb") as f:  # a file object: no ".npz" appended
        np.savez(f, features=features, paths=np.array(paths), labels=np.array(labels),
                 class_names=np.array(class_names))
    return out


def extract_features(source, *, model="resnet50", weights="imagenet", image_size=224,
                     pooling="avg", batch_size=16, out="feats.npz", strategy=None,
                     verbose="auto"):
    """Pooled embeddings of images through a no-top registered model, saved to `out`.

    Args:
        source: a folder (class sub-folders -> labels via the hygiene scan; or a flat folder
            of images) or a list of image paths.
        model: a registered model name.
        weights: "imagenet" (the default, as in the builders and the CLI), a weights tag, a
            weights file, or None / "none" (random).
        image_size: square load and input size.
        pooling: "avg" or "max".
        batch_size: images per forward pass.
        out: the `.npz` file (`features`, `paths`, `labels`, `class_names`), written
            atomically; None: nothing written.
        strategy: None, a kind for `keras_vggres.distribute.strategy` or a
            `tf.distribute.Strategy`; when given, the model is built inside its scope.
        verbose: progress of the scan and the embedding pass: "auto" (a bar in a terminal
            or notebook), 0, 1 or 2.

    Images are loaded with the weights' own eval transform (e.g. 256 -> 224, or 232 -> 224
    for torchvision's V2 ResNet50), scaled to `image_size`.

    Returns:
        `(features, paths, labels, class_names)`: float32 (N, D), list of str, list of int
        (-1 without classes), list of class names.
    """
    import keras_vggres
    from keras_vggres.transfer.embeddings import embed

    check_choice("pooling", pooling, ("avg", "max"))
    active = None
    if strategy is not None:
        from keras_vggres import distribute

        active = distribute.strategy(strategy)
    paths, labels, class_names = list_images(source, verbose=verbose)
    if not paths:
        raise ValueError(f"No images in {source!r}.")
    weights = None if weights is None or str(weights).lower() == "none" else weights
    kwargs = dict(include_top=False, weights=weights, input_shape=(image_size, image_size, 3),
                  include_preprocessing=True)
    if active is None:
        backbone = keras_vggres.get_model(model, **kwargs)
    else:
        from keras_vggres import distribute

        backbone = distribute.build_in_scope(active, keras_vggres.get_model, model, **kwargs)
    features = embed(backbone, paths, batch_size=batch_size, pooling=pooling,
                     image_size=image_size, verbose=verbose)
    if out is not None:
        save_features(out, features, paths, labels, class_names)
    return features, paths, labels, class_names
