"""A tiny, learnable image-folder dataset made on demand, with broken files and odd image modes.

Used by the tests, the examples and the benchmark, so no image dataset is ever committed.
Each class is a colour + shape pattern on a noisy background (red circles, blue squares, green
stripes, ...), learnable even by a randomly initialised backbone plus a trained head. With
``broken=True`` the folder also gets one file of each kind the hygiene scan must skip or flag,
and one image in each unusual mode it must convert to RGB.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

# (name, RGB colour, shape): class i uses row i % len; later rounds shift the hue.
PATTERNS = (
    ("red_circles", (220, 40, 40), "circle"),
    ("blue_squares", (40, 70, 220), "square"),
    ("green_stripes", (40, 180, 60), "stripes"),
    ("yellow_triangles", (230, 210, 40), "triangle"),
    ("magenta_crosses", (210, 50, 200), "cross"),
    ("cyan_rings", (40, 200, 210), "ring"),
)
LAYOUTS = ("flat", "split")

# Files the hygiene scan must skip: file name -> expected `FileIssue.code`.
BROKEN_FILES = {
    "broken_empty.jpg": "empty",
    "broken_truncated.jpg": "corrupt",
    "broken_text.jpg": "not_image",
    "notes.txt": "extension",
}
# Accepted with a warning: content and extension disagree (decoded by content).
WRONG_EXTENSION_FILES = ("png_named.jpg",)
# Odd modes the loader must convert to RGB: file name -> Pillow mode written.
ODD_MODE_FILES = {
    "odd_gray.jpg": "L",
    "odd_rgba.png": "RGBA",
    "odd_palette.png": "P",
    "odd_cmyk.jpg": "CMYK",
    "odd_16bit.png": "I;16",
    "odd_anim.gif": "P",
}


@dataclass(frozen=True)
class ToyDataset:
    """What `make_toy_dataset` wrote; paths in the dicts are relative to `root`."""

    root: str
    class_names: tuple
    layout: str
    good_counts: dict                                   # {split: {class: images that load}}
    broken: dict = field(default_factory=dict)          # {relpath: expected skip code}
    wrong_extension: tuple = ()                         # relpaths accepted with a warning
    odd_modes: dict = field(default_factory=dict)       # {relpath: Pillow mode}


def make_toy_dataset(out_dir, classes=3, per_class=20, size=48, broken=True, seed=0, *,
                     layout="flat", val_per_class=6, test_per_class=0, counts=None):
    """Write a learnable class-folder dataset to `out_dir` and describe it.

    Args:
        out_dir: folder to create (may exist; existing files of the same names are replaced).
        classes: number of classes (>= 2); names come from `PATTERNS`.
        per_class: images per class (training images for `layout="split"`).
        size: image side in pixels (images are square, except a few odd-mode files).
        broken: add the broken, wrong-extension and odd-mode files (spread over the classes).
        seed: NumPy seed; the same arguments always give the same files.
        layout: `"flat"` (`out_dir/<class>/...`) or `"split"` (`out_dir/train/<class>/...` and
            `out_dir/val/<class>/...`).
        val_per_class: validation images per class for `layout="split"`.
        test_per_class: test images per class for `layout="split"` (`out_dir/test/<class>/`;
            0: no test folder).
        counts: optional per-class image counts (overrides `per_class`; for imbalanced sets).

    Returns:
        A `ToyDataset`.
    """
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"`classes` must be an integer >= 2; received classes={classes!r}.")
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {LAYOUTS}; received layout={layout!r}.")
    counts = list(counts) if counts is not None else [per_class] * classes
    if len(counts) != classes or any(int(n) < 1 for n in counts):
        raise ValueError(f"`counts` must list {classes} positive counts; received {counts!r}.")
    rng = np.random.default_rng(seed)
    names = tuple(class_name(i) for i in range(classes))
    splits = {"train": counts, "val": [val_per_class] * classes} if layout == "split" else {
        "all": counts}
    if layout == "split" and test_per_class:
        splits["test"] = [test_per_class] * classes
    good = {}
    for split, split_counts in splits.items():
        base = out_dir if split == "all" else os.path.join(out_dir, split)
        good[split] = {}
        for label, (name, n) in enumerate(zip(names, split_counts)):
            folder = os.path.join(base, name)
            os.makedirs(folder, exist_ok=True)
            for k in range(int(n)):
                _pattern_image(label, size, rng).save(os.path.join(folder, f"{name}_{k:04d}.jpg"),
                                                      quality=92)
            good[split][name] = int(n)
    toy = ToyDataset(root=os.fspath(out_dir), class_names=names, layout=layout, good_counts=good)
    if broken:
        first = "all" if layout == "flat" else "train"
        toy = _add_problem_files(toy, first, size, rng)
    return toy


def class_name(label):
    """The folder name of class `label` (patterns repeat with a round suffix after six)."""
    name = PATTERNS[label % len(PATTERNS)][0]
    rounds = label // len(PATTERNS)
    return f"{name}{rounds}" if rounds else name


def _pattern_image(label, size, rng):
    """One RGB image of class `label`: its coloured shape at a random place on noise."""
    from PIL import Image, ImageDraw

    _, colour, shape = PATTERNS[label % len(PATTERNS)]
    shift = 35 * (label // len(PATTERNS))
    colour = tuple(int((c + shift * (i + 1)) % 256) for i, c in enumerate(colour))
    background = rng.integers(70, 150, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)
    jitter = np.clip(np.array(colour) + rng.integers(-25, 26, 3), 0, 255)
    fill = tuple(int(c) for c in jitter)
    r = int(size * rng.uniform(0.22, 0.36))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "stripes":
        step = max(4, size // 8)
        for y in range(int(rng.integers(0, step)), size, step):
            draw.rectangle((0, y, size, y + step // 2 - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        w = max(2, r // 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:  # ring
        draw.ellipse(box, outline=fill, width=max(2, r // 3))
    noise = rng.normal(0, 8, size=(size, size, 3))
    pixels = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _add_problem_files(toy, split, size, rng):
    """Spread broken, wrong-extension and odd-mode files round-robin over the classes."""
    base = toy.root if split == "all" else os.path.join(toy.root, split)
    names = toy.class_names
    good = {s: dict(c) for s, c in toy.good_counts.items()}
    broken, odd, wrong = {}, {}, []
    for i, (fname, code) in enumerate(BROKEN_FILES.items()):
        rel = os.path.join(os.path.relpath(base, toy.root), names[i % len(names)], fname)
        _write_broken(os.path.join(toy.root, rel), code, _pattern_image(0, size, rng))
        broken[os.path.normpath(rel)] = code
    for i, fname in enumerate(WRONG_EXTENSION_FILES):
        label = (i + 1) % len(names)
        rel = os.path.normpath(os.path.join(os.path.relpath(base, toy.root), names[label], fname))
        _pattern_image(label, size, rng).save(os.path.join(toy.root, rel), format="PNG")
        wrong.append(rel)
        good[split][names[label]] += 1
    for i, (fname, mode) in enumerate(ODD_MODE_FILES.items()):
        label = i % len(names)
        rel = os.path.normpath(os.path.join(os.path.relpath(base, toy.root), names[label], fname))
        _write_odd(os.path.join(toy.root, rel), mode, _pattern_image(label, size, rng))
        odd[rel] = mode
        good[split][names[label]] += 1
    return ToyDataset(root=toy.root, class_names=names, layout=toy.layout, good_counts=good,
                      broken=broken, wrong_extension=tuple(wrong), odd_modes=odd)


def _write_broken(path, code, img):
    if code == "empty":
        open(path, "wb").close()
    elif code == "corrupt":  # a JPEG cut off after its headers and a few scan bytes
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        data = buf.getvalue()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 3])
    elif code == "not_image":
        with open(path, "w", encoding="utf-8") as f:
            f.write("This is a text file, not a JPEG.\n")
    else:  # "extension": a plain note that happens to sit in a class folder
        with open(path, "w", encoding="utf-8") as f:
            f.write("collected from the field, batch 3\n")


def _write_odd(path, mode, img):
    from PIL import Image

    if mode == "I;16":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        Image.fromarray(gray).save(path, format="PNG")
    elif mode == "RGBA":
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(img.size))
        rgba.save(path, format="PNG")
    elif path.endswith(".gif"):  # two-frame animation: only the first frame is used
        frames = [img.convert("P", palette=Image.Palette.ADAPTIVE),
                  img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    elif mode == "P":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, format="PNG")
    else:  # "L" and "CMYK" JPEGs
        img.convert(mode).save(path, format="JPEG", quality=92)


SQUARE_COLOURS = ((220, 40, 40), (40, 90, 230))  # class 0 red, class 1 blue


def coloured_squares(count, size=64, seed=0, sides=(12, 18)):
    """Images whose class is only the colour of a square at a random place, on grey striped
    noise: the ground truth for "did the model look at the evidence" (Grad-CAM).

    Returns:
        `(images float32 (count, size, size, 3) in 0-255, labels (count,), boxes (count, 3)
        as (top, left, side))`.
    """
    rng = np.random.default_rng(seed)
    colours = np.asarray(SQUARE_COLOURS, np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((count, size, size, 3), np.float32)
    labels, boxes = rng.integers(0, len(colours), count), []
    for i in range(count):
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.1, 0.5)
        stripes = 60 * np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy)
                              + rng.uniform(0, 6))
        images[i] = np.clip(128 + stripes + rng.normal(0, 30, (size, size)), 0, 255)[..., None]
        side = int(rng.integers(sides[0], sides[1] + 1))
        top, left = rng.integers(0, size - side + 1, 2)
        colour = colours[labels[i]] + rng.normal(0, 15, 3)
        images[i, top:top + side, left:left + side] = np.clip(
            colour + rng.normal(0, 10, (side, side, 3)), 0, 255)
        boxes.append((top, left, side))
    return images, labels, np.array(boxes)
