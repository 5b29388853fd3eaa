"""torchvision state dict -> our Keras layers: the name map, its errors, loading paths.

torchvision's keys and shapes come from the PyTorch oracle (tests/support/torch_reference.py,
stored by make_torch_references.py), its values from `synthetic_checkpoints` (seeded), so these
tests need no PyTorch. The oracle copies torchvision's own definitions and shares no table with
the package, so a wrong fact in `models/specs.py` fails here; numeric parity with PyTorch for
whole models is in tests/test_torch_parity.py.
"""

import dataclasses
import inspect
import os
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest

import keras_vggres
from keras_vggres import registry
from keras_vggres.models import specs
from keras_vggres.weights import h5
from keras_vggres.weights.convert import (TORCHVISION_MODELS, convert_pth_file, convert_state_dict,
                                          linear_to_dense, oihw_to_hwio, torchvision_layer_map,
                                          vgg_fc1_to_dense)
from keras_vggres.weights.torch_pth import load_pth
from tests.support import pth_writer, stored_references, synthetic_checkpoints
from tests.support.numerics import rel_diff

TOLERANCE = 1e-4
HEADS = {"fc.weight", "fc.bias"} | {f"classifier.{i}.{p}" for i in (0, 3, 6)
                                    for p in ("weight", "bias")}


def _fake_state_dict(model_name, *, include_top=True):
    """Zero arrays of torchvision's exact keys and shapes, without allocating them."""
    shapes = synthetic_checkpoints.state_dict_shapes(model_name)
    return {key: np.broadcast_to(np.zeros((), np.int64 if key.endswith("tracked") else np.float32),
                                 shape)
            for key, shape in shapes.items() if include_top or key not in HEADS}


@pytest.fixture(scope="module")
def resnet18_state():
    return dict(synthetic_checkpoints.synthetic_state_dict("resnet18", seed=0))


def _builder_kwargs(model_name):
    builder = registry.MODELS[model_name].builder
    return {"variant": "v1.5"} if "variant" in inspect.signature(builder).parameters else {}


# ---------------------------------------------------------------------- the name map


@pytest.mark.parametrize("model_name", TORCHVISION_MODELS)
def test_layer_map_uses_every_torchvision_key(model_name):
    torch_keys = set(synthetic_checkpoints.state_dict_shapes(model_name))
    mapped = [key for sources in torchvision_layer_map(model_name).values() for key, _ in sources]
    assert len(mapped) == len(set(mapped))
    counters = {k for k in torch_keys if k.endswith(".num_batches_tracked")}
    assert set(mapped) == torch_keys - counters


@pytest.mark.parametrize("model_name", TORCHVISION_MODELS)
def test_converted_shapes_fit_our_model(model_name):
    """Every torchvision model converts (no top: fc1 would allocate 400 MB) onto our layers."""
    plan = convert_state_dict(_fake_state_dict(model_name, include_top=False), model_name,
                              include_top=False)
    model = registry.MODELS[model_name].builder(weights=None, include_top=False,
                                                input_shape=(32, 32, 3),
                                                **_builder_kwargs(model_name))
    ours = {layer.name: [tuple(w.shape) for w in layer.trainable_weights
                         + layer.non_trainable_weights]
            for layer in model.layers if layer.weights}
    assert {name: [a.shape for a in arrays] for name, arrays in plan.items()} == ours
    keras.backend.clear_session()


@pytest.mark.parametrize("model_name", [m for m in TORCHVISION_MODELS if m.startswith("resnet")])
def test_resnet_heads_convert(model_name):
    plan = convert_state_dict(_fake_state_dict(model_name), model_name)
    width = 512 if model_name in ("resnet18", "resnet34") else 2048
    assert [a.shape for a in plan["predictions"]] == [(width, 1000), (1000,)]


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"`model_name` must be one of \('vgg11', .*'vgg19_bn', "
                                         r"'resnet18', .*\); received model_name='resnet50v2'"):
        torchvision_layer_map("resnet50v2")


# ------------------------------------------------------------------------- transforms


