"""Hygiene scan of an image folder: which files load, which are skipped (and why), class counts.

The scan reads every candidate file once with Pillow (a full decode, so truncated files are
caught here and never crash an epoch later). Skipped: zero-byte files, files Pillow cannot
identify, truncated or corrupt image data, unsupported extensions and pixel modes, images
beyond the size limits of `keras_vggres.images`, and entries that cannot be read (dangling
symlinks, symlink loops, permission errors). Accepted with a warning: content that disagrees
with its extension (a PNG named `.jpg`), which is decoded by content. Grayscale-with-alpha,
RGBA, palette, CMYK, 16-bit, GIF, TIFF/WebP and EXIF-rotated images are accepted and turned
into upright RGB when decoded (see `ImageFile.convert`); no converted copy is written.

Layouts, like `keras.utils.image_dataset_from_directory`: `root/<class>/**/<image>` (class names =
sorted sub-folder names), or `root/train/<class>/...` with `root/val/<class>/...` (or
`validation/`) and optionally `root/test/<class>/...`. Folders whose names start with "." are
ignored. Names that are not valid UTF-8 are kept as the file system gives them (and shown
escaped in reports).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from keras_vggres._progress import Progress

# Extension -> the Pillow formats its content may have without a warning.
EXTENSION_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".gif": ("GIF",),
    ".bmp": ("BMP",), ".webp": ("WEBP",), ".tif": ("TIFF",), ".tiff": ("TIFF",),
}
# Formats and modes that decode straight to RGB; anything else is converted when decoded.
NATIVE_MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "L"), "BMP": ("RGB",)}
SKIP_CODES = {
    "empty": "zero-byte file",
    "not_image": "not an image file (Pillow cannot identify it)",
    "corrupt": "truncated or corrupt image data",
    "extension": "unsupported file extension",
    "mode": "unsupported pixel mode",
    "too_large": "image beyond the size limits",
    "unreadable": "cannot be read (dangling symlink, loop or permission)",
}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
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

    `files` has the splits `"all"` (one folder of classes) or `"train"` and optionally `"val"`
    and `"test"`.
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
        width = max(len("class"), *(len(shown(n)) for n in self.class_names))
        lines.append("  " + "class".ljust(width) + "".join(f"{s:>8}" for s in splits))
        counts = self.counts
        for name in self.class_names:
            lines.append("  " + shown(name).ljust(width) + "".join(f"{counts[s][name]:>8}"
                                                                   for s in splits))
        for title, issues in (("Skipped", self.skipped), ("Warnings", self.warnings)):
            if issues:
                lines.append(f"{title}:")
                lines += [f"  {shown(i.path)}: [{i.code}] {shown(i.reason)}" for i in issues]
        if self.converted:
            lines.append("Converted to RGB when decoded:")
            lines += [f"  {shown(p)}: {r}" for p, r in self.converted]
        return "\n".join(lines)

    def save(self, path):
        """Write `<path stem>.json` and `<path stem>.txt`; return both paths."""
        import json

        from keras_vggres._atomic import write_text

        stem = os.path.splitext(os.fspath(path))[0]
        write_text(stem + ".json", json.dumps(self.to_dict(), indent=2) + "\n")
        write_text(stem + ".txt", str(self) + "\n")
        return stem + ".json", stem + ".txt"


def scan_folder(data_dir, *, workers=None, verbose=0):
    """Scan an image folder: class names, loadable files, skipped files and warnings.

    Args:
        data_dir: `root/<class>/...` or `root/train/<class>/...` (+ `root/val/<class>/...`,
            `root/test/<class>/...`).
        workers: threads used to decode files (default: up to 8, by CPU count).
        verbose: 0 silent, 1 a live progress bar, 2 one line at the end, "auto" a bar where
            it can be seen (terminal or notebook).

    Returns:
        A `ScanReport`.

    Raises:
        FileNotFoundError: `data_dir` does not exist or is not a folder.
        ValueError: no class sub-folders, a single class, a training class with no loadable
            image, or validation/test classes that are not training classes.
    """
    root = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"`data_dir` {root!r} does not exist or is not a folder.")
    layout, split_roots = _layout(root)
    class_names = _class_names(split_roots.get("train") or split_roots["all"])
    report = ScanReport(root=root, layout=layout, class_names=tuple(class_names), files={})
    jobs = {}
    for split, split_root in split_roots.items():
        names = _class_names(split_root, required=False)
        extra = sorted(set(names) - set(class_names))
        if extra:
            raise ValueError(f"{split.capitalize()} folder {split_root!r} has classes {extra} "
                             f"that the training folder does not have; training classes: "
                             f"{class_names}.")
        jobs[split] = _split_jobs(split_root, class_names)
    with Progress("Scanning images", sum(map(len, jobs.values())), verbose=verbose,
                  unit="files") as bar:
        for split, split_jobs in jobs.items():
            report.files[split] = _scan_split(report, split_jobs, workers, bar)
    _check_counts(report, split_roots)
    return report


def _layout(root):
    """("train/val", {"train": dir, "val": dir, "test": dir}) or ("classes", {"all": root})."""
    subdirs = _subdirs(root)
    names = {d.lower(): d for d in subdirs}
    split_names = {n for names_ in SPLIT_DIRS.values() for n in names_}
    if "train" not in names or not set(names) <= split_names:
        return "classes", {"all": root}
    vals = [names[n] for n in SPLIT_DIRS["val"] if n in names]
    if len(vals) > 1:
        raise ValueError(f"`data_dir` {root!r} has both {vals[0]!r} and {vals[1]!r} folders; keep "
                         "one validation folder.")
    roots = {"train": os.path.join(root, names["train"])}
    if vals:
        roots["val"] = os.path.join(root, vals[0])
    if "test" in names:
        roots["test"] = os.path.join(root, names["test"])
    return "train/val", roots


def _subdirs(folder):
    found = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if not name.startswith(".") and os.path.isdir(path):
            found.append(name)
    return sorted(found)


def _class_names(folder, required=True):
    names = _subdirs(folder)
    if required and not names:
        raise ValueError(f"No class sub-folders in {folder!r}: expected one folder of images per "
                         "class, e.g. data/cats/*.jpg and data/dogs/*.jpg.")
    if required and len(names) == 1:
        raise ValueError(f"Only one class folder ({names[0]!r}) in {folder!r}: a classifier needs "
                         "at least two classes.")
    return names


def _split_jobs(split_root, class_names):
    jobs = []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_root, name)
        if os.path.isdir(class_dir):
            jobs += [(path, label) for path in _walk_files(class_dir)]
    return jobs


def _scan_split(report, jobs, workers, bar):
    """Inspect every file of one split; record issues on `report`; return the good files."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = []
        for check in pool.map(lambda job: inspect_file(job[0]), jobs):
            checks.append(check)
            bar.advance()
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
    """Every file below `folder` (sorted); symlinked folders are not followed (no loops)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return found


def inspect_file(path):
    """(code, message, convert) for one file: code None = fine, "warning" = fine with a note,
    else a `SKIP_CODES` key; `convert` says why the file is converted when decoded (or None)."""
    from PIL import Image

    from keras_vggres.images import SUPPORTED_MODES, ImageTooLargeError, check_header

    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSION_FORMATS:
        return "extension", (f"{SKIP_CODES['extension']} {ext or '(none)'!r}; accepted: "
                             f"{tuple(EXTENSION_FORMATS)}"), None
    try:
        if not os.path.isfile(path):
            raise OSError("not a regular file (a dangling symlink or a special file)")
        if os.path.getsize(path) == 0:
            return "empty", SKIP_CODES["empty"], None
        with Image.open(path) as img:
            fmt, mode, info = img.format, img.mode, dict(img.info)
            check_header(*img.size, path)
            frames = getattr(img, "n_frames", 1)
            img.load()  # full decode: truncated and corrupt data fail here, not mid-epoch
            orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Image.UnidentifiedImageError:
        return "not_image", SKIP_CODES["not_image"], None
    except (ImageTooLargeError, Image.DecompressionBombError) as err:
        return "too_large", f"{SKIP_CODES['too_large']}: {err}", None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        return "unreadable", f"{SKIP_CODES['unreadable']}: {err}", None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            return "unreadable", f"{SKIP_CODES['unreadable']}: {err}", None
        return "corrupt", f"{SKIP_CODES['corrupt']}: {err}", None
    if mode not in SUPPORTED_MODES:
        return "mode", f"{SKIP_CODES['mode']} {mode!r}; supported: {SUPPORTED_MODES}", None
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
    """Empty training classes are errors; empty validation / test classes are warnings, and an
    empty test split is dropped (a `test/` folder with no images is not a test set)."""
    if "test" in report.files and not report.files["test"]:
        del report.files["test"]
        report.warnings.append(FileIssue("test", "warning", "test folder has no loadable "
                                         "images; there is no test set"))
    for split, counts in report.counts.items():
        for name, n in counts.items():
            if n:
                continue
            folder = os.path.join(split_roots[split], name)
            skipped = [i for i in report.skipped if os.path.join(report.root, i.path)
                       .startswith(folder + os.sep)]
            detail = (f" ({len(skipped)} files skipped: "
                      f"{sorted({i.code for i in skipped})})" if skipped else "")
            if split in ("train", "all"):
                raise ValueError(f"Class {name!r} has no loadable images in {folder!r}{detail}; "
                                 "add images or remove the folder.")
            kind = "validation" if split == "val" else split
            report.warnings.append(FileIssue(os.path.relpath(folder, report.root), "warning",
                                             f"{kind} class {name!r} has no images{detail}"))


def shown(text):
    """`text` safe for a one-line report: control characters and undecodable bytes escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
