"""Convert torchvision ResNet / VGG state dicts to this package's Keras layers, by name.

The name map is generated from `models/specs.py` (the same VGG conv list and ResNet block
generator the builders use, in torchvision's v1.5 style), so it covers every depth the builders
know and restates no stride or projection rule; this module imports nothing that imports Keras.
Each Keras layer lists the torchvision keys
it is made of, in Keras weight order, with the named transform that turns a PyTorch tensor into
a Keras weight (`oihw_to_hwio`, `linear_to_dense`, `vgg_fc1_to_dense`). Every key of the state
dict is either used or reported; shapes are checked against the tables before anything is
converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from keras_vggres._checks import check_choice
from keras_vggres.models import specs

__all__ = ["TORCHVISION_MODELS", "convert_pth_file", "convert_state_dict", "linear_to_dense",
           "oihw_to_hwio", "torchvision_layer_map", "vgg_fc1_to_dense"]

TORCHVISION_MODELS = tuple(specs.VGG_MODELS) + tuple(specs.RESNET_SPECS)
TORCHVISION_VGG_POOL = 7   # torchvision's VGG: AdaptiveAvgPool2d((7, 7)) before the classifier
MAX_KEYS_SHOWN = 5
_BN_PARTS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
             ("running_var", "moving_variance"))
_IGNORED_BN_KEY = "num_batches_tracked"  # a training counter; Keras BatchNorm has none


# ---------------------------------------------------------------------------------- transforms


def _check_ndim(array, ndim, what):
    if array.ndim != ndim:
        raise ValueError(f"{what} expects a {ndim}-D tensor, got shape {array.shape}")


def identity(array):
    """Bias and BatchNorm vectors are the same in both frameworks."""
    return array


def oihw_to_hwio(array):
    """PyTorch conv kernel (out, in, h, w) -> Keras Conv2D kernel (h, w, in, out)."""
    _check_ndim(array, 4, "oihw_to_hwio")
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))


def linear_to_dense(array):
    """PyTorch Linear weight (out, in) -> Keras Dense kernel (in, out)."""
    _check_ndim(array, 2, "linear_to_dense")
    return np.ascontiguousarray(array.T)


def vgg_fc1_to_dense(array):
    """VGG fc1 (4096, C*H*W) flattened as torch's C,H,W -> Keras kernel for H,W,C flattening."""
    _check_ndim(array, 2, "vgg_fc1_to_dense")
    channels, side = specs.VGG_WIDTHS[-1], TORCHVISION_VGG_POOL
    if array.shape[1] != channels * side * side:
        raise ValueError(f"vgg_fc1_to_dense expects {channels * side * side} input features "
                         f"({channels}x{side}x{side}), got shape {array.shape}")
    chw = array.reshape(array.shape[0], channels, side, side)
    return np.ascontiguousarray(chw.transpose(2, 3, 1, 0)).reshape(-1, array.shape[0])


# ------------------------------------------------------------------------- the name map


class _Source(NamedTuple):
    key: str                          # torchvision state-dict key
    transform: Callable               # torch tensor -> Keras weight
    shape: tuple                      # expected torch shape; None marks a free dim (classes)
    weight: str                       # Keras weight name: kernel, bias, gamma, ...


def _conv(torch_name, out_channels, in_channels, kernel, *, bias):
    sources = [_Source(f"{torch_name}.weight", oihw_to_hwio,
                       (out_channels, in_channels, kernel, kernel), "kernel")]
    if bias:
        sources.append(_Source(f"{torch_name}.bias", identity, (out_channels,), "bias"))
    return sources


def _bn(torch_name, channels):
    return [_Source(f"{torch_name}.{part}", identity, (channels,), weight)
            for part, weight in _BN_PARTS]


def _dense(torch_name, out_features, in_features, transform=linear_to_dense):
    return [_Source(f"{torch_name}.weight", transform, (out_features, in_features), "kernel"),
            _Source(f"{torch_name}.bias", identity, (out_features,), "bias")]


def _add_conv(plan, conv, torch_conv, torch_bn):
    """`conv` (a specs.ConvSpec) and its BatchNorm, from torchvision modules of these names."""
    plan[f"{conv.prefix}_conv"] = _conv(torch_conv, conv.filters, conv.in_channels, conv.kernel,
                                        bias=conv.bias)
    if conv.bn:
        plan[f"{conv.prefix}_bn"] = _bn(torch_bn, conv.filters)


