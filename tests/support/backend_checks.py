"""The same computations on any Keras backend, to compare TensorFlow's numbers with another's.

`prepare(folder)` (TensorFlow, the parent test) writes the weight files every backend loads: a
legacy HDF5 and a Keras `.weights.h5` of a seeded ResNet18, a legacy HDF5 of a seeded VGG16BN
(weights over 4 MB: the in-place assignment path) and a synthetic torchvision ResNet18 `.pth`.
`compute(folder)` then runs on the backend of its process and returns named arrays and texts:
every builder (seeded weights, 32 px, logits), the weight files loaded, `optimize_for_inference`,
a `classifier` head, `freeze` and one training step, `feature_extractor` taps. On another
backend, `tensorflow_only_errors()` runs each TensorFlow-only feature and returns its error.

Run as a child: `python -m tests.support.backend_checks FOLDER [--no-builders]
[--hide-tensorflow]` writes FOLDER/<backend>.npz and FOLDER/<backend>.json (texts, checks,
errors, whether TensorFlow got imported); `--hide-tensorflow` makes `import tensorflow` fail
first, as on a machine without TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

SMALL = (32, 32, 3)        # every builder, with its classifier (10 classes, logits)
LOADING = (64, 64, 3)      # weight files, heads, taps
EXTRA_VARIANTS = {"resnet50_v1.5": ("resnet50", {"variant": "v1.5"})}
FAMILIES = {  # family -> model names; every registry model and variant is in one
    "VGG": ("vgg11", "vgg13", "vgg16", "vgg19"),
    "VGG-BN": ("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"),
    "ResNet basic blocks": ("resnet18", "resnet34"),
    "ResNet v1": ("resnet50", "resnet101", "resnet152"),
    "ResNet v1.5": ("resnet50_v1.5",),
    "ResNet V2": ("resnet50v2", "resnet101v2", "resnet152v2"),
}
PTH_SEED = 3


def seeded_weights(model, seed):
    """Set every variable from NumPy, by its position: the same values on every backend."""
    for index, variable in enumerate(model.weights):
        shape = tuple(variable.shape)
        rng = np.random.default_rng([seed, index, zlib.crc32(str(shape).encode())])
        values = rng.random(shape, dtype=np.float32)
        leaf = variable.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            values += np.float32(0.5)
        elif len(shape) >= 2:                            # kernels: He-uniform over the fan-in
            limit = np.float32((6.0 / int(np.prod(shape[:-1]))) ** 0.5)
            values = values * 2 * limit - limit
        else:                                            # biases, beta, moving mean
            values = values * np.float32(0.2) - np.float32(0.1)
        variable.assign(values)
    return model


def _input(shape, seed=0, batch=2):
    return np.random.default_rng([seed, *shape]).standard_normal((batch,) + shape,
                                                                 dtype=np.float32)


def _forward(model, x):
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))


def _builders():
    from keras_vggres import registry

    cases = {name: (spec.builder, {}) for name, spec in registry.MODELS.items()}
    for name, (base, kwargs) in EXTRA_VARIANTS.items():
        cases[name] = (registry.MODELS[base].builder, kwargs)
    return cases


def prepare(folder):
    """Weight files for `compute`, written on the TensorFlow backend."""
    import keras_vggres
    from keras_vggres.weights.h5 import save_weights_h5
    from tests.support.synthetic_checkpoints import write_checkpoint

    folder = Path(folder)
    r18 = seeded_weights(keras_vggres.ResNet18(weights=None, include_top=False,
                                               input_shape=LOADING), seed=7)
    save_weights_h5(r18, folder / "resnet18_legacy.h5")
    r18.save_weights(str(folder / "resnet18.weights.h5"))
    vgg = seeded_weights(keras_vggres.VGG16BN(weights=None, include_top=False,
                                              input_shape=LOADING), seed=8)
    save_weights_h5(vgg, folder / "vgg16bn_legacy.h5")
    write_checkpoint("resnet18", folder / "resnet18_synthetic.pth", seed=PTH_SEED)


def builder_outputs():
    """`{model name: logits}` for every builder (and v1.5), seeded weights, 32 px."""
    import keras

    from keras_vggres.models import _common

    x, out = _input(SMALL), {}
    for name, (builder, kwargs) in _builders().items():
        with _common.weights_will_load():  # no random initialisation: every value is seeded
            model = builder(weights=None, include_top=True, classes=10, input_shape=SMALL,
                            classifier_activation=None, **kwargs)
        out[f"builder/{name}"] = _forward(seeded_weights(model, seed=1), x)
        keras.backend.clear_session()
    return out


def loading_outputs(folder):
    """Weight files through the builders' `weights=` (our HDF5 loader forced to assign in
    slices, Keras' own format, a `.pth` converted on the fly)."""
    import keras_vggres
    from keras_vggres.weights import assign
    from tests.support import stored_references

    folder, x, out = Path(folder), _input(LOADING), {}
    slice_bytes, assign.ASSIGN_SLICE_BYTES = assign.ASSIGN_SLICE_BYTES, 1000
    try:
        out["load/resnet18_legacy_h5_sliced"] = _forward(keras_vggres.ResNet18(
            weights=str(folder / "resnet18_legacy.h5"), include_top=False,
            input_shape=LOADING), x)
    finally:
        assign.ASSIGN_SLICE_BYTES = slice_bytes
    out["load/resnet18_keras_weights_h5"] = _forward(keras_vggres.ResNet18(
        weights=str(folder / "resnet18.weights.h5"), include_top=False, input_shape=LOADING), x)
    out["load/vgg16bn_legacy_h5"] = _forward(keras_vggres.VGG16BN(
        weights=str(folder / "vgg16bn_legacy.h5"), include_top=False, input_shape=LOADING), x)
    case = stored_references.CASES_BY_NAME["resnet18_notop64x64_s3"]
    assert case.seed == PTH_SEED
    out["load/resnet18_pth"] = _forward(keras_vggres.ResNet18(
        weights=str(folder / "resnet18_synthetic.pth"), include_top=False,
        input_shape=(case.height, case.width, 3)), stored_references.case_input(case))
    return out


