"""VGG vs ResNet side by side: size, compute, memory, speed on this machine, published accuracy.

`profile(models)` returns one row (a dict) per model and weights tag; `format_rows` prints them
as a table, markdown, JSON or CSV; `plot` draws published top-1 against GMACs. Each
architecture is built once with random weights (nothing is downloaded); its figures come from
its Keras graph (`keras_vggres.costs`) and, with `measure=True`, from timing it here
(`keras_vggres.timing`). The published figures (top-1/top-5, file size) come from the weights
manifest. `keras_vggres.profile(["vgg16", "resnet50"])` is this module's `profile` (the module
has another name, so importing it never shadows the function).

Importing this module does not import Keras or TensorFlow (the CLI reads `FORMATS` from it).
"""

from __future__ import annotations

import gc
import math
from contextlib import nullcontext

from keras_vggres._checks import check_bool, check_int
from keras_vggres._profile_format import COLUMNS, FORMATS, format_rows  # noqa: F401 (re-exported)

MIB = 2 ** 20
MIN_IMAGE_SIZE = 32


def _entries(models, weights):
    """[(model name, manifest record or None)], every name and tag checked before any build.

    `models` is a name or a list of names; `name:tag` picks one tag. Otherwise `weights`
    decides: None, every tag of the model; `"imagenet"`, its default tag; or a tag name.
    """
    from keras_vggres.registry import get_spec
    from keras_vggres.weights import manifest

    names = [models] if isinstance(models, str) else list(models)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError("`models` must be a model name or a non-empty list of names (optionally "
                         f"`name:tag`); received models={models!r}.")
    known, entries = manifest.load_manifest(), []
    for text in names:
        name, _, tag = text.partition(":")
        name = get_spec(name).name
        if name not in known:
            entries.append((name, None))
            continue
        tags = [tag or weights] if (tag or weights is not None) else list(known[name].tags)
        entries += [(name, manifest.get_weights(name, t)) for t in tags]
    return entries


def _variant(name, record):
    """The architecture a tag's weights need (resnet50: `keras` -> v1, `tv2` -> v1.5)."""
    from keras_vggres.models.specs import variants

    choices = variants(name)
    if not choices:
        return None
    return record.variant if record is not None and record.variant in choices else choices[0]


def _build(name, variant, image_size, *, random_init):
    """The model at `image_size` with its 1000-class top and random (or placeholder) weights."""
    import keras

    from keras_vggres.models import _common
    from keras_vggres.models.specs import variants
    from keras_vggres.registry import get_spec

    shape = ((3, image_size, image_size) if keras.config.image_data_format() == "channels_first"
             else (image_size, image_size, 3))
    options = {"variant": variant} if len(variants(name) or ()) > 1 else {}
    # Counting needs shapes, not values: skip the random draw (seconds for VGG's fc1). The
    # model never leaves this module. Timed models get a real random draw.
    with nullcontext() if random_init else _common.weights_will_load():
        return get_spec(name).builder(weights=None, input_shape=shape, **options)


def _architecture(name, variant, image_size, batch_size, measure, runs, warmup):
    """Every figure that depends only on the architecture (shared by its tags)."""
    from keras_vggres import costs, timing

    model = _build(name, variant, image_size, random_init=measure)
    total = model.count_params()
    trainable = sum(math.prod(int(d) for d in w.shape) for w in model.trainable_weights)
    compute = costs.count_costs(model)
    row = {"params": total, "trainable_params": trainable, "gmacs": compute.macs / 1e9,
           "small_gops": compute.small_ops / 1e9,
           "activation_mib": costs.activation_bytes(model, batch_size) / MIB}
    row.update(dict.fromkeys(("latency_ms", "latency_ms_min", "latency_ms_max", "throughput_ips",
                              "throughput_ips_min", "throughput_ips_max", "runs", "warmup")))
    if measure:
        latency = timing.time_forward(model, 1, runs=runs, warmup=warmup)
        batch = timing.time_forward(model, batch_size, runs=runs, warmup=warmup)
        row.update(latency_ms=1e3 * latency.median, latency_ms_min=1e3 * latency.min,
                   latency_ms_max=1e3 * latency.max, throughput_ips=batch_size / batch.median,
                   throughput_ips_min=batch_size / batch.max,
                   throughput_ips_max=batch_size / batch.min, runs=runs, warmup=warmup)
    del model
    gc.collect()
    return row


def _file_size(record):
    """(MiB, where it came from) of the tag's full-model file: its exact `size` in bytes, else
    torchvision's published `size_mib`; (None, None) when the manifest has neither."""
    if record is None or "top" not in record.files:
        return None, None
    if record.files["top"].size is not None:
        return record.files["top"].size / MIB, "size"
    if "top" in record.size_mib:
        return record.size_mib["top"], "size_mib"
    return None, None


