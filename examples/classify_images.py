"""Classify the sample photos: build a model, load -> preprocess -> predict -> decode, print top-5.

    python examples/classify_images.py                      # ResNet50, Keras' ImageNet weights
    python examples/classify_images.py --model resnet18     # torchvision weights
    python examples/classify_images.py --weights none       # offline: random weights

Pretrained weights are downloaded once into ~/.keras/models (or KERAS_VGGRES_HOME / a mirror).
Without a network and without cached weights, the script says so and runs with random weights.
"""

import argparse
import csv
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"


def build(model_name, weights):
    """The model with pretrained weights if they can be had, else random weights (said loudly)."""
    import keras_vggres
    from keras_vggres.weights.download import DownloadError, WeightsUnavailableError

    if weights is not None:
        try:
            return keras_vggres.get_model(model_name, weights=weights), weights
        except (WeightsUnavailableError, DownloadError) as error:
            print(f"Pretrained weights are not available here:\n  {error}\n")
    print("NOTE: running with weights=None. Predictions below are RANDOM until pretrained "
          "weights are available (connect to the internet once, or see README: offline use).\n")
    return keras_vggres.get_model(model_name, weights=None), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="imagenet", help="a tag, a file, or 'none'")
    parser.add_argument("images", nargs="*", help="image files (default: examples/images)")
    args = parser.parse_args()

    import keras_vggres

    weights = None if args.weights.lower() == "none" else args.weights
    model, weights = build(args.model, weights)
    labels = {}
    if not args.images and (IMAGES / "labels.csv").exists():
        with open(IMAGES / "labels.csv") as f:
            labels = {row["filename"]: row["name"] for row in csv.DictReader(f)}
    paths = args.images or sorted(str(p) for p in IMAGES.glob("*.jpg"))

    # The same steps as keras.applications: load, preprocess, predict, decode. The model knows
    # its weights, so loading (eval transform) and preprocessing follow them: nothing to match.
    batch = keras_vggres.load_images(paths, model=model)
    preprocess = keras_vggres.get_preprocessing(model)
    predictions = model.predict(preprocess(batch), verbose=0)
    for path, top5 in zip(paths, keras_vggres.decode_predictions(predictions, top=5)):
        truth = labels.get(Path(path).name)
        print(f"{Path(path).name}" + (f"  (true: {truth})" if truth else ""))
        for wnid, name, score in top5:
            print(f"    {score:6.3f}  {name}")


if __name__ == "__main__":
    main()