def _torch_block_modules(block, conv):
    """torchvision's module names of one block conv: `layer{i}.{k}.conv{j}` or `.downsample`."""
    theirs = f"layer{block.stage - specs.FIRST_STAGE + 1}.{block.block - 1}"
    if conv.index == 0:
        return f"{theirs}.downsample.0", f"{theirs}.downsample.1"
    return f"{theirs}.conv{conv.index}", f"{theirs}.bn{conv.index}"


def _resnet_plan(model_name):
    """torchvision's ResNet: the blocks of `specs.resnet_blocks` in its v1.5 style."""
    variant = specs.TORCHVISION_VARIANT
    style = specs.STYLES[variant]
    plan = {}
    _add_conv(plan, specs.stem_conv(style), "conv1", "bn1")
    for block in specs.resnet_blocks(model_name, variant):
        for conv in specs.block_convs(block, style):
            _add_conv(plan, conv, *_torch_block_modules(block, conv))
    plan["predictions"] = _dense("fc", None, specs.resnet_out_channels(model_name))
    return plan


def _vgg_plan(depth, batch_norm):
    """Walk torchvision's `features` Sequential: conv, [bn,] relu per conv; a max-pool per block."""
    plan, index = {}, 0
    for conv in specs.vgg_convs(depth):
        plan[f"block{conv.block}_conv{conv.index}"] = _conv(
            f"features.{index}", conv.width, conv.in_channels, specs.VGG_KERNEL, bias=True)
        index += 1
        if batch_norm:
            plan[f"block{conv.block}_bn{conv.index}"] = _bn(f"features.{index}", conv.width)
            index += 1
        index += 2 if conv.closes_block else 1  # ReLU [+ MaxPool2d]
    flat = specs.VGG_WIDTHS[-1] * TORCHVISION_VGG_POOL * TORCHVISION_VGG_POOL
    plan["fc1"] = _dense("classifier.0", specs.FC_UNITS, flat, vgg_fc1_to_dense)
    plan["fc2"] = _dense("classifier.3", specs.FC_UNITS, specs.FC_UNITS)
    plan["predictions"] = _dense("classifier.6", None, specs.FC_UNITS)
    return plan




def _layer_plan(model_name):
    check_choice("model_name", model_name, TORCHVISION_MODELS)
    if model_name in specs.RESNET_SPECS:
        return _resnet_plan(model_name)
    depth, batch_norm = specs.VGG_MODELS[model_name]
    return _vgg_plan(depth, batch_norm)


def torchvision_layer_map(model_name) -> dict[str, list[tuple[str, Callable]]]:
    """Our layer name -> ``[(torchvision key, transform), ...]`` in Keras weight order.

    Args:
        model_name: one of `TORCHVISION_MODELS` (`resnet18` ... `resnet152`, `vgg11` ...
            `vgg19_bn`); ResNets use torchvision's v1.5 layout.
    """
    return {layer: [(s.key, s.transform) for s in sources]
            for layer, sources in _layer_plan(model_name).items()}


# -------------------------------------------------------------------------- conversion


def _listing(keys):
    keys = sorted(keys, key=str)
    shown = ", ".join(repr(k) for k in keys[:MAX_KEYS_SHOWN])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > MAX_KEYS_SHOWN else ''})"


def _check_keys(state_dict, plan, optional, model_name):
    expected = {s.key for sources in plan.values() for s in sources}
    missing = expected - state_dict.keys()
    unused = state_dict.keys() - expected - optional
    if not (missing or unused):
        return
    parts = [f"missing keys: {_listing(missing)}"] if missing else []
    parts += [f"unexpected keys: {_listing(unused)}"] if unused else []
    hint = ""
    if any(str(k).startswith("module.") for k in unused):
        hint = (" Keys start with 'module.' (saved from DataParallel); strip that prefix "
                "first.")
    raise ValueError(f"The state dict does not match torchvision's {model_name}: "
                     + "; ".join(parts) + "." + hint)