def _published(record):
    """The manifest's figures for one tag (all None without a record)."""
    file_mib, file_from = _file_size(record)
    metrics = dict(record.metrics) if record is not None else {}
    return {"top1": metrics.get("top1"), "top5": metrics.get("top5"),
            "metrics_source": record.source if record is not None else None,
            "published_gflops": record.gflops if record is not None else None,
            "published_params": record.params if record is not None else None,
            "file_mib": file_mib, "file_mib_from": file_from}


def profile(models, weights=None, image_size=224, batch_size=8, measure=True, *, runs=5,
            warmup=2):
    """Compare models: parameters, GMACs, weight-file size, memory, speed, published accuracy.

    Args:
        models: a model name or a list of names (`keras_vggres.list_models()`); `"name:tag"`
            picks one weights tag of that model.
        weights: the tags reported for names without `:tag`: `None` (every tag in the
            manifest), `"imagenet"` (the default tag) or a tag name. Weights are never
            downloaded: a tag only decides the published figures and the architecture variant
            (resnet50 `keras` is v1, `tv1`/`tv2` are v1.5).
        image_size: input height and width (>= 32) for GMACs, memory and timings.
        batch_size: images per batch for the activation memory and the throughput.
        measure: time inference on this machine; `False` skips it (those fields are None).
        runs: timed calls per timing (median, min and max are reported).
        warmup: untimed calls before them (the first one traces the model).

    Returns:
        A list of dicts, one per (model, tag), keys `profile.COLUMNS`: `params` (all weights,
        BatchNorm moving statistics included, = `count_params()`), `trainable_params`
        (torchvision's count), `gmacs` and `small_gops` (per image, see `keras_vggres.costs`),
        `activation_mib` (one training step at `batch_size`), `latency_ms` (batch 1) and
        `throughput_ips` (images/s at `batch_size`) with their min/max over `runs`, and the
        manifest's `top1`, `top5`, `metrics_source`, `published_gflops`, `published_params`,
        `file_mib` and `file_mib_from` (`"size"`: exact bytes; `"size_mib"`: torchvision's
        published MiB).
    """
    entries = _entries(models, weights)
    image_size = check_int("image_size", image_size, low=MIN_IMAGE_SIZE)
    batch_size = check_int("batch_size", batch_size, low=1)
    check_bool("measure", measure)
    runs = check_int("runs", runs, low=1)
    warmup = check_int("warmup", warmup, low=0)
    rows, built = [], {}
    for name, record in entries:
        variant = _variant(name, record)
        if (name, variant) not in built:
            built[name, variant] = _architecture(name, variant, image_size, batch_size, measure,
                                                 runs, warmup)
        row = {"model": name, "tag": record.tag if record is not None else None,
               "variant": variant, "image_size": image_size, "batch_size": batch_size,
               **built[name, variant], **_published(record)}
        rows.append({key: row[key] for key in COLUMNS})
    return rows


def plot(rows, path=None):
    """Published top-1 against GMACs, marker area proportional to parameters; returns the Figure.

    With `path`, the figure is drawn on matplotlib's Agg canvas (no display needed, the global
    backend untouched) and written there atomically; without it, it comes from pyplot, for
    notebooks. Rows without a published top-1 are left out. Needs matplotlib
    (`pip install keras_vggres[plots]`); raises ImportError saying so.
    """
    from keras_vggres.models.specs import family

    figure = _figure(path)
    axes = figure.subplots()
    points = [row for row in rows if row.get("top1") is not None]
    if points:
        largest = max(row["params"] for row in points)
        for kind in sorted({family(row["model"]) for row in points}):
            mine = [row for row in points if family(row["model"]) == kind]
            axes.scatter([r["gmacs"] for r in mine], [r["top1"] for r in mine], label=kind,
                         s=[1500 * r["params"] / largest for r in mine], alpha=0.5)
        legend = axes.legend(loc="best", title="family")
        for handle in legend.legend_handles:  # same-size legend markers, whatever the params
            handle.set_sizes([60])
        for row in points:
            axes.annotate(f"{row['model']}:{row['tag']}", (row["gmacs"], row["top1"]),
                          textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xlabel(f"GMACs per image at {points[0]['image_size'] if points else 224} px")
    axes.set_ylabel("published ImageNet top-1 (%)")
    axes.set_title("Accuracy vs compute (marker area: parameters)")
    axes.grid(True, alpha=0.3)
    if path is not None:
        _save(figure, path)
    return figure


def _figure(path):
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError("plot needs matplotlib: pip install 'keras_vggres[plots]' (or "
                          "matplotlib).") from error
    if path is None:
        from matplotlib import pyplot
        return pyplot.figure(figsize=(8, 5))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    import os

    from keras_vggres import _atomic

    suffix = os.path.splitext(os.fspath(path))[1]
    with _atomic.replacing(path, suffix=suffix) as tmp:
        figure.savefig(tmp, format=suffix.lstrip(".") or "png", bbox_inches="tight", dpi=120)
