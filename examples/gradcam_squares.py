"""Grad-CAM on a task with a known answer: the class is the colour of a square at a random place.

Trains VGG11 with a new head on generated images (a few minutes on a 2-core CPU), then draws
Grad-CAM overlays of held-out images with the square outlined, and reports how often the
heatmap's peak falls on the square. Writes docs/gradcam.png (the README's picture).

    python examples/gradcam_squares.py [--out docs/gradcam.png]
"""

import argparse
from pathlib import Path

import numpy as np

SIZE = 64


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"
                                             / "gradcam.png"))
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)

    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    import keras_vggres
    from keras_vggres import viz
    from keras_vggres.transfer import classifier
    from keras_vggres.transfer.toydata import coloured_squares

    keras.utils.set_random_seed(0)
    x, y, _ = coloured_squares(768, size=SIZE, seed=1)
    backbone = keras_vggres.VGG11(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3),
                                  include_preprocessing="tf")
    model = classifier(backbone, 2, dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-4), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=2)

    held_out, labels, boxes = coloured_squares(100, size=SIZE, seed=2)
    result = viz.GradCAM(model, layer="block3").explain(held_out)
    peaks = [np.unravel_index(np.argmax(h), h.shape) for h in result.heatmaps]
    on_square = [t <= py < t + s and le <= px < le + s for (py, px), (t, le, s) in
                 zip(peaks, boxes)]
    accuracy = float(np.mean(result.classes == labels))
    print(f"held-out accuracy {accuracy:.2f}; heatmap peak on the square in "
          f"{np.mean(on_square):.0%} of {len(labels)} images")

    names = ("red", "blue")
    fig, axes = plt.subplots(2, 6, figsize=(12, 4.4))
    for column, i in enumerate(range(6)):
        top, left, side = boxes[i]
        for row, image in enumerate((held_out[i].astype("uint8"),
                                     viz.overlay(held_out[i], result.heatmaps[i]))):
            ax = axes[row, column]
            ax.imshow(image)
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False,
                                   edgecolor="white", linewidth=1.2))
            ax.axis("off")
        axes[0, column].set_title(f"true {names[labels[i]]}, said {names[result.classes[i]]}",
                                  fontsize=9)
    fig.suptitle("Grad-CAM (VGG11, block3): the heatmap finds the square that decides the class")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    viz.save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