def _shape_matches(shape, expected):
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def _check_arrays(state_dict, plan, model_name):
    problems = []
    for sources in plan.values():
        count = len(problems)
        for source in sources:
            array = np.asarray(state_dict[source.key])
            if not _shape_matches(array.shape, source.shape):
                expected = tuple("N" if d is None else d for d in source.shape)
                problems.append(f"{source.key!r}: expected shape {expected}, got {array.shape}")
            elif array.dtype.kind != "f":
                problems.append(f"{source.key!r}: expected a floating-point tensor, got "
                                f"{array.dtype}")
        free = [np.shape(state_dict[s.key])[0] for s in sources if s.shape[0] is None]
        if len(problems) == count and len(set(free)) > 1:
            problems.append(f"{[s.key for s in sources]}: output sizes disagree {free}")
    if problems:
        raise ValueError(f"The state dict does not fit torchvision's {model_name}: "
                         f"{len(problems)} bad tensors: " + "; ".join(problems[:MAX_KEYS_SHOWN])
                         + ("; ..." if len(problems) > MAX_KEYS_SHOWN else ""))


def _select(model_name, include_top):
    """The plan to convert and the keys accepted but not used (BN counters, a dropped head)."""
    plan = _layer_plan(model_name)
    optional = {f"{s.key.rsplit('.', 1)[0]}.{_IGNORED_BN_KEY}"
                for sources in plan.values() for s in sources if s.weight == "gamma"}
    if not include_top:
        head = {layer: plan.pop(layer) for layer in specs.TOP_LAYERS if layer in plan}
        optional |= {s.key for sources in head.values() for s in sources}
    return plan, optional


def convert_state_dict(state_dict, model_name, *, include_top=True) -> dict[str, list[np.ndarray]]:
    """Convert a torchvision state dict to ``{our layer name: [arrays in Keras weight order]}``.

    Every key must be used: missing or unexpected keys raise, and so do shapes that do not fit
    the model's table. BatchNorm ``num_batches_tracked`` counters are accepted and ignored.
    Arrays come out float32 and C-contiguous.

    Args:
        state_dict: ``{torchvision key: array}``, e.g. from `torch_pth.load_pth`.
        model_name: one of `TORCHVISION_MODELS`; ResNets use torchvision's v1.5 layout.
        include_top: also convert the classifier (`fc` / `classifier.*`); when False those keys
            may be present and are ignored.

    Raises:
        ValueError: unknown `model_name`, or a state dict that does not match it (the message
            names the first keys concerned and how many there are).
    """
    if not isinstance(include_top, bool):
        raise TypeError("`include_top` must be True or False; received "
                        f"include_top={include_top!r}.")
    if not isinstance(state_dict, Mapping):
        raise TypeError("`state_dict` must be a mapping of names to arrays; received "
                        f"{type(state_dict).__name__}.")
    plan, optional = _select(model_name, include_top)
    _check_keys(state_dict, plan, optional, model_name)
    _check_arrays(state_dict, plan, model_name)
    return {layer: [np.ascontiguousarray(s.transform(np.asarray(state_dict[s.key], np.float32)))
                    for s in sources]
            for layer, sources in plan.items()}


def convert_pth_file(pth_path, model_name, out_path, *, include_top=True) -> Path:
    """Convert a torchvision ``.pth`` file once into a Keras legacy HDF5 weight file.

    The file is read without torch (`load_pth`), converted by `convert_state_dict`, and written
    atomically (a temporary file renamed into place), so ``out_path`` is either complete or absent.

    Args:
        pth_path: the torchvision checkpoint.
        model_name: one of `TORCHVISION_MODELS`.
        out_path: the HDF5 file to write (replaced if it exists).
        include_top: keep the classifier layers.

    Returns:
        ``out_path`` as a `Path`.
    """
    from keras_vggres.weights.h5 import legacy_weight_name, write_weight_file
    from keras_vggres.weights.torch_pth import load_pth

    plan, _ = _select(model_name, include_top)  # validates the name before reading the file
    arrays = convert_state_dict(load_pth(pth_path), model_name, include_top=include_top)
    layers = [(layer, [(legacy_weight_name(layer, s.weight), a)
                       for s, a in zip(plan[layer], arrays[layer])])
              for layer in plan]
    write_weight_file(out_path, layers)
    return Path(out_path)
