"""The builders are backend-agnostic: the same weights give the same outputs on JAX and PyTorch
as on TensorFlow.

On JAX also: our HDF5 loader, optimize_for_inference and a transfer head (DESIGN: they must
work there unchanged; the lent GPU machines have JAX, not TensorFlow), with TensorFlow hidden.
On PyTorch: all 16 builders (and v1.5), every weight format, heads, freezing, feature taps.
Either way the TensorFlow-only features raise one clear RuntimeError. The other backend runs in
a subprocess (`tests/support/backend_checks.py`) while this process computes TensorFlow's side.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_vggres
from keras_vggres.weights.h5 import save_weights_h5
from tests.support import backend_checks, stored_references, synthetic_checkpoints
from tests.support.numerics import randomize_weights, rel_diff

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4

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


@pytest.mark.jax
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


# ------------------------------------------------------------------ the other backends, in full


def _against_tensorflow(folder, backend, *flags):
    """Run `backend_checks` on `backend` in a child while TensorFlow computes the same here;
    return (TensorFlow's arrays and texts, the child's arrays and texts)."""
    backend_checks.prepare(folder)
    keras.backend.clear_session()
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen([sys.executable, "-m", "tests.support.backend_checks", str(folder),
                              *flags], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        ours = backend_checks.compute(folder, builders="--no-builders" not in flags)
        _, stderr = child.communicate(timeout=900)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr[-3000:]
    with np.load(folder / f"{backend}.npz") as data:
        arrays = {name: data[name] for name in data.files}
    return ours, (arrays, json.loads((folder / f"{backend}.json").read_text()))


def _differences(ours, theirs):
    assert sorted(theirs) == sorted(ours)
    return {name: rel_diff(theirs[name], ours[name]) for name in ours}


def _check_errors(errors, backend):
    assert set(errors) == {"finetune", "from_folder", "distribute.strategy",
                           "distribute.build_in_scope", "export_saved_model"}
    for feature, text in errors.items():
        assert text.startswith("RuntimeError: "), (feature, text)
        assert "needs the TensorFlow backend of Keras" in text, (feature, text)
        assert f"running the {backend!r} backend (KERAS_BACKEND={backend!r})" in text, text
        assert "Set KERAS_BACKEND=tensorflow before Keras is imported" in text, text


@pytest.mark.torch
def test_torch_backend_matches_tensorflow(tmp_path):
    (tf_arrays, tf_texts), (arrays, texts) = _against_tensorflow(tmp_path, "torch")
    differences = _differences(tf_arrays, arrays)
    families = {family: max(differences[f"builder/{name}"] for name in names)
                for family, names in backend_checks.FAMILIES.items()}
    print("TORCH vs TF max relative difference per family:",
          {k: f"{v:.1e}" for k, v in families.items()}, "others:",
          {k: f"{v:.1e}" for k, v in differences.items() if not k.startswith("builder/")},
          f"(child {texts['seconds']} s)")
    assert {k for k in differences if k.startswith("builder/")} == {
        f"builder/{name}" for names in backend_checks.FAMILIES.values() for name in names}
    assert {k: v for k, v in differences.items() if not v <= TOLERANCE} == {}
    case = stored_references.CASES_BY_NAME["resnet18_notop64x64_s3"]   # the .pth, vs PyTorch
    state = synthetic_checkpoints.synthetic_state_dict(case.model_name, case.seed)
    stored = stored_references.load_reference(case, state, stored_references.case_input(case))
    assert rel_diff(arrays["load/resnet18_pth"][:1], stored) <= TOLERANCE
    assert texts["freeze_summary"] == tf_texts["freeze_summary"]
    assert texts["frozen_bn_unchanged"] and tf_texts["frozen_bn_unchanged"]
    _check_errors(texts["errors"], "torch")


@pytest.mark.jax
def test_jax_without_tensorflow_loads_trains_and_says_what_needs_tensorflow(tmp_path):
    """As on the JAX GPU machines: `import tensorflow` fails, everything but the TensorFlow
    programs works and matches TensorFlow's numbers; those raise one clear error."""
    (tf_arrays, tf_texts), (arrays, texts) = _against_tensorflow(
        tmp_path, "jax", "--no-builders", "--hide-tensorflow")
    differences = _differences(tf_arrays, arrays)
    print("JAX (no TensorFlow) vs TF:", {k: f"{v:.1e}" for k, v in differences.items()})
    assert {k: v for k, v in differences.items() if not v <= TOLERANCE} == {}
    assert texts["freeze_summary"] == tf_texts["freeze_summary"]
    assert texts["frozen_bn_unchanged"]
    assert texts["tensorflow_imported"] is False
    _check_errors(texts["errors"], "jax")
