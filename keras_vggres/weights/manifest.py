"""Reads, validates and queries ``weights_manifest.json`` (which weight files exist per model/tag).

The manifest is the only place that holds URLs, hashes and metrics; this module holds none.
Set ``KERAS_VGGRES_MANIFEST=/path/to/extra.json`` to merge a file with the same schema over the
built-in one: its models are added, its tags replace or extend a model's tags (a tag record is
replaced whole), and its ``default`` (if given) replaces the model's default tag.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Mapping

from keras_vggres.transforms import INTERPOLATIONS, PREPROCESS_MODES, Transform
from keras_vggres.weights.spec import FileSpec

MANIFEST_ENV = "KERAS_VGGRES_MANIFEST"
IMAGENET_ALIAS = "imagenet"  # `weights="imagenet"` means the model's default tag
SCHEMA_VERSION = 1

SOURCES = ("keras", "torchvision", "custom")
FORMATS = ("keras-h5", "torch-pth")
VARIANTS = (None, "v1", "v1.5", "v2")
FILE_KINDS = ("top", "notop")
HASH_KEYS = ("md5", "sha256", "sha256_prefix")

TOP_KEYS = {"required": ("schema", "models"), "optional": ("notes",)}
MODEL_KEYS = {"required": ("tags",), "optional": ("default",)}
RECORD_KEYS = {
    "required": ("source", "format", "variant", "files", "preprocess", "transform", "metrics",
                 "params", "gflops", "license"),
    "optional": ("notes",),
}
FILE_KEYS = {"required": ("name", "url", "size"), "optional": HASH_KEYS + ("size_mib",)}
TRANSFORM_KEYS = {"required": ("resize", "crop", "interpolation"), "optional": ()}
METRIC_KEYS = {"required": (), "optional": ("top1", "top5")}

_HEX_PATTERNS = {
    "md5": r"[0-9a-f]{32}", "sha256": r"[0-9a-f]{64}", "sha256_prefix": r"[0-9a-f]{8,64}",
}


@dataclass(frozen=True)
class WeightsRecord:
    """Everything about one (model, tag) pair of pretrained weights.

    The record owns what its images must go through: `preprocess` (a mode of
    `transforms.PREPROCESS_MODES`) and `transform` (the eval `transforms.Transform`).
    """

    model: str
    tag: str
    source: str
    format: str
    variant: str | None
    files: Mapping[str, FileSpec]
    preprocess: str
    transform: Transform
    metrics: Mapping[str, float]
    params: int | None
    gflops: float | None
    license: str | None
    notes: str | None = None
    size_mib: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ModelWeights:
    """All weights of one model: its default tag and its records by tag."""

    model: str
    default: str
    tags: Mapping[str, WeightsRecord]


# ----------------------------------------------------------------------------- validation


class _Checker:
    """Raises ValueErrors that name the manifest path and the record being read."""

    def __init__(self, path):
        self.path = path

    def fail(self, where, problem):
        raise ValueError(f"Invalid weights manifest {self.path}: {where}: {problem}")

    def keys(self, where, obj, spec):
        if not isinstance(obj, dict):
            self.fail(where, f"expected a JSON object, got {type(obj).__name__}")
        accepted = spec["required"] + spec["optional"]
        for key in obj:
            if key not in accepted:
                self.fail(where, f"unknown key {key!r}; accepted keys: {accepted}")
        for key in spec["required"]:
            if key not in obj:
                self.fail(where, f"missing required key {key!r}; required keys: {spec['required']}")

    def choice(self, where, key, value, choices):
        if not (isinstance(value, (str, type(None))) and value in choices):
            self.fail(where, f"{key}={value!r} is not one of {tuple(choices)}")

    def number(self, where, key, value, *, integer=False, nullable=True):
        kinds = (int,) if integer else (int, float)
        if value is None and nullable:
            return
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            kind = "a positive integer" if integer else "a positive number"
            self.fail(where, f"{key}={value!r} must be {kind}{' or null' if nullable else ''}")

    def text(self, where, key, value, *, nullable=True):
        if not (isinstance(value, str) and value) and not (nullable and value is None):
            self.fail(where, f"{key}={value!r} must be a non-empty string"
                      f"{' or null' if nullable else ''}")


def _parse_file(chk, where, raw):
    chk.keys(where, raw, FILE_KEYS)
    chk.text(where, "name", raw["name"], nullable=False)
    if "/" in raw["name"] or "\\" in raw["name"]:
        chk.fail(where, f"name={raw['name']!r} must be a bare file name (no path separator)")
    chk.text(where, "url", raw["url"], nullable=False)
    chk.number(where, "size", raw["size"], integer=True)
    chk.number(where, "size_mib", raw.get("size_mib"))
    hashes = {k: raw[k] for k in HASH_KEYS if raw.get(k) is not None}
    if not hashes:
        chk.fail(where, f"a file needs at least one hash; accepted hash keys: {HASH_KEYS}")
    for key, value in hashes.items():
        if not (isinstance(value, str) and re.fullmatch(_HEX_PATTERNS[key], value.lower())):
            chk.fail(where, f"{key}={value!r} is malformed; expected {_HEX_PATTERNS[key]} "
                     "(hexadecimal digits)")
    hashes = {k: v.lower() for k, v in hashes.items()}
    if "sha256" in hashes and not hashes["sha256"].startswith(hashes.get("sha256_prefix", "")):
        chk.fail(where, "sha256 does not start with sha256_prefix")
    return FileSpec(name=raw["name"], url=raw["url"], size=raw["size"],
                    size_mib=raw.get("size_mib"), **hashes)


def _parse_transform(chk, where, raw):
    chk.keys(where, raw, TRANSFORM_KEYS)
    chk.number(where, "resize", raw["resize"], integer=True, nullable=False)
    chk.number(where, "crop", raw["crop"], integer=True, nullable=False)
    chk.choice(where, "interpolation", raw["interpolation"], INTERPOLATIONS)
    if raw["resize"] < raw["crop"]:
        chk.fail(where, f"resize={raw['resize']} is smaller than crop={raw['crop']}")
    return Transform(raw["resize"], raw["crop"], raw["interpolation"])


def _parse_record(chk, model, tag, raw):
    where = f"models.{model}.tags.{tag}"
    chk.keys(where, raw, RECORD_KEYS)
    chk.choice(where, "source", raw["source"], SOURCES)
    chk.choice(where, "format", raw["format"], FORMATS)
    chk.choice(where, "variant", raw["variant"], VARIANTS)
    chk.choice(where, "preprocess", raw["preprocess"], tuple(PREPROCESS_MODES))
    files_raw = raw["files"]
    if not isinstance(files_raw, dict) or not files_raw:
        chk.fail(where, f"files must be a non-empty object with keys from {FILE_KINDS}")
    for kind in files_raw:
        if kind not in FILE_KINDS:
            chk.fail(f"{where}.files", f"unknown key {kind!r}; accepted keys: {FILE_KINDS}")
    files = {k: _parse_file(chk, f"{where}.files.{k}", v) for k, v in files_raw.items()}
    chk.keys(f"{where}.metrics", raw["metrics"], METRIC_KEYS)
    for key, value in raw["metrics"].items():
        chk.number(f"{where}.metrics", key, value, nullable=True)
    chk.number(where, "params", raw["params"], integer=True)
    chk.number(where, "gflops", raw["gflops"])
    chk.text(where, "license", raw["license"])
    chk.text(where, "notes", raw.get("notes"))
    return WeightsRecord(
        model=model, tag=tag, source=raw["source"], format=raw["format"],
        variant=raw["variant"], files=MappingProxyType(files), preprocess=raw["preprocess"],
        transform=_parse_transform(chk, f"{where}.transform", raw["transform"]),
        metrics=MappingProxyType(dict(raw["metrics"])), params=raw["params"],
        gflops=raw["gflops"], license=raw["license"], notes=raw.get("notes"),
        size_mib=MappingProxyType({k: v["size_mib"] for k, v in files_raw.items()
                                   if v.get("size_mib") is not None}),
    )


def _parse_document(path, text):
    """Parses one manifest file into {model: (default or None, {tag: WeightsRecord})}."""
    chk = _Checker(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"Invalid weights manifest {path}: not valid JSON ({err}).") from err
    chk.keys("top level", raw, TOP_KEYS)
    notes = raw.get("notes")
    if notes is not None and not (isinstance(notes, str) or (
            isinstance(notes, list) and all(isinstance(n, str) for n in notes))):
        chk.fail("top level", "notes must be a string or a list of strings")
    if raw["schema"] != SCHEMA_VERSION:
        chk.fail("top level",
                 f"schema={raw['schema']!r} is not supported; expected {SCHEMA_VERSION}")
    if not isinstance(raw["models"], dict):
        chk.fail("models", "expected a JSON object mapping model names to entries")
    parsed = {}
    for model, entry in raw["models"].items():
        chk.keys(f"models.{model}", entry, MODEL_KEYS)
        if not isinstance(entry["tags"], dict):
            chk.fail(f"models.{model}.tags", "expected a JSON object mapping tags to records")
        if IMAGENET_ALIAS in entry["tags"]:
            chk.fail(f"models.{model}.tags", f"{IMAGENET_ALIAS!r} is reserved for the default tag")
        tags = {tag: _parse_record(chk, model, tag, rec) for tag, rec in entry["tags"].items()}
        parsed[model] = (entry.get("default"), tags)
    return parsed


def _merge(base, base_path, extra, extra_path):
    """Merges parsed documents: ``extra`` adds models/tags, replaces tags and defaults."""
    merged = {model: (default, dict(tags)) for model, (default, tags) in base.items()}
    for model, (default, tags) in extra.items():
        old_default, old_tags = merged.get(model, (None, {}))
        merged[model] = (default or old_default, {**old_tags, **tags})
    result = {}
    for model, (default, tags) in merged.items():
        origin = extra_path if model in extra else base_path
        if default not in tags:
            raise ValueError(
                f"Invalid weights manifest {origin}: models.{model}: default={default!r} must "
                f"name one of its tags {tuple(tags)}."
            )
        result[model] = ModelWeights(model, default, MappingProxyType(tags))
    return MappingProxyType(result)


# ----------------------------------------------------------------------------- loading


def _builtin_manifest():
    """The packaged manifest (``keras_vggres/weights_manifest.json``; a symlink in a checkout)."""
    resource = resources.files("keras_vggres").joinpath("weights_manifest.json")
    return str(resource), resource.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _load(override, override_stamp):
    path, text = _builtin_manifest()
    parsed = _parse_document(path, text)
    if override:
        with open(override, encoding="utf-8") as f:
            extra = _parse_document(override, f.read())
        return _merge(parsed, path, extra, override)
    return _merge(parsed, path, {}, None)


def load_manifest() -> Mapping[str, ModelWeights]:
    """Returns the validated manifest as ``{model name: ModelWeights}`` (read-only, cached).

    Honours ``KERAS_VGGRES_MANIFEST``; the cache follows that variable and the file's mtime.
    """
    override = os.environ.get(MANIFEST_ENV) or None
    stamp = None
    if override:
        try:
            stamp = os.stat(override).st_mtime_ns
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{MANIFEST_ENV}={override!r} names a file that does not exist."
            ) from None
    return _load(override, stamp)


def reload_manifest() -> Mapping[str, ModelWeights]:
    """Drops the cache and reads the manifest (and any override) again."""
    _load.cache_clear()
    return load_manifest()


# ----------------------------------------------------------------------------- queries


def _model_entry(model) -> ModelWeights:
    manifest = load_manifest()
    if model not in manifest:
        raise ValueError(
            f"No pretrained weights are listed for model={model!r}; models with weights: "
            f"{tuple(manifest)}."
        )
    return manifest[model]


def resolve_tag(model, weights) -> str:
    """Maps ``"imagenet"`` to the model's default tag; returns a known tag unchanged."""
    entry = _model_entry(model)
    if weights == IMAGENET_ALIAS:
        return entry.default
    if isinstance(weights, str) and weights in entry.tags:
        return weights
    raise ValueError(
        f"Unknown weights tag for model {model!r}: received weights={weights!r}; accepted tags: "
        f"{(IMAGENET_ALIAS,) + tuple(entry.tags)} ({IMAGENET_ALIAS!r} means {entry.default!r})."
    )


