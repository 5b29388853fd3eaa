"""torchvision conversion, checked numerically against PyTorch, with or without PyTorch installed.

Each case: synthetic torchvision weights (`synthetic_checkpoints`, seeded) written as a `.pth`
without torch, read by `load_pth`, converted, assigned to our builder, run on the case input.
The `stored` variant compares with PyTorch's output stored in tests/data/torch_references
(`stored_references`: a missing or stale file fails); the `live` variant (marked `torch`)
runs the PyTorch oracle now and compares with it and with the stored numbers.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_vggres
from keras_vggres.weights import h5
from keras_vggres.weights.convert import TORCHVISION_MODELS, convert_state_dict
from keras_vggres.weights.torch_pth import load_pth
from tests.support import stored_references, synthetic_checkpoints
from tests.support.numerics import rel_diff
from tests.support.pth_writer import save_state_dict
from tests.support.stored_references import CASES, StoredReferenceError

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4          # our Keras model vs PyTorch
STORED_TOLERANCE = 1e-5   # PyTorch now vs the numbers PyTorch stored
BUILDERS = {"resnet18": ("ResNet18", {}), "resnet34": ("ResNet34", {}),
            "resnet50": ("ResNet50", {"variant": "v1.5"}), "vgg11_bn": ("VGG11BN", {}),
            "vgg16": ("VGG16", {})}


@functools.lru_cache(maxsize=1)  # VGG's state dict is 550 MB: keep one (cases come in pairs)
def _checkpoint(model_name, seed, folder):
    state = synthetic_checkpoints.synthetic_state_dict(model_name, seed)
    path = save_state_dict(state, Path(folder) / f"{model_name}_s{seed}.pth")
    return state, path


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    yield tmp_path_factory.mktemp("synthetic_pth")
    _checkpoint.cache_clear()


def keras_output(case, path):
    """Our model's output for `case`, its weights converted from the `.pth` at `path`."""
    builder, kwargs = BUILDERS[case.model_name]
    model = getattr(keras_vggres, builder)(weights=None, include_top=case.include_top,
                                           input_shape=(case.height, case.width, 3),
                                           classifier_activation=None, **kwargs)
    plan = convert_state_dict(load_pth(path), case.model_name, include_top=case.include_top)
    h5.assign_layer_weights(model, plan, source=str(path))
    out = keras.ops.convert_to_numpy(model(stored_references.case_input(case), training=False))
    keras.backend.clear_session()
    return out


_KERAS_OUTPUTS = {}  # case name -> our output, shared by a case's stored and live variants


def _ours(case, path):
    if case.name not in _KERAS_OUTPUTS:
        _KERAS_OUTPUTS[case.name] = keras_output(case, path)
    return _KERAS_OUTPUTS[case.name]


PARAMS = [pytest.param(case, live, id=f"{case.name}-{'live' if live else 'stored'}",
                       marks=[pytest.mark.torch] if live else [])
          for case in CASES for live in (False, True)]


@pytest.mark.parametrize("case, live", PARAMS)
def test_conversion_matches_pytorch(case, live, checkpoint_dir):
    state, path = _checkpoint(case.model_name, case.seed, str(checkpoint_dir))
    x = stored_references.case_input(case)
    stored = stored_references.load_reference(case, state, x)
    ours = _ours(case, path)
    assert ours.shape == stored.shape
    difference = rel_diff(ours, stored)
    print(f"PARITY {case.name} vs stored PyTorch: rel_diff={difference:.2e}")
    assert difference <= TOLERANCE
    if live:
        from tests.support.make_torch_references import torch_output

        now = torch_output(case, state, x)
        print(f"PARITY {case.name} vs live PyTorch: rel_diff={rel_diff(ours, now):.2e}, "
              f"stored vs live {rel_diff(stored, now):.2e}")
        assert rel_diff(ours, now) <= TOLERANCE
        assert rel_diff(stored, now) <= STORED_TOLERANCE


# ------------------------------------------------------------- the stored files themselves


def test_every_case_has_a_reference_and_no_file_is_orphaned():
    stored = {p.name for p in stored_references.REFERENCE_DIR.iterdir()}
    expected = {f"{case.name}.npz" for case in CASES} | {synthetic_checkpoints.SHAPES_FILE.name}
    assert stored == expected
    assert sum(p.stat().st_size for p in stored_references.REFERENCE_DIR.iterdir()) < 2 << 20
    assert set(synthetic_checkpoints.model_names()) == set(TORCHVISION_MODELS)


