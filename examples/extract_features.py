"""Pooled embeddings of a folder of images -> feats.npz (features, paths, labels).

    python examples/extract_features.py                          # the sample photos, ResNet50
    python examples/extract_features.py data/flowers --model resnet18 --weights imagenet
    python examples/extract_features.py data/flowers --out flowers_feats.npz

A folder of class sub-folders gets labels (and its broken files skipped, see the hygiene scan);
a plain folder of images (like examples/images) gets label -1. Images are loaded as RGB 0-255
(resize + centre crop) and the model has its preprocessing inside. `--weights none` (the
offline-friendly default) gives random-weight features, only useful to try the pipeline.
"""

import argparse
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def list_images(folder):
    """(paths, labels, class names): class folders via the hygiene scan, else the images."""
    from keras_vggres.transfer.hygiene import EXTENSION_FORMATS, scan_folder

    subdirs = [d for d in Path(folder).iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs:
        report = scan_folder(folder)
        print(report)
        files = [f for split in report.files.values() for f in split]
        return [f.path for f in files], [f.label for f in files], list(report.class_names)
    paths = sorted(str(p) for p in Path(folder).iterdir()
                   if p.suffix.lower() in EXTENSION_FORMATS)
    return paths, [-1] * len(paths), []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(HERE / "images"))
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="none", help="'none', 'imagenet', a tag or a file")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pooling", choices=("avg", "max"), default="avg")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="feats.npz")
    args = parser.parse_args(argv)

    import numpy as np

    import keras_vggres
    from keras_vggres.transfer import embed

    paths, labels, class_names = list_images(args.folder)
    if not paths:
        raise SystemExit(f"No images in {args.folder!r}.")
    weights = None if args.weights.lower() == "none" else args.weights
    model = keras_vggres.get_model(args.model, include_top=False, weights=weights,
                                   input_shape=(args.image_size, args.image_size, 3),
                                   include_preprocessing=True)
    features = embed(model, paths, batch_size=args.batch_size, pooling=args.pooling,
                     image_size=args.image_size, verbose=0)
    tmp = f"{args.out}.tmp.npz"
    np.savez(tmp, features=features, paths=np.array(paths), labels=np.array(labels),
             class_names=np.array(class_names))
    os.replace(tmp, args.out)
    print(f"{features.shape[0]} embeddings of size {features.shape[1]} from {args.model} "
          f"(weights={weights}) -> {args.out}")
    return features


if __name__ == "__main__":
    main()