def is_known_tag(model, value) -> bool:
    """True when ``value`` is ``"imagenet"`` or one of ``model``'s tags (not a file path)."""
    manifest = load_manifest()
    if not isinstance(value, str) or model not in manifest:
        return False
    return value == IMAGENET_ALIAS or value in manifest[model].tags


def get_weights(model, tag=IMAGENET_ALIAS) -> WeightsRecord:
    """Returns the record of ``model`` for ``tag`` (``"imagenet"``: the default tag)."""
    entry = _model_entry(model)
    return entry.tags[resolve_tag(model, tag)]


def list_weights(model) -> dict[str, dict]:
    """Describes every tag of ``model`` as ``{tag: metadata}``; ``default`` marks the default."""
    entry = _model_entry(model)
    described = {}
    for tag, rec in entry.tags.items():
        described[tag] = {
            "source": rec.source, "format": rec.format, "variant": rec.variant,
            "preprocess": rec.preprocess, "transform": dict(vars(rec.transform)),
            "metrics": dict(rec.metrics), "params": rec.params, "gflops": rec.gflops,
            "license": rec.license, "notes": rec.notes,
            "files": {kind: {**vars(spec), "size_mib": rec.size_mib.get(kind)}
                      for kind, spec in rec.files.items()},
            "default": tag == entry.default,
        }
    return described


def file_for(record: WeightsRecord, include_top: bool) -> FileSpec:
    """The file to fetch: ``notop`` without the top when there is one, else ``top``.

    torchvision files hold the whole network; the loader drops the classifier when needed.
    """
    if not include_top and "notop" in record.files:
        return record.files["notop"]
    if "top" in record.files:
        return record.files["top"]
    raise ValueError(
        f"Weights {record.model}/{record.tag} have no classifier (only {tuple(record.files)} "
        "files); use include_top=False."
    )
