"""Pooled embeddings of a folder of images -> feats.npz (features, paths, labels).

    python examples/extract_features.py                          # the sample photos, ResNet50
    python examples/extract_features.py data/flowers --model resnet18 --weights imagenet
    python examples/extract_features.py data/flowers --out flowers_feats.npz

A thin wrapper around `keras_vggres.transfer.extract.extract_features` (also `keras-vggres
extract`).

A folder of class sub-folders gets labels (and its broken files skipped, see the hygiene scan);
a plain folder of images (like examples/images) gets label -1. Images are loaded as RGB 0-255
with the weights' own eval transform and the model has its preprocessing inside. The default
weights are the model's ImageNet weights; when they cannot be had (offline, nothing cached) the
script says so and goes on with random weights, whose features only exercise the pipeline.
"""

import argparse
from pathlib import Path

from keras_vggres.transfer.extract import extract_features, list_images  # noqa: F401

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(HERE / "images"))
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a tag, a file or 'none'")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pooling", choices=("avg", "max"), default="avg")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="feats.npz")
    args = parser.parse_args(argv)

    from keras_vggres.weights.download import DownloadError, WeightsUnavailableError

    weights = None if args.weights.lower() == "none" else args.weights
    kwargs = dict(model=args.model, image_size=args.image_size, pooling=args.pooling,
                  batch_size=args.batch_size, out=args.out)
    try:
        features, *_ = extract_features(args.folder, weights=weights, **kwargs)
    except (WeightsUnavailableError, DownloadError) as error:
        print(f"Pretrained weights are not available here:\n  {error}\nNOTE: going on with "
              "weights=None: these features are RANDOM (they only exercise the pipeline).\n")
        weights = None
        features, *_ = extract_features(args.folder, weights=None, **kwargs)
    print(f"{features.shape[0]} embeddings of size {features.shape[1]} from {args.model} "
          f"(weights={weights}) -> {args.out}")
    return features


if __name__ == "__main__":
    main()
