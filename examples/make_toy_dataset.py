"""Write a small, learnable image-folder dataset (with broken files and odd image modes).

    python examples/make_toy_dataset.py data/toy                  # 3 classes x 20 images, 48 px
    python examples/make_toy_dataset.py data/toy --classes 4 --per-class 50 --size 64
    python examples/make_toy_dataset.py data/toy --layout split   # train/ and val/ folders
    python examples/make_toy_dataset.py data/toy --no-broken      # clean images only

The generator lives in `keras_vggres.transfer.toydata.make_toy_dataset` (the tests and the
benchmark use it too); no image dataset is committed to the repository.
"""

import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("flat", "split"), default="flat")
    parser.add_argument("--no-broken", dest="broken", action="store_false",
                        help="leave out the broken / odd-mode files")
    args = parser.parse_args(argv)

    from keras_vggres.transfer.toydata import make_toy_dataset

    toy = make_toy_dataset(args.out_dir, classes=args.classes, per_class=args.per_class,
                           size=args.size, broken=args.broken, seed=args.seed,
                           layout=args.layout)
    print(f"Wrote {toy.root}: classes {list(toy.class_names)}, loadable images {toy.good_counts}")
    for rel, code in toy.broken.items():
        print(f"  broken ({code}): {rel}")
    for rel in toy.wrong_extension:
        print(f"  wrong extension (kept, warned): {rel}")
    for rel, mode in toy.odd_modes.items():
        print(f"  odd mode {mode}: {rel}")
    return toy


if __name__ == "__main__":
    main()