def test_oihw_to_hwio():
    kernel = np.arange(4 * 3 * 2 * 5, dtype=np.float32).reshape(4, 3, 2, 5)
    out = oihw_to_hwio(kernel)
    assert out.shape == (2, 5, 3, 4) and out.flags.c_contiguous
    assert out[1, 4, 2, 3] == kernel[3, 2, 1, 4]
    with pytest.raises(ValueError, match="4-D"):
        oihw_to_hwio(kernel[0])


def test_linear_to_dense_computes_the_same_product():
    rng = np.random.default_rng(0)
    weight, x = rng.normal(size=(7, 5)), rng.normal(size=5)
    np.testing.assert_allclose(x @ linear_to_dense(weight), weight @ x)


def test_vgg_fc1_maps_chw_flattening_to_hwc():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 512 * 7 * 7)).astype(np.float32)
    features_chw = rng.normal(size=(512, 7, 7)).astype(np.float32)
    torch_out = weight @ features_chw.reshape(-1)
    keras_out = features_chw.transpose(1, 2, 0).reshape(-1) @ vgg_fc1_to_dense(weight)
    np.testing.assert_allclose(keras_out, torch_out, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="25088 input features"):
        vgg_fc1_to_dense(weight[:, :100])


# ----------------------------------------------------------------------------- errors


