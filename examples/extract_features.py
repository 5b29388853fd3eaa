"""Pooled embeddings of a folder of images -> feats.npz (features, paths, labels).

    python examples/extract_features.py                          # the sample photos, ResNet50
    python examples/extract_features.py data/flowers --model resnet18 --weights imagenet
    python examples/extract_features.py data/flowers --out flowers_feats.npz

A thin wrapper around `keras_vggres.transfer.extract.extract_features` (also `keras-vggres
extract`).

A folder of class sub-folders gets labels (and its broken files skipped, see the hygiene scan);
a plain folder of images (like examples/images) gets label -1. Images are loaded as RGB 0-255
(resize + centre crop) and the model has its preprocessing inside. `--weights none` (the
offline-friendly default) gives random-weight features, only useful to try the pipeline.
"""

import argparse
from pathlib import Path

from keras_vggres.transfer.extract import extract_features, list_images  # noqa: F401

HERE = Path(__file__).resolve().parent


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

    features, _, _, _ = extract_features(args.folder, model=args.model, weights=args.weights,
                                         image_size=args.image_size, pooling=args.pooling,
                                         batch_size=args.batch_size, out=args.out)
    print(f"{features.shape[0]} embeddings of size {features.shape[1]} from {args.model} "
          f"(weights={args.weights}) -> {args.out}")
    return features


if __name__ == "__main__":
    main()
