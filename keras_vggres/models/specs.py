"""Every architecture fact of the VGG and ResNet families, once, as plain data and pure functions.

Stdlib only (no Keras, no NumPy; `_checks` is stdlib too): the Keras builders, the registry,
the torchvision converter and the stage lookup all read this module, and the converter and the
CLI's tables must not start TensorFlow. Rules that differ between ResNet flavours (which conv
strides, which block of a stage strides, which conv has a bias, where BatchNorm sits) are
fields of `ResNetStyle`, and the blocks of a model come from one generator, `resnet_blocks`,
so no caller restates them. Parameter counts are derived (`param_count`), never typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from keras_vggres._checks import check_choice

IMAGE_CHANNELS = 3
DEFAULT_SIZE = 224
STEM, POST, HEAD = "stem", "post", "head"

# BatchNorm settings in Keras' convention; momentum 0.9 is PyTorch's momentum=0.1.
KERAS_BN = {"epsilon": 1.001e-5}                # keras.applications (Keras' default momentum)
TORCH_BN = {"epsilon": 1e-5, "momentum": 0.9}   # torchvision
BN_PARAMS_PER_CHANNEL = 4   # gamma, beta, moving mean, moving variance: all in count_params()

# ---------------------------------------------------------------------------------------- VGG
VGG_WIDTHS = (64, 128, 256, 512, 512)
VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2),
              16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_STAGES = ("block1", "block2", "block3", "block4", "block5", HEAD)
VGG_KERNEL = 3      # every conv: 3x3, stride 1, "same" padding (= PyTorch's padding=1), bias
VGG_POOL = 2        # every block ends in a 2x2 max-pool with stride 2
FC_UNITS = 4096     # fc1 and fc2
# The layers a builder adds with include_top=True (VGG: all four; ResNet: "avg_pool" too), and
# the pooling a no-top model may end with: together, the `head` stage.
TOP_LAYERS = ("flatten", "fc1", "fc2", "predictions")
POOL_LAYERS = {"avg": "avg_pool", "max": "max_pool"}
HEAD_LAYERS = TOP_LAYERS + tuple(POOL_LAYERS.values())


def vgg_model_name(depth, *, batch_norm):
    """Registry / model name of a VGG variant: `vgg16`, `vgg16_bn`."""
    return f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"


VGG_MODELS = {vgg_model_name(depth, batch_norm=bn): (depth, bn)
              for depth in VGG_DEPTHS for bn in (False, True)}


class VGGConv(NamedTuple):
    """One conv of a VGG body: layer `block{block}_conv{index}`."""

    block: int
    index: int
    width: int
    in_channels: int
    closes_block: bool   # the block's max-pool follows this conv


def vgg_convs(depth):
    """The convs of VGG`depth` in order, with the channels each one receives."""
    in_channels = IMAGE_CHANNELS
    for block, (convs, width) in enumerate(zip(VGG_DEPTHS[depth], VGG_WIDTHS), start=1):
        for index in range(1, convs + 1):
            yield VGGConv(block, index, width, in_channels, closes_block=index == convs)
            in_channels = width


def vgg_flat_features(image_size=DEFAULT_SIZE):
    """Inputs of fc1: the last block's (H, W, C) map flattened; 7 * 7 * 512 at 224 px."""
    side = image_size
    for _ in VGG_WIDTHS:
        side //= VGG_POOL
    return side * side * VGG_WIDTHS[-1]


