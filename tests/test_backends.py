"""The builders are backend-agnostic: the same weights give the same outputs on JAX as on TF.

On JAX also: our HDF5 loader, optimize_for_inference and a transfer head (DESIGN: they must
work there unchanged; the lent GPU machines have JAX, not TensorFlow)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

import keras_vggres
from keras_vggres.weights.h5 import save_weights_h5
from tests.support.numerics import randomize_weights

CASES = {  # builder: input shape (small, no top: the point is the backend, not the size)
    "ResNet18": (64, 64, 3), "ResNet50": (64, 64, 3), "VGG16BN": (64, 64, 3),
}

JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    import keras_vggres
    cases = json.loads(sys.argv[1]); folder = sys.argv[2]
    report = {}
    for name, shape in cases.items():
        model = getattr(keras_vggres, name)(weights=None, include_top=False,
                                            input_shape=tuple(shape))
        model.load_weights(f"{folder}/{name}.weights.h5")
        data = np.load(f"{folder}/{name}.npz")
        out = np.asarray(model.predict(data["x"], verbose=0))
        ref = data["y"]
        report[name] = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
        if name == "ResNet18":  # our legacy-HDF5 loader (placeholder kernels, in-place writes),
            # BatchNorm folding and a transfer head, all on JAX
            loaded = keras_vggres.ResNet18(weights=f"{folder}/ResNet18_legacy.h5",
                                           include_top=False, input_shape=tuple(shape))
            loaded_out = np.asarray(loaded.predict(data["x"], verbose=0))
            report["ResNet18_legacy_h5"] = float(np.max(np.abs(loaded_out - ref)) /
                                                 np.max(np.abs(ref)))
            folded = keras_vggres.optimize_for_inference(loaded)
            folded_out = np.asarray(folded.predict(data["x"], verbose=0))
            report["ResNet18_optimized"] = float(np.max(np.abs(folded_out - ref)) /
                                                 np.max(np.abs(ref)))
            from keras_vggres.transfer import classifier
            probs = np.asarray(classifier(loaded, num_classes=3).predict(data["x"], verbose=0))
            report["ResNet18_head_sum_error"] = float(np.max(np.abs(probs.sum(axis=1) - 1)))
        if name == "ResNet50":  # and against keras.applications on the same backend
            app = keras.applications.ResNet50(weights=None, include_top=False,
                                              input_shape=tuple(shape))
            for layer in app.layers:
                if layer.weights:
                    layer.set_weights(model.get_layer(layer.name).get_weights())
            app_out = np.asarray(app.predict(data["x"], verbose=0))
            report["ResNet50_vs_keras_applications"] = float(
                np.max(np.abs(out - app_out)) / np.max(np.abs(app_out)))
    print("REPORT " + json.dumps(report))
""")


def test_builders_match_across_tf_and_jax(tmp_path):
    rng = np.random.default_rng(0)
    for name, shape in CASES.items():
        model = getattr(keras_vggres, name)(weights=None, include_top=False, input_shape=shape)
        randomize_weights(model, seed=3)
        model.save_weights(str(tmp_path / f"{name}.weights.h5"))
        save_weights_h5(model, tmp_path / f"{name}_legacy.h5")
        x = rng.normal(0, 1, (2,) + shape).astype("float32")
        np.savez(tmp_path / f"{name}.npz", x=x, y=model.predict(x, verbose=0))
        keras.backend.clear_session()

    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, json.dumps(CASES), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    report = json.loads(line[len("REPORT "):])
    print(report)
    assert set(report) == set(CASES) | {"ResNet50_vs_keras_applications", "ResNet18_legacy_h5",
                                        "ResNet18_optimized", "ResNet18_head_sum_error"}
    for name, diff in report.items():
        assert diff <= 1e-4, (name, diff)