def test_conversion_orders_weights_like_keras(resnet18_state):
    plan = convert_state_dict(resnet18_state, "resnet18")
    bn = [resnet18_state[f"bn1.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]
    for ours, theirs in zip(plan["conv1_bn"], bn):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(plan["conv1_conv"][0],
                                  resnet18_state["conv1.weight"].transpose(2, 3, 1, 0))
    assert len(plan["conv1_conv"]) == 1  # torchvision's ResNet convs have no bias
    np.testing.assert_array_equal(plan["predictions"][0], resnet18_state["fc.weight"].T)
    assert all(a.dtype == np.float32 for arrays in plan.values() for a in arrays)


def test_missing_keys_are_named_with_a_count(resnet18_state):
    state = {k: v for k, v in resnet18_state.items() if not k.startswith("layer4.")}
    with pytest.raises(ValueError, match=r"resnet18: missing keys: 2\d \('layer4\.0\.bn1\.bias', "
                                         r".*, \.\.\.\)") as info:
        convert_state_dict(state, "resnet18")
    assert "unexpected" not in str(info.value)


def test_state_dict_must_be_a_mapping():
    with pytest.raises(TypeError, match="`state_dict` must be a mapping.*list"):
        convert_state_dict([("conv1.weight", np.zeros(1))], "resnet18")


def test_unexpected_keys_are_named(resnet18_state):
    state = {**resnet18_state, "layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected keys: 1 \('layer5\.0\.conv1\.weight'\)"):
        convert_state_dict(state, "resnet18")


def test_wrong_architecture_is_reported_both_ways(resnet18_state):
    with pytest.raises(ValueError, match=r"resnet34: missing keys: 80 \('layer1\.2\.bn1\.bias'"):
        convert_state_dict(resnet18_state, "resnet34")
    with pytest.raises(ValueError, match=r"vgg11: missing keys: 22 \('classifier\.0\.bias', .*\); "
                                         r"unexpected keys: 122 \('bn1\.bias', "):
        convert_state_dict(resnet18_state, "vgg11")


def test_dataparallel_prefix_gets_a_hint(resnet18_state):
    state = {f"module.{k}": v for k, v in resnet18_state.items()}
    with pytest.raises(ValueError, match="'module.'.*strip that prefix"):
        convert_state_dict(state, "resnet18")


def test_wrong_shape_names_key_expected_and_got(resnet18_state):
    state = {**resnet18_state, "layer2.0.conv1.weight": np.zeros((128, 64, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"'layer2\.0\.conv1\.weight': expected shape "
                                         r"\(128, 64, 3, 3\), got \(128, 64, 1, 1\)"):
        convert_state_dict(state, "resnet18")


def test_head_with_inconsistent_classes(resnet18_state):
    state = {**resnet18_state, "fc.bias": np.zeros(10, np.float32)}
    with pytest.raises(ValueError, match=r"\['fc\.weight', 'fc\.bias'\]: output sizes disagree"):
        convert_state_dict(state, "resnet18")


def test_fine_tuned_head_with_other_classes_converts(resnet18_state):
    state = {**resnet18_state, "fc.weight": np.ones((10, 512), np.float32),
             "fc.bias": np.ones(10, np.float32)}
    assert [a.shape for a in convert_state_dict(state, "resnet18")["predictions"]] == [(512, 10),
                                                                                       (10,)]


def test_integer_tensor_for_a_weight_is_rejected(resnet18_state):
    state = {**resnet18_state, "bn1.running_var": np.ones(64, np.int64)}
    with pytest.raises(ValueError, match="'bn1.running_var': expected a floating-point tensor"):
        convert_state_dict(state, "resnet18")


def test_without_top_the_head_is_optional_and_ignored(resnet18_state):
    with_head = convert_state_dict(resnet18_state, "resnet18", include_top=False)
    headless = {k: v for k, v in resnet18_state.items() if not k.startswith("fc.")}
    without_head = convert_state_dict(headless, "resnet18", include_top=False)
    assert "predictions" not in with_head and list(with_head) == list(without_head)
    with pytest.raises(ValueError, match=r"missing keys: 2 \('fc\.bias', 'fc\.weight'\)"):
        convert_state_dict(headless, "resnet18")


def test_batchnorm_counters_are_optional(resnet18_state):
    old_style = {k: v for k, v in resnet18_state.items() if "num_batches_tracked" not in k}
    assert convert_state_dict(old_style, "resnet18").keys() == \
        convert_state_dict(resnet18_state, "resnet18").keys()


def test_half_precision_state_dict_converts_to_float32(resnet18_state):
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v
            for k, v in resnet18_state.items()}
    plan = convert_state_dict(half, "resnet18")
    assert plan["conv1_bn"][3].dtype == np.float32


# ------------------------------------------------------------------ files and loading


SMALL = stored_references.CASES_BY_NAME["resnet18_notop64x64_s3"]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """The small stored case's checkpoint: its state dict, its `.pth` file."""
    path = tmp_path_factory.mktemp("pth") / "resnet18-random.pth"
    state = synthetic_checkpoints.write_checkpoint(SMALL.model_name, path, seed=SMALL.seed)
    return state, path


def _small_reference(state):
    """PyTorch's stored output for the small case, and its input."""
    x = stored_references.case_input(SMALL)
    return stored_references.load_reference(SMALL, state, x), x


def test_convert_pth_file_writes_a_legacy_h5(resnet18_file, tmp_path):
    _, path = resnet18_file
    out = convert_pth_file(path, "resnet18", tmp_path / "r18.h5", include_top=False)
    expected = convert_state_dict(load_pth(path), "resnet18", include_top=False)
    written = h5.read_weight_file(out)
    assert list(written) == list(expected)
    for name in expected:
        for ours, theirs in zip(written[name], expected[name]):
            np.testing.assert_array_equal(ours, theirs)
    shapes = h5.read_weight_shapes(out)
    assert [w for w, _ in shapes["conv1_bn"]] == ["conv1_bn/gamma:0", "conv1_bn/beta:0",
                                                 "conv1_bn/moving_mean:0",
                                                 "conv1_bn/moving_variance:0"]
    assert [w for w, _ in shapes["conv1_conv"]] == ["conv1_conv/kernel:0"]


def test_failed_conversion_leaves_no_file(resnet18_file, tmp_path):
    _, path = resnet18_file
    out = tmp_path / "r34.h5"
    with pytest.raises(ValueError, match="resnet34"):
        convert_pth_file(path, "resnet34", out)
    assert os.listdir(tmp_path) == []


def _forward(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_builders_load_pth_and_converted_h5(resnet18_file, tmp_path):
    """The user path: `weights=<file.pth>` and `weights=<converted.h5>` give torch's outputs."""
    state, path = resnet18_file
    expected, x = _small_reference(state)
    h5_path = convert_pth_file(path, "resnet18", tmp_path / "r18.h5", include_top=False)
    for weights in (str(path), str(h5_path)):
        model = keras_vggres.ResNet18(weights=weights, include_top=False, input_shape=(64, 64, 3))
        assert rel_diff(_forward(model, x), expected) <= TOLERANCE, weights


# --------------------------------------------------------------------- without torch


def test_reading_and_converting_need_no_torch(resnet18_file, tmp_path):
    _, path = resnet18_file
    out = tmp_path / "conv1.npy"
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import keras_vggres
        from keras_vggres.weights.convert import convert_state_dict
        from keras_vggres.weights.torch_pth import load_pth
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        plan = convert_state_dict(load_pth({str(path)!r}), "resnet18")
        assert not [m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None]
        np.save({str(out)!r}, plan["conv1_conv"][0])
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = resnet18_file[0]["conv1.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.load(out), expected)


# ------------------------------------------------------- the oracle does not share our tables


def _borrowed(module):
    return [name for name, value in vars(module).items()
            if (value.__name__ if isinstance(value, types.ModuleType)
                else getattr(value, "__module__", None) or "").startswith("keras_vggres")]


@pytest.mark.torch
def test_oracle_uses_no_package_table():
    from tests.support import make_torch_references, torch_reference

    assert _borrowed(torch_reference) == [] and _borrowed(make_torch_references) == []


def test_torch_free_stand_ins_use_no_package_table():
    """The synthetic weights, the .pth writer and the stored references borrow nothing either."""
    for module in (synthetic_checkpoints, pth_writer, stored_references):
        assert _borrowed(module) == [], module.__name__


@pytest.mark.parametrize("model_name, table, key, wrong, pattern", [
    ("resnet34", specs.RESNET_SPECS, "resnet34", ("basic", (3, 4, 5, 3)),
     r"resnet34: unexpected keys: 12 \('layer3\.5\.bn1\.bias'"),
    ("resnet50", specs.EXPANSION, "bottleneck", 2,
     r"resnet50: 115 bad tensors: 'layer1\.0\.downsample\.0\.weight': expected shape "
     r"\(128, 64, 1, 1\), got \(256, 64, 1, 1\)"),
    ("vgg13_bn", specs.VGG_DEPTHS, 13, (2, 2, 2, 2, 1),
     r"vgg13_bn: unexpected keys: 7 \('features\.31\.bias'"),
])
def test_a_wrong_table_entry_fails_against_the_oracle(monkeypatch, model_name, table, key, wrong,
                                                      pattern):
    state = _fake_state_dict(model_name, include_top=False)
    convert_state_dict(state, model_name, include_top=False)   # the true table converts
    monkeypatch.setitem(table, key, wrong)
    with pytest.raises(ValueError, match=pattern):
        convert_state_dict(state, model_name, include_top=False)


def test_a_wrong_width_fails_against_the_oracle(monkeypatch):
    state = _fake_state_dict("resnet18", include_top=False)
    monkeypatch.setattr(specs, "STAGE_WIDTHS", (64, 128, 256, 256))
    with pytest.raises(ValueError, match=r"'layer4\.0\.downsample\.0\.weight': expected "
                                         r"shape \(256, 256, 1, 1\), got \(512, 256, 1, 1\)"):
        convert_state_dict(state, "resnet18", include_top=False)


def test_a_wrong_stride_rule_fails_numeric_parity(monkeypatch, resnet18_file):
    """Strides change no weight shape: the oracle's forward pass is what catches them."""
    state, path = resnet18_file
    expected, x = _small_reference(state)
    plan = convert_state_dict(load_pth(path), "resnet18", include_top=False)
    differences = []
    for stride_block in ("first", "last"):   # torchvision's rule, then a wrong one
        style = dataclasses.replace(specs.STYLES["v1.5"], stride_block=stride_block)
        monkeypatch.setitem(specs.STYLES, "v1.5", style)
        model = keras_vggres.ResNet18(weights=None, include_top=False, input_shape=(64, 64, 3))
        h5.assign_layer_weights(model, plan, source=str(path))
        actual = _forward(model, x)
        differences.append(rel_diff(actual, expected) if actual.shape == expected.shape
                           else np.inf)
    assert differences[0] <= TOLERANCE < differences[1]