@pytest.fixture
def reference_copy(tmp_path, monkeypatch):
    """A private copy of the references folder, used by `load_reference` for this test."""
    folder = tmp_path / "torch_references"
    shutil.copytree(stored_references.REFERENCE_DIR, folder)
    monkeypatch.setattr(stored_references, "REFERENCE_DIR", folder)
    return folder


SMALL = stored_references.CASES_BY_NAME["resnet18_notop64x64_s3"]


def _small_arrays():
    return (synthetic_checkpoints.synthetic_state_dict(SMALL.model_name, SMALL.seed),
            stored_references.case_input(SMALL))


def test_a_missing_reference_fails_the_parity_test(reference_copy, checkpoint_dir):
    (reference_copy / f"{SMALL.name}.npz").unlink()
    with pytest.raises(StoredReferenceError, match=rf"{SMALL.name}.npz for case .* is missing; "
                                                   r"regenerate them with `python tests/support/"
                                                   r"make_torch_references.py`"):
        test_conversion_matches_pytorch(SMALL, False, checkpoint_dir)


@pytest.mark.parametrize("change, part", [
    ("seed", "weights"), ("input", "input"), ("oracle", "oracle_source"),
    ("version", "script_version"), ("layout", "state_dict_layout"),
])
def test_a_stale_reference_fails(reference_copy, monkeypatch, tmp_path, change, part):
    state, x = _small_arrays()
    stored_references.load_reference(SMALL, state, x)  # the committed file is current
    if change == "seed":
        state = synthetic_checkpoints.synthetic_state_dict(SMALL.model_name, SMALL.seed + 1)
    elif change == "input":
        x = x + np.float32(1e-3)
    elif change == "oracle":
        oracle = tmp_path / "torch_reference.py"
        oracle.write_text(stored_references.ORACLE_SOURCE.read_text() + "# edited\n")
        monkeypatch.setattr(stored_references, "ORACLE_SOURCE", oracle)
    elif change == "version":
        monkeypatch.setattr(stored_references, "SCRIPT_VERSION",
                            stored_references.SCRIPT_VERSION + 1)
    else:  # a key renamed: same values, another layout
        state = {("renamed." + k if i == 0 else k): v for i, (k, v) in enumerate(state.items())}
    with pytest.raises(StoredReferenceError, match=rf"is stale: it was made from other .*{part}"):
        stored_references.load_reference(SMALL, state, x)


def test_a_corrupt_reference_fails(reference_copy):
    (reference_copy / f"{SMALL.name}.npz").write_bytes(b"not an npz")
    with pytest.raises(StoredReferenceError, match="unreadable"):
        stored_references.load_reference(SMALL, *_small_arrays())


def test_stored_references_are_used_when_torch_cannot_be_imported():
    """A run with PyTorch blocked: the stored comparison passes, the live one is skipped."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.block_torch", "-p", "no:xdist",
         "-p", "no:cacheprovider", "-rs", "-W", "ignore::DeprecationWarning",
         f"tests/test_torch_parity.py::test_conversion_matches_pytorch[{SMALL.name}-stored]",
         f"tests/test_torch_parity.py::test_conversion_matches_pytorch[{SMALL.name}-live]"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
    assert "1 passed, 1 skipped" in out, out[-2000:]
    assert "SKIPPED [1]" in out and "needs PyTorch, which is not installed" in out
    assert "1 tests marked `torch` were SKIPPED" in out
    assert "torch: NOT installed" in out
    assert "TORCH-BLOCKER" in out and "loaded=False" in out


# --------------------------------------------------------------- against PyTorch itself


@pytest.mark.torch
def test_stored_state_dict_layout_matches_the_oracle():
    from tests.support.make_torch_references import oracle_shapes

    stored = json.loads(synthetic_checkpoints.SHAPES_FILE.read_text())
    assert stored == oracle_shapes()


@pytest.mark.torch
def test_written_pth_files_load_in_torch(torch, tmp_path):
    state = synthetic_checkpoints.synthetic_state_dict("resnet18", seed=0)
    state["strided"] = np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1)
    state["scalar"] = np.array(2.5, np.float64)
    path = save_state_dict(state, tmp_path / "r18.pth")
    for loaded in (torch.load(path, weights_only=True), load_pth(path)):
        assert list(loaded) == list(state)
        for key, value in state.items():
            array = loaded[key].numpy() if hasattr(loaded[key], "numpy") else loaded[key]
            assert array.dtype == value.dtype and array.shape == value.shape, key
            np.testing.assert_array_equal(array, value, err_msg=key)
