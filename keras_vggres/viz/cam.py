"""Grad-CAM (Selvaraju et al., 2017): where in the image a convolutional layer saw the evidence
for a class.

The heatmap is ReLU(sum_k w_k A_k), where A_k are the layer's channels and w_k the spatial mean
of d(score)/d(A_k), divided by its per-image maximum, so the strongest evidence is 1 and a map
with no positive evidence stays all zero (no division by zero). The score is the class's logit,
taken before a final softmax/sigmoid (see `graph.score_source`): after a softmax the gradient
of one class would also carry every other class's logit. Gradients come from
`tf.GradientTape`, so Grad-CAM needs the TensorFlow backend.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

import keras
import numpy as np

from keras_vggres._checks import check_bool, check_int, is_int
from keras_vggres.viz import graph


@dataclass(frozen=True)
class GradCAMResult:
    """Heatmaps (N, H, W) in [0, 1], the class index used per image, the model's outputs
    (N, classes; probabilities for a softmax model), the layer and (if chosen by stage) the
    stage they come from."""

    heatmaps: np.ndarray
    classes: np.ndarray
    outputs: np.ndarray
    layer: str
    stage: str | None


class GradCAM:
    """Grad-CAM for one model and layer; build it once, call it on many batches.

    Works on our flat models, on `classifier()` models whose backbone is nested, after a
    `.keras` round trip, and on foreign models given `layer`. The score differentiated is the
    class's logit: the input of a final softmax/sigmoid `Activation` (our `classifier`) or the
    pre-activation of a final softmax/sigmoid `Dense` (our `include_top` models); for any
    other last layer, the model's output itself.

    Args:
        model: a Keras model with one image input and one output of class scores.
        layer: None (default): the last body stage's output (VGG `block5` -> `block5_pool`,
            ResNet `conv5` -> `conv5_block{last}_out`, ResNet V2 `post` -> `post_relu`), found
            by the builder's stage record or, for reloaded/foreign models, the stage-name
            rules; a stage name (`"conv4"`, `"block4"`: finer maps, stride 16); the name of a
            layer giving a 4D map (the outer model's layers first, then nested models'); or a
            layer object.
        class_names: names of the model's outputs, for classes given by name; default
            `weights_info(model).class_names` (ImageNet tops, `finetune` runs, `.keras` files
            written by `keras_vggres.saving.save_model`).
    """

    def __init__(self, model, layer=None, *, class_names=None):
        from keras_vggres._backend import require_tensorflow

        require_tensorflow("Grad-CAM (keras_vggres.viz.gradcam)")
        self.model = model
        self.target = graph.resolve_layer(model, layer)
        source, self._dense = graph.score_source(model)
        output = model.outputs[0]
        if len(output.shape) != 2:
            raise ValueError(f"Grad-CAM explains class scores: the output of model "
                             f"{model.name!r} must be (batch, classes); it is "
                             f"{tuple(output.shape)}. Put a classifier on it first "
                             "(`keras_vggres.transfer.classifier`).")
        wanted = [output] if source is output else [source, output]
        self._forward = graph.forward(model, self.target, wanted)
        self.num_classes = int(output.shape[-1])
        self.class_names = _class_names(model, class_names, self.num_classes)

    @property
    def layer(self):
        return self.target.layer.name

    def __call__(self, images, class_index=None, *, upsample=True, batch_size=32):
        """Heatmaps in [0, 1]: (N, H, W) for a batch, (H, W) for one image; see `explain`."""
        heatmaps = self.explain(images, class_index, upsample=upsample,
                                batch_size=batch_size).heatmaps
        return heatmaps[0] if _is_single(images) else heatmaps

    def explain(self, images, class_index=None, *, upsample=True, batch_size=32):
        """Heatmaps plus the classes used and the model's outputs, as a `GradCAMResult`.

        Args:
            images: an (N, H, W, C) or (H, W, C) array of what the model takes (raw RGB 0-255
                for models with their preprocessing inside), or image paths (loaded with the
                model's eval transform, `load_images(paths, model=model)`).
            class_index: None (each image's top-1 class), a class index or name for every
                image, or a sequence of them, one per image.
            upsample: resize the heatmaps to the input size (bilinear) before normalising;
                False keeps the layer's resolution (e.g. 7x7 at 224 px for the default layer).
            batch_size: images per forward/backward pass (memory stays bounded).
        """
        check_bool("upsample", upsample)
        check_int("batch_size", batch_size, low=1)
        batch = _as_batch(images, self.model)
        classes = resolve_classes(class_index, len(batch), self.num_classes, self.class_names)
        parts = [self._run(batch[i:i + batch_size],
                           None if classes is None else classes[i:i + batch_size], upsample)
                 for i in range(0, len(batch), batch_size)]
        heatmaps, chosen, outputs = (np.concatenate(p) for p in zip(*parts))
        return GradCAMResult(heatmaps, chosen, outputs, self.layer, self.target.stage)

    def _run(self, x, classes, upsample):
        import tensorflow as tf

        x = tf.convert_to_tensor(x, dtype=tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)  # every tensor downstream is watched, whatever the layer
            activations, *rest = self._forward(x)
            scores = graph.logits(rest[0], self._dense)
            chosen = (tf.argmax(scores, axis=-1, output_type=tf.int32) if classes is None
                      else tf.constant(classes, dtype=tf.int32))
            score = tf.reduce_sum(tf.gather(scores, chosen[:, None], batch_dims=1))
        grads = tape.gradient(score, activations)
        if grads is None:
            raise ValueError(f"The class score of {self.model.name!r} does not depend on layer "
                             f"{self.layer!r} differentiably; choose another `layer`.")
        heatmaps = _weigh(activations, grads, self._spatial_axes())
        if upsample:
            heatmaps = _resize(heatmaps, tuple(x.shape[1:3]))
        return _normalise(heatmaps).numpy(), chosen.numpy(), np.asarray(rest[-1])

    def _spatial_axes(self):
        data_format = (getattr(self.target.layer, "data_format", None)
                       or keras.config.image_data_format())
        return (2, 3) if data_format == "channels_first" else (1, 2)


def gradcam(model, images, class_index=None, layer=None, upsample=True, *, class_names=None,
            batch_size=32):
    """Grad-CAM heatmaps in [0, 1]: where `layer` saw the evidence for a class.

    For several calls on the same model, build a `GradCAM` once (it keeps the cut graph).

    Args:
        model: a Keras model (flat, a `classifier()` with its backbone nested, reloaded).
        images: an (N, H, W, C) batch, one (H, W, C) image or image paths; see `explain`.
        class_index: None (top-1 per image), an index, a class name (needs the model's class
            names), or a sequence of them, one per image.
        layer: None (the last body stage's output), a stage name, a layer name or a layer.
        upsample: resize the heatmaps to the input size (bilinear).
        class_names: names of the model's outputs; default `weights_info(model).class_names`.
        batch_size: images per forward/backward pass.

    Returns:
        float32 (N, H, W) heatmaps, or (H, W) for one image; (h, w) at the layer's resolution
        with `upsample=False`.
    """
    cam = GradCAM(model, layer, class_names=class_names)
    return cam(images, class_index, upsample=upsample, batch_size=batch_size)


# ----------------------------------------------------------------------------- the maths
def _weigh(activations, grads, axes):
    import tensorflow as tf

    activations, grads = tf.cast(activations, tf.float32), tf.cast(grads, tf.float32)
    weights = tf.reduce_mean(grads, axis=axes, keepdims=True)
    channel_axis = 1 if axes == (2, 3) else 3
    return tf.nn.relu(tf.reduce_sum(activations * weights, axis=channel_axis))


def _resize(heatmaps, size):
    import tensorflow as tf

    return tf.image.resize(heatmaps[..., None], size, method="bilinear")[..., 0]


def _normalise(heatmaps):
    """Divide each map by its maximum; an all-zero map stays zero."""
    import tensorflow as tf

    peak = tf.reduce_max(heatmaps, axis=(1, 2), keepdims=True)
    return tf.clip_by_value(heatmaps / tf.where(peak > 0, peak, 1.0), 0.0, 1.0)


# ----------------------------------------------------------------------------- arguments
def _is_single(images):
    return isinstance(images, (str, os.PathLike)) or (
        not isinstance(images, (list, tuple)) and np.ndim(images) == 3)


def _as_batch(images, model):
    if isinstance(images, (str, os.PathLike)) or (
            isinstance(images, (list, tuple)) and images
            and all(isinstance(p, (str, os.PathLike)) for p in images)):
        from keras_vggres.images import load_images

        paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        return load_images(paths, model=model)
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or len(batch) == 0:
        raise ValueError("`images` must be an (N, H, W, C) batch, one (H, W, C) image or image "
                         f"paths; received an array of shape {batch.shape}.")
    return batch


def _class_names(model, class_names, num_classes):
    if class_names is None:
        from keras_vggres.weights.info import weights_info

        class_names = weights_info(model).class_names
        if class_names is not None and len(class_names) != num_classes:
            return None  # a record from another head: names do not apply to these outputs
        return None if class_names is None else tuple(class_names)
    names = tuple(class_names)
    if len(names) != num_classes:
        raise ValueError(f"`class_names` must name the model's {num_classes} outputs; received "
                         f"{len(names)} names.")
    return names


def resolve_classes(class_index, count, num_classes, class_names=None):
    """Class indices (count,) for `class_index` (None -> None: each image's top-1)."""
    if class_index is None:
        return None
    single = isinstance(class_index, str) or is_int(class_index) or np.ndim(class_index) == 0
    values = [class_index] * count if single else list(class_index)
    if len(values) != count:
        raise ValueError(f"`class_index` must be one class or one per image ({count}); received "
                         f"{len(values)} values.")
    return np.array([_class(v, num_classes, class_names) for v in values], dtype=np.int32)


def _class(value, num_classes, class_names):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if is_int(value):
        if not 0 <= value < num_classes:
            raise ValueError(f"`class_index` must be in [0, {num_classes}) for a model with "
                             f"{num_classes} outputs; received class_index={value!r}.")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"`class_index` must be None, an int, a class name or a sequence of "
                        f"them; received class_index={value!r}.")
    if class_names is None:
        raise ValueError(f"`class_index` names a class ({value!r}) but the model carries no "
                         f"class names; pass an index in [0, {num_classes}) or `class_names=`.")
    if value not in class_names:
        close = difflib.get_close_matches(value, class_names, n=3)
        known = (f"one of {class_names}" if len(class_names) <= 20
                 else f"one of its {len(class_names)} class names")
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"`class_index` must be an index in [0, {num_classes}) or {known}; "
                         f"received class_index={value!r}.{hint}")
    return class_names.index(value)
