"""Hygiene scan of an image folder: which files load, which are skipped (and why), class counts.

The scan reads every candidate file once with Pillow (a full decode, so truncated files are
caught here and never crash an epoch later). Skipped: zero-byte files, files Pillow cannot
identify, truncated or corrupt image data, unsupported extensions and pixel modes. Accepted with
a warning: content that disagrees with its extension (a PNG named `.jpg`), which is decoded by
content. Accepted and converted to RGB once before training: grayscale-with-alpha, RGBA,
palette, CMYK, 16-bit, GIF, TIFF/WebP and EXIF-rotated images (see `ImageFile.convert`).

Layouts, like `keras.utils.image_dataset_from_directory`: `root/<class>/**/<image>` (class names =
sorted sub-folder names), or `root/train/<class>/...` with `root/val/<class>/...` (or
`validation/`). Folders whose names start with "." are ignored.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

# Extension -> the Pillow formats its content may have without a warning.
EXTENSION_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".gif": ("GIF",),
    ".bmp": ("BMP",), ".webp": ("WEBP",), ".tif": ("TIFF",), ".tiff": ("TIFF",),
}
# Formats and modes `tf.io.decode_image(channels=3)` reads exactly as Pillow does; anything else
# is converted to an RGB PNG once, by `keras_vggres.imagenet`'s RGB conversion rules.
NATIVE_MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "L"), "BMP": ("RGB",)}
SKIP_CODES = {
    "empty": "zero-byte file",
    "not_image": "not an image file (Pillow cannot identify it)",
    "corrupt": "truncated or corrupt image data",
    "extension": "unsupported file extension",
    "mode": "unsupported pixel mode",
}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation")}
IGNORED_SPLIT_DIRS = ("test",)
ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class FileIssue:
    """A skipped file (`code` from `SKIP_CODES`) or a warning (`code="warning"`)."""

    path: str      # relative to the scanned root
    code: str
    reason: str


@dataclass(frozen=True)
class ImageFile:
    """A file that loads: absolute path, class index, and why it needs conversion (or None)."""

    path: str
    label: int
    convert: str | None = None


@dataclass
class ScanReport:
    """Result of `scan_folder`: good files per split, skipped files and warnings, with reasons.

    `files` has the splits `"all"` (one folder of classes) or `"train"` and optionally `"val"`.
    """

    root: str
    layout: str                      # "classes" or "train/val"
    class_names: tuple
    files: dict                      # {split: [ImageFile]}
    skipped: list = field(default_factory=list)    # [FileIssue]
    warnings: list = field(default_factory=list)   # [FileIssue]

    @property
    def counts(self):
        """{split: {class name: number of good files}}."""
        out = {}
        for split, files in self.files.items():
            per = [0] * len(self.class_names)
            for f in files:
                per[f.label] += 1
            out[split] = dict(zip(self.class_names, per))
        return out

    @property
    def converted(self):
        """[(relative path, reason)] of the good files converted to RGB before loading."""
        return [(os.path.relpath(f.path, self.root), f.convert)
                for files in self.files.values() for f in files if f.convert]

    def to_dict(self):
        return {"root": self.root, "layout": self.layout, "class_names": list(self.class_names),
                "counts": self.counts, "skipped": [asdict(i) for i in self.skipped],
                "warnings": [asdict(i) for i in self.warnings],
                "converted": [{"path": p, "reason": r} for p, r in self.converted]}

    def __str__(self):
        splits = list(self.files)
        total = sum(len(f) for f in self.files.values())
        lines = [f"Image folder {self.root} ({self.layout} layout): {len(self.class_names)} "
                 f"classes, {total} images, {len(self.converted)} converted to RGB, "
                 f"{len(self.skipped)} skipped, {len(self.warnings)} warnings"]
        width = max(len("class"), *(len(n) for n in self.class_names))
        lines.append("  " + "class".ljust(width) + "".join(f"{s:>8}" for s in splits))
        counts = self.counts
        for name in self.class_names:
            lines.append("  " + name.ljust(width) + "".join(f"{counts[s][name]:>8}"
                                                            for s in splits))
        for title, issues in (("Skipped", self.skipped), ("Warnings", self.warnings)):
            if issues:
                lines.append(f"{title}:")
                lines += [f"  {i.path}: [{i.code}] {i.reason}" for i in issues]
        if self.converted:
            lines.append("Converted to RGB:")
            lines += [f"  {p}: {r}" for p, r in self.converted]
        return "\n".join(lines)

    def save(self, path):
        """Write `<path stem>.json` and `<path stem>.txt`; return both paths."""
        stem = os.path.splitext(os.fspath(path))[0]
        from keras_vggres.transfer.report import write_json, write_text

        write_json(stem + ".json", self.to_dict())
        write_text(stem + ".txt", str(self) + "\n")
        return stem + ".json", stem + ".txt"


def scan_folder(data_dir, *, workers=None):
    """Scan an image folder: class names, loadable files, skipped files and warnings.

    Args:
        data_dir: `root/<class>/...` or `root/train/<class>/...` (+ `root/val/<class>/...`).
        workers: threads used to decode files (default: up to 8, by CPU count).

    Returns:
        A `ScanReport`.

    Raises:
        FileNotFoundError: `data_dir` does not exist or is not a folder.
        ValueError: no class sub-folders, a single class, a training class with no loadable
            image, or validation classes that are not training classes.
    """
    root = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"`data_dir` {root!r} does not exist or is not a folder.")
    layout, split_roots = _layout(root)
    class_names = _class_names(split_roots.get("train") or split_roots["all"])
    report = ScanReport(root=root, layout=layout, class_names=tuple(class_names), files={})
    for split, split_root in split_roots.items():
        names = _class_names(split_root, required=False)
        extra = sorted(set(names) - set(class_names))
        if extra:
            raise ValueError(f"Validation folder {split_root!r} has classes {extra} that the "
                             f"training folder does not have; training classes: {class_names}.")
        report.files[split] = _scan_split(report, split_root, class_names, workers)
    _check_counts(report, split_roots)
    return report


def _layout(root):
    """("train/val", {"train": dir, "val": dir}) or ("classes", {"all": root})."""
    subdirs = _subdirs(root)
    names = {d.lower(): d for d in subdirs}
    split_names = {n for names_ in SPLIT_DIRS.values() for n in names_} | set(IGNORED_SPLIT_DIRS)
    if "train" not in names or not set(names) <= split_names:
        return "classes", {"all": root}
    vals = [names[n] for n in SPLIT_DIRS["val"] if n in names]
    if len(vals) > 1:
        raise ValueError(f"`data_dir` {root!r} has both {vals[0]!r} and {vals[1]!r} folders; keep "
                         "one validation folder.")
    roots = {"train": os.path.join(root, names["train"])}
    if vals:
        roots["val"] = os.path.join(root, vals[0])
    return "train/val", roots


def _subdirs(folder):
    return sorted(d for d in os.listdir(folder)
                  if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _class_names(folder, required=True):
    names = _subdirs(folder)
    if required and not names:
        raise ValueError(f"No class sub-folders in {folder!r}: expected one folder of images per "
                         "class, e.g. data/cats/*.jpg and data/dogs/*.jpg.")
    if required and len(names) == 1:
        raise ValueError(f"Only one class folder ({names[0]!r}) in {folder!r}: a classifier needs "
                         "at least two classes.")
    return names


def _scan_split(report, split_root, class_names, workers):
    """Inspect every file under each class folder of one split; record issues on `report`."""
    jobs = []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_root, name)
        if os.path.isdir(class_dir):
            jobs += [(path, label) for path in _walk_files(class_dir)]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = list(pool.map(lambda job: inspect_file(job[0]), jobs))
    files = []
    for (path, label), (code, message, convert) in zip(jobs, checks):
        rel = os.path.relpath(path, report.root)
        if code == "warning":
            report.warnings.append(FileIssue(rel, code, message))
        elif code is not None:
            report.skipped.append(FileIssue(rel, code, message))
            continue
        files.append(ImageFile(path=path, label=label, convert=convert))
    return files


def _walk_files(folder):
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return found


def inspect_file(path):
    """(code, message, convert) for one file: code None = fine, "warning" = fine with a note,
    else a `SKIP_CODES` key; `convert` says why the file must be converted to RGB (or None)."""
    from PIL import Image

    from keras_vggres.imagenet import _SUPPORTED_MODES

    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSION_FORMATS:
        return "extension", (f"{SKIP_CODES['extension']} {ext or '(none)'!r}; accepted: "
                             f"{tuple(EXTENSION_FORMATS)}"), None
    if os.path.getsize(path) == 0:
        return "empty", SKIP_CODES["empty"], None
    try:
        with Image.open(path) as img:
            fmt, mode, info = img.format, img.mode, dict(img.info)
            frames = getattr(img, "n_frames", 1)
            img.load()  # full decode: truncated and corrupt data fail here, not mid-epoch
            orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Image.UnidentifiedImageError:
        return "not_image", SKIP_CODES["not_image"], None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return "corrupt", f"{SKIP_CODES['corrupt']}: {err}", None
    if mode not in _SUPPORTED_MODES:
        return "mode", f"{SKIP_CODES['mode']} {mode!r}; supported: {_SUPPORTED_MODES}", None
    convert = _conversion_reason(fmt, mode, info, frames, orientation)
    if fmt not in EXTENSION_FORMATS[ext]:
        return "warning", (f"{fmt} content with extension {ext!r}: decoded by content; rename "
                           "the file to silence this warning"), convert
    return None, "", convert


def _conversion_reason(fmt, mode, info, frames, orientation):
    if frames > 1:
        return f"animated {fmt} ({frames} frames): first frame, RGB"
    if orientation not in (None, 1):
        return f"EXIF orientation {orientation}: turned upright"
    if fmt not in NATIVE_MODES or mode not in NATIVE_MODES[fmt]:
        return f"{fmt} mode {mode} -> RGB"
    if "transparency" in info:
        return f"{fmt} mode {mode} with transparency -> RGB on white"
    return None


def _check_counts(report, split_roots):
    """Empty training classes are errors; empty validation classes are warnings."""
    for split, counts in report.counts.items():
        for name, n in counts.items():
            if n:
                continue
            folder = os.path.join(split_roots[split], name)
            skipped = [i for i in report.skipped if os.path.join(report.root, i.path)
                       .startswith(folder + os.sep)]
            detail = (f" ({len(skipped)} files skipped: "
                      f"{sorted({i.code for i in skipped})})" if skipped else "")
            if split != "val":
                raise ValueError(f"Class {name!r} has no loadable images in {folder!r}{detail}; "
                                 "add images or remove the folder.")
            report.warnings.append(FileIssue(os.path.relpath(folder, report.root), "warning",
                                             f"validation class {name!r} has no images{detail}"))

