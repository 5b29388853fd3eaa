"""What a builder's `weights=` means: resolve it, pick the variant it implies, and load it.

`weights` is None, "imagenet" (the model's default tag), a manifest tag, or a file path. A tag
fixes the architecture variant and the preprocessing; a `.pth` path implies torchvision's layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from keras_vggres._checks import check_choice
from keras_vggres.models.specs import TOP_LAYERS
from keras_vggres.models.specs import TORCHVISION_VARIANT as TORCH_VARIANT

TORCH_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True)
class WeightsChoice:
    """The resolved `weights` argument: a manifest record, a local path, or neither (random)."""

    record: object = None   # manifest.WeightsRecord
    path: str | None = None

    @property
    def is_torch_file(self):
        return self.path is not None and self.path.lower().endswith(TORCH_SUFFIXES)


def resolve(model_name, weights):
    """Map `weights` (already None / str) to a WeightsChoice; unknown values raise ValueError."""
    if weights is None:
        return WeightsChoice()
    from keras_vggres.weights import manifest

    if manifest.is_known_tag(model_name, weights):
        return WeightsChoice(record=manifest.get_weights(model_name, weights))
    if os.path.exists(weights):
        return WeightsChoice(path=weights)
    tags = ("imagenet",) + tuple(manifest.list_weights(model_name))
    raise ValueError(
        f"The `weights` argument should be either `None` (random initialization), one of the "
        f"weights tags of {model_name} {tags}, or the path to an existing weights file; "
        f"received weights={weights!r}.")


def pick_variant(model_name, choice, variant, variants):
    """The architecture variant: the tag's (conflicts raise), a `.pth` file's, or the default."""
    if variants is None:  # the family has a single layout
        return None
    check_choice("variant", variant, (None,) + tuple(variants))
    implied = None
    if choice.record is not None and choice.record.variant in variants:
        implied = choice.record.variant
    elif choice.is_torch_file and TORCH_VARIANT in variants:
        implied = TORCH_VARIANT
    if implied and variant and variant != implied:
        raise ValueError(
            f"`variant`={variant!r} conflicts with the weights: {describe(choice)} are for "
            f"variant {implied!r} of {model_name}. Drop `variant` or pick other weights.")
    return variant or implied or variants[0]


def describe(choice):
    """A short human description of the chosen weights for messages."""
    if choice.record is not None:
        return f"weights tag {choice.record.tag!r}"
    return f"weights file {choice.path!r}"


def preprocessing_mode(model_name, include_preprocessing, choice, variant):
    """The in-model preprocessing mode: the tag's, or the mode of the model's weights family."""
    from keras_vggres.transforms import PREPROCESS_MODES

    if include_preprocessing is False or include_preprocessing is None:
        return None
    if isinstance(include_preprocessing, str):
        check_choice("include_preprocessing", include_preprocessing,
                     (True, False) + tuple(PREPROCESS_MODES))
        return include_preprocessing
    if include_preprocessing is not True:
        raise TypeError("`include_preprocessing` must be True, False or a mode name "
                        f"{tuple(PREPROCESS_MODES)}; received {include_preprocessing!r}.")
    if choice.record is not None:
        return choice.record.preprocess
    return default_preprocessing(model_name, variant, torch_file=choice.is_torch_file)


def default_preprocessing(model_name, variant=None, *, torch_file=False):
    """Mode of the model's weights matching `variant` (its default tag's when none matches)."""
    from keras_vggres.weights import manifest

    if torch_file:
        return "torch"
    records = {tag: manifest.get_weights(model_name, tag) for tag in manifest.list_weights(model_name)}
    for record in records.values():
        if variant is not None and record.variant == variant:
            return record.preprocess
    return manifest.get_weights(model_name, "imagenet").preprocess


def describe_weights(model_name, choice, *, variant, preprocess, include_top, classes,
                     channels=3):
    """The `WeightsInfo` a builder attaches: the tag's record, or what a file or random
    weights assume (the mode of the model's weights for that variant, the default tag's
    eval transform), with the input channels and their adaptation."""
    from keras_vggres.weights import channels as adaptation
    from keras_vggres.weights import info, manifest

    if choice.record is not None:
        described = info.from_record(choice.record, include_top=include_top, classes=classes)
    else:
        mode = preprocess or default_preprocessing(model_name, variant,
                                                   torch_file=choice.is_torch_file)
        default = manifest.get_weights(model_name, "imagenet")
        if choice.path is not None:
            described = info.for_file(model_name, choice.path, default, variant=variant,
                                      preprocess=mode, include_top=include_top, classes=classes)
        else:
            described = info.for_random(model_name, default, variant=variant, preprocess=mode)
    loaded = choice.record is not None or choice.path is not None
    return described.replace(input_channels=channels,
                             adaptation=adaptation.describe(channels) if loaded else None)


def load(model, model_name, choice, *, include_top, channels=3):
    """Load the chosen weights into `model` (all or nothing); no-op for random weights.

    With `channels` != 3 the first convolution is adapted (`weights.channels`).
    """
    adapt = _channel_adapter(model_name, channels)
    if choice.record is not None:
        return load_tag(model, model_name, choice.record, include_top=include_top, adapt=adapt)
    if choice.path is not None:
        return load_file(model, model_name, choice.path, include_top=include_top, adapt=adapt)
    return None


def _channel_adapter(model_name, channels):
    """None for RGB, else a function adapting a plan's first convolution to `channels`."""
    if channels == 3:
        return None
    from functools import partial

    from keras_vggres.models.specs import first_conv
    from keras_vggres.weights.channels import adapt_plan

    return partial(adapt_plan, layer=first_conv(model_name), channels=channels)


def load_file(model, model_name, path, *, include_top, adapt=None):
    """A local file: torchvision `.pth` is converted in memory; everything else is Keras'."""
    from keras_vggres.weights.load import load_weights

    if path.lower().endswith(TORCH_SUFFIXES):
        from keras_vggres.weights import convert, torch_pth
        from keras_vggres.weights.assign import assign_layer_weights

        plan = convert.convert_state_dict(torch_pth.load_pth(path), model_name,
                                          include_top=include_top)
        return assign_layer_weights(model, adapt(plan) if adapt else plan, source=path)
    # A full-model file loads into a no-top model: its classifier layers are left out.
    return load_weights(model, path, drop_layers=() if include_top else TOP_LAYERS, adapt=adapt)


def load_tag(model, model_name, record, *, include_top, adapt=None):
    """A manifest tag: fetch (cache / mirror / origin, verified), convert once if needed, load."""
    from keras_vggres.weights import download, manifest
    from keras_vggres.weights.load import load_weights

    spec = manifest.file_for(record, include_top)
    local = download.fetch(spec)
    if record.format == "keras-h5":
        return load_weights(model, str(local), adapt=adapt)
    from keras_vggres.weights import convert, converted

    target = converted_path(local, model_name, include_top=include_top)
    converted.ensure_converted(  # checked against its sidecar; rebuilt (with a warning) if wrong
        local, spec, target,
        lambda out: convert.convert_pth_file(local, model_name, out, include_top=include_top))
    return load_weights(model, str(target), adapt=adapt)


def converted_path(source, model_name, *, include_top):
    """Where the Keras HDF5 conversion of a torchvision file is cached: beside the source.

    Its JSON sidecar (``weights/converted.py``) binds it to the source's hashes.
    """
    source = Path(source)
    suffix = "" if include_top else "_notop"
    return source.with_name(f"{source.stem}.{model_name}{suffix}.keras_vggres.h5")