def transfer_outputs(folder):
    """optimize_for_inference, classifier, freeze + one SGD step, feature_extractor."""
    import keras

    import keras_vggres
    from keras_vggres.transfer import classifier, feature_extractor, freeze, freeze_summary

    x, out, texts = _input(LOADING), {}, {}
    backbone = keras_vggres.ResNet18(weights=str(Path(folder) / "resnet18_legacy.h5"),
                                     include_top=False, input_shape=LOADING)
    out["transfer/optimized_predict"] = keras_vggres.optimize_for_inference(backbone).predict(
        x, verbose=0)
    taps = feature_extractor(backbone, stages=["stem", "conv2", "conv3", "conv4", "conv5"])(x)
    out.update({f"transfer/features_{k}": keras.ops.convert_to_numpy(v) for k, v in taps.items()})
    head = classifier(backbone, num_classes=3, dropout=0.0)
    logits = seeded_weights(head.get_layer("logits"), seed=5)
    logits.kernel.assign(logits.kernel * 0.01)  # features reach ~100: keep the softmax unsaturated
    out["transfer/classifier_predict"] = head.predict(x, verbose=0)
    freeze(head, up_to="conv4")
    texts["freeze_summary"] = str(freeze_summary(head))
    frozen_bn = backbone.get_layer("conv3_block1_1_bn")
    before = [keras.ops.convert_to_numpy(v) for v in frozen_bn.weights]
    # a small step: conv5 alone has 8M trainable weights and features reach ~100
    head.compile(optimizer=keras.optimizers.SGD(1e-5), loss="sparse_categorical_crossentropy")
    out["transfer/train_loss"] = np.asarray(head.train_on_batch(x, np.array([0, 2])), np.float32)
    out["transfer/after_one_step"] = head.predict(x, verbose=0)
    texts["frozen_bn_unchanged"] = all(np.array_equal(keras.ops.convert_to_numpy(v), old)
                                       for v, old in zip(frozen_bn.weights, before))
    return out, texts


def tensorflow_only_errors(folder):
    """`{feature: error text}` for each TensorFlow-only feature, called on this backend."""
    import keras_vggres
    from keras_vggres import distribute, saving
    from keras_vggres.transfer import finetune, from_folder

    model = keras_vggres.ResNet18(weights=None, include_top=False, input_shape=SMALL)
    calls = {
        "finetune": lambda: finetune(str(folder), model="resnet18", weights=None),
        "from_folder": lambda: from_folder(str(folder)),
        "distribute.strategy": lambda: distribute.strategy("auto"),
        "distribute.build_in_scope": lambda: distribute.build_in_scope("none", list),
        "export_saved_model": lambda: saving.export_saved_model(model, Path(folder) / "sm"),
    }
    errors = {}
    for feature, call in calls.items():
        try:
            call()
        except Exception as err:  # recorded, judged by the parent test
            errors[feature] = f"{type(err).__name__}: {err}"
        else:
            errors[feature] = "no error"
    return errors


def compute(folder, *, builders=True, errors=False):
    """The checks above on this process's backend: (arrays, texts)."""
    start = time.perf_counter()
    arrays = {**(builder_outputs() if builders else {}), **loading_outputs(folder)}
    transfer, texts = transfer_outputs(folder)
    arrays.update(transfer)
    if errors:
        texts["errors"] = tensorflow_only_errors(folder)
    texts["seconds"] = round(time.perf_counter() - start, 1)
    return arrays, texts


class _HideTensorFlow(importlib.abc.MetaPathFinder):
    """`import tensorflow` fails, as on the JAX GPU machines (no TensorFlow installed)."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return None


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--no-builders", action="store_true")
    parser.add_argument("--hide-tensorflow", action="store_true")
    args = parser.parse_args(argv)
    if args.hide_tensorflow:
        sys.meta_path.insert(0, _HideTensorFlow())
    import keras

    backend = keras.backend.backend()
    arrays, texts = compute(args.folder, builders=not args.no_builders,
                            errors=backend != "tensorflow")
    texts["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    np.savez(args.folder / f"{backend}.npz", **arrays)
    (args.folder / f"{backend}.json").write_text(json.dumps(texts, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