# ------------------------------------------------------------------------------------- ResNet
RESNET_SPECS = {  # name: (block, blocks per stage conv2..conv5)
    "resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
KERAS_RESNETS = ("resnet50", "resnet101", "resnet152")  # keras.applications' depths (v1 and V2)
V2_SUFFIX = "v2"                                       # resnet50 -> resnet50v2
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
STEM_WIDTH = 64
STEM_KERNEL, STEM_STRIDE = 7, 2           # conv1: 7x7 stride 2, zero-padded by 3
STEM_POOL, STEM_POOL_STRIDE = 3, 2        # pool1: 3x3 max-pool stride 2, zero-padded by 1
FIRST_STAGE = 2                           # stages are conv2..conv5 (conv1 is the stem)
RESNET_STAGES = (STEM,) + tuple(f"conv{s}" for s in range(FIRST_STAGE, 6)) + (HEAD,)
RESNET_V2_STAGES = RESNET_STAGES[:-1] + (POST, HEAD)


@dataclass(frozen=True)
class ResNetStyle:
    """What distinguishes one ResNet flavour; the block code reads nothing else."""

    preact: bool         # BN-ReLU before each block (v2), `post_bn` after the last stage
    stride_on: str       # which conv of a bottleneck strides: "1x1" or "3x3"
    stride_block: str    # which block of a stage strides: "first" or "last"
    conv_bias: tuple     # use_bias of (stem, _0_conv, _1_conv, _2_conv, _3_conv)
    explicit_pad: bool   # ZeroPadding2D + valid 3x3 conv instead of padding="same"
    bn: dict


STYLES = {
    "v1": ResNetStyle(preact=False, stride_on="1x1", stride_block="first",
                      conv_bias=(True,) * 5, explicit_pad=False, bn=KERAS_BN),
    "v1.5": ResNetStyle(preact=False, stride_on="3x3", stride_block="first",
                        conv_bias=(False,) * 5, explicit_pad=True, bn=TORCH_BN),
    "v2": ResNetStyle(preact=True, stride_on="3x3", stride_block="last",
                      conv_bias=(True, True, False, False, True), explicit_pad=True, bn=KERAS_BN),
}
RESNET_VARIANTS = ("v1", "v1.5")     # the choice offered by ResNet50/101/152
TORCHVISION_VARIANTS = ("v1.5",)     # ResNet18/34 exist only in torchvision's layout
V2_VARIANTS = ("v2",)
TORCHVISION_VARIANT = "v1.5"         # the layout of torchvision's ResNet checkpoints


class ResNetBlock(NamedTuple):
    """One residual block, layers `conv{stage}_block{block}_*`."""

    kind: str            # "basic" or "bottleneck"
    stage: int           # 2..5
    block: int           # 1..blocks of the stage
    width: int           # the 3x3 convs' filters
    in_channels: int
    out_channels: int
    stride: int
    projection: bool     # 1x1 conv shortcut (`_0_conv`) instead of identity

    @property
    def name(self):
        return f"conv{self.stage}_block{self.block}"


class ConvSpec(NamedTuple):
    """One ResNet conv, layer `{prefix}_conv` (and `{prefix}_bn` when `bn`)."""

    prefix: str          # "conv1" (stem) or "conv3_block1_2"
    index: int           # 0: projection shortcut; 1..3: main path; -1: stem
    filters: int
    in_channels: int
    kernel: int
    stride: int
    bias: bool
    bn: bool             # followed by its own BatchNorm


def block_stride(stage, block, blocks, style):
    """v1/v1.5: the first block of conv3..conv5 strides; v2: the last block of conv2..conv4."""
    if style.stride_block == "first":
        return 2 if block == 1 and stage > FIRST_STAGE else 1
    return 2 if block == blocks and stage < FIRST_STAGE + len(STAGE_WIDTHS) - 1 else 1


def resnet_blocks(depth_name, variant):
    """Every block of `depth_name` (`resnet50`) in `variant`'s style, in order.

    The projection rule is torchvision's and Keras' alike: the first block of a stage projects
    when it changes the resolution or the channel count.
    """
    kind, blocks_per_stage = RESNET_SPECS[depth_name]
    style = STYLES[variant]
    channels = STEM_WIDTH
    for stage, (blocks, width) in enumerate(zip(blocks_per_stage, STAGE_WIDTHS),
                                            start=FIRST_STAGE):
        out_channels = width * EXPANSION[kind]
        for block in range(1, blocks + 1):
            stride = block_stride(stage, block, blocks, style)
            projection = block == 1 and (stride != 1 or channels != out_channels)
            yield ResNetBlock(kind, stage, block, width, channels, out_channels, stride,
                              projection)
            channels = out_channels


def stem_conv(style):
    """conv1: the stem's 7x7 conv (v2 has no BatchNorm after it)."""
    return ConvSpec("conv1", -1, STEM_WIDTH, IMAGE_CHANNELS, STEM_KERNEL, STEM_STRIDE,
                    style.conv_bias[0], bn=not style.preact)


def block_convs(block, style):
    """The convs of `block`: the projection (`_0`) if any, then the main path (`_1`.. `_3`).

    The main path's last conv and the projection have their own BatchNorm except in v2, where
    the next block's pre-activation (or `post_bn`) normalises the sum instead.
    """
    if block.kind == "bottleneck":
        first = block.stride if style.stride_on == "1x1" else 1
        main = ((block.width, block.in_channels, 1, first),
                (block.width, block.width, 3, block.stride // first),
                (block.out_channels, block.width, 1, 1))
    else:
        main = ((block.width, block.in_channels, 3, block.stride),
                (block.width, block.width, 3, 1))
    convs = []
    if block.projection:
        convs.append(ConvSpec(f"{block.name}_0", 0, block.out_channels, block.in_channels, 1,
                              block.stride, style.conv_bias[1], bn=not style.preact))
    for index, (filters, in_channels, kernel, stride) in enumerate(main, start=1):
        convs.append(ConvSpec(f"{block.name}_{index}", index, filters, in_channels, kernel,
                              stride, style.conv_bias[1 + index],
                              bn=index < len(main) or not style.preact))
    return tuple(convs)


def resnet_out_channels(depth_name):
    """Channels of the last stage (the pooled feature size): 512 or 2048."""
    kind, _ = RESNET_SPECS[depth_name]
    return STAGE_WIDTHS[-1] * EXPANSION[kind]


# ------------------------------------------------------------------------------- model names
FAMILY_STAGES = {"vgg": VGG_STAGES, "resnet": RESNET_STAGES, "resnet_v2": RESNET_V2_STAGES}
MODEL_FAMILIES = {**{name: "vgg" for name in VGG_MODELS},
                  **{name: "resnet" for name in RESNET_SPECS},
                  **{name + V2_SUFFIX: "resnet_v2" for name in KERAS_RESNETS}}


def family(model_name):
    """'vgg', 'resnet' or 'resnet_v2'; unknown names raise with the known ones."""
    return MODEL_FAMILIES[check_choice("model_name", model_name, tuple(MODEL_FAMILIES))]


def first_conv(model_name):
    """The name of the convolution that sees the image (adapted for C != 3 input channels)."""
    return "block1_conv1" if family(model_name) == "vgg" else "conv1_conv"


def variants(model_name):
    """The architecture variants a model offers (the first is the default); None for VGG."""
    kind = family(model_name)
    if kind == "vgg":
        return None
    if kind == "resnet_v2":
        return V2_VARIANTS
    return RESNET_VARIANTS if model_name in KERAS_RESNETS else TORCHVISION_VARIANTS


def resnet_depth_name(model_name):
    """The `RESNET_SPECS` row of a ResNet model: `resnet50v2` -> `resnet50`."""
    return model_name.removesuffix(V2_SUFFIX)


def _resolve(model_name, variant):
    """(family, ResNet depth name or None, variant) with the default variant filled in."""
    kind, choices = family(model_name), variants(model_name)
    if choices is None:
        return kind, None, None
    variant = check_choice("variant", variant, (None,) + choices) or choices[0]
    return kind, resnet_depth_name(model_name), variant


# ------------------------------------------------------------------------- stages and counts
class StageSpec(NamedTuple):
    """A body stage: the layer giving its feature map, its channels and reduction."""

    stage: str
    layer: str
    channels: int
    reduction: int       # input size / feature-map size (nominal stride)


def stage_features(model_name, variant=None):
    """The body stages of a model (`head` excluded), in order."""
    kind, depth_name, variant = _resolve(model_name, variant)
    if kind == "vgg":
        return tuple(StageSpec(stage, f"{stage}_pool", width, VGG_POOL ** b)
                     for b, (stage, width) in enumerate(zip(VGG_STAGES, VGG_WIDTHS), start=1))
    reduction = STEM_STRIDE * STEM_POOL_STRIDE
    found = {STEM: StageSpec(STEM, "pool1_pool", STEM_WIDTH, reduction)}
    for block in resnet_blocks(depth_name, variant):  # a stage's last block gives its output
        reduction *= block.stride
        stage = f"conv{block.stage}"
        found[stage] = StageSpec(stage, f"{block.name}_out", block.out_channels, reduction)
    if STYLES[variant].preact:
        found[POST] = StageSpec(POST, "post_relu", found[stage].channels, reduction)
    return tuple(found.values())


def _conv_params(conv):
    weights = conv.kernel * conv.kernel * conv.in_channels * conv.filters
    return (weights + (conv.filters if conv.bias else 0)
            + (BN_PARAMS_PER_CHANNEL * conv.filters if conv.bn else 0))


def _dense_params(inputs, units):
    return inputs * units + units


def _vgg_params(depth, batch_norm, include_top, classes, image_size):
    body = sum(_conv_params(ConvSpec(f"block{c.block}_conv{c.index}", c.index, c.width,
                                     c.in_channels, VGG_KERNEL, 1, True, batch_norm))
               for c in vgg_convs(depth))
    if not include_top:
        return body
    return (body + _dense_params(vgg_flat_features(image_size), FC_UNITS)
            + _dense_params(FC_UNITS, FC_UNITS) + _dense_params(FC_UNITS, classes))


def _resnet_params(depth_name, variant, include_top, classes):
    style = STYLES[variant]
    blocks = tuple(resnet_blocks(depth_name, variant))
    convs = (stem_conv(style),) + tuple(c for b in blocks for c in block_convs(b, style))
    total = sum(map(_conv_params, convs))
    if style.preact:  # `_preact_bn` of every block and `post_bn`
        channels = [b.in_channels for b in blocks] + [blocks[-1].out_channels]
        total += BN_PARAMS_PER_CHANNEL * sum(channels)
    if include_top:
        total += _dense_params(blocks[-1].out_channels, classes)
    return total


def param_count(model_name, variant=None, include_top=True, classes=1000, *,
                image_size=DEFAULT_SIZE):
    """What `model.count_params()` says for a model built with these arguments.

    Derived from the tables, so it cannot drift from the builders. BatchNorm counts 4 weights
    per channel (moving statistics included), like Keras. `image_size` matters only for a VGG
    with its top (fc1's inputs depend on it); `variant` None means the model's default.
    """
    kind, depth_name, variant = _resolve(model_name, variant)
    if kind == "vgg":
        depth, batch_norm = VGG_MODELS[model_name]
        return _vgg_params(depth, batch_norm, include_top, classes, image_size)
    return _resnet_params(depth_name, variant, include_top, classes)

