"""Fine-tune a model on a folder of images (class sub-folders), or on a generated toy set.

    python examples/finetune_folder.py                        # toy set, ResNet18, random weights
    python examples/finetune_folder.py data/flowers --model resnet50 --weights imagenet \\
        --image-size 224 --epochs-head 5 --epochs-finetune 5 --out runs/flowers
    python examples/finetune_folder.py ... --out runs/flowers   # again: resumes or reports

Defaults are small and offline-friendly (`--weights none`: random weights, learnable toy
classes). Run again with the same `--out` to resume an interrupted run. Outputs: `model.keras`
and `saved_model/` (raw RGB 0-255 input), `metrics.csv`, `summary.json`, `hygiene.txt`,
`confusion_matrix.png`, `curves.png`.
"""

import argparse
import os
import tempfile


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", help="class folders (default: a generated toy set)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default="none", help="'none', 'imagenet', a tag or a file")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs-head", type=int, default=8)
    parser.add_argument("--epochs-finetune", type=int, default=2)
    parser.add_argument("--unfreeze", default=None, help="stage name (and later), or 'all'")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--augment", action="store_true", help="basic flip/rotate/zoom")
    parser.add_argument("--validation-split", type=float, default=0.25)
    parser.add_argument("--out", default=None, help="run folder (default runs/<model>-<time>)")
    parser.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args(argv)

    from keras_vggres.transfer.finetune import finetune

    data_dir = args.data_dir
    if data_dir is None:
        from keras_vggres.transfer.toydata import make_toy_dataset

        data_dir = os.path.join(tempfile.mkdtemp(prefix="keras_vggres_toy_"), "data")
        toy = make_toy_dataset(data_dir, classes=3, per_class=24, size=args.image_size)
        print(f"Generated a toy dataset in {data_dir}: {list(toy.class_names)}, with "
              f"{len(toy.broken)} broken files and {len(toy.odd_modes)} odd-mode images.\n")
    if args.weights.lower() == "none":
        print("NOTE: weights=None (random backbone): fine for the toy set; use --weights "
              "imagenet for real data.\n")
    result = finetune(data_dir, model=args.model, weights=args.weights,
                      image_size=args.image_size, batch_size=args.batch_size,
                      epochs_head=args.epochs_head, epochs_finetune=args.epochs_finetune,
                      unfreeze=args.unfreeze, lr=args.lr, augment="basic" if args.augment
                      else False, validation_split=args.validation_split, out_dir=args.out,
                      verbose=args.verbose)
    if not args.verbose:
        print(result)
    print("\nPer-class metrics:", result.summary["final"]["per_class"])
    return result


if __name__ == "__main__":
    main()
