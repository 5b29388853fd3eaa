"""Legacy HDF5 weight files: read by layer name, all or nothing, against files tf-keras writes."""

from __future__ import annotations

import shutil
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
from tests.support.tfkeras_files import Reference, make_reference, seeded_value, tfkeras_outputs

from keras_vggres import models
from keras_vggres.weights import h5 as wh5

# (keras.applications name, include_top, input size). VGG16 top at 32 px keeps fc1 small
# (512 x 4096) while keeping the flatten -> fc1 -> fc2 -> predictions head.
CASES = {
    "vgg16_notop": ("VGG16", False, 64),
    "vgg16_top": ("VGG16", True, 32),
    "resnet50_top": ("ResNet50", True, 64),
    "resnet50v2_top": ("ResNet50V2", True, 64),
    "resnet50v2_notop": ("ResNet50V2", False, 64),
}


@pytest.fixture(scope="session")
def refs(tmp_path_factory):
    """Reference files, made lazily by tf-keras once per session."""
    folder = tmp_path_factory.mktemp("tfkeras_h5")
    made: dict[str, Reference] = {}

    def get(case: str) -> Reference:
        if case not in made:
            model, include_top, size = CASES[case]
            made[case] = make_reference(model, folder, include_top=include_top, size=size)
        return made[case]

    return get


def build(ref: Reference, **overrides):
    return getattr(keras.applications, ref.model)(**ref.builder_kwargs(**overrides))


def outputs(model, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_outputs_match(model, ref: Reference) -> None:
    y = outputs(model, ref.x)
    np.testing.assert_allclose(y, ref.y, rtol=1e-4, atol=1e-4 * np.abs(ref.y).max())


def file_weights(path) -> dict[str, list[np.ndarray]]:
    """An independent plain-h5py oracle: follow layer_names and weight_names, nothing else."""
    def names(attrs, key):
        return [n.decode() if isinstance(n, bytes) else n for n in attrs[key]]

    with h5py.File(path, "r") as f:
        return {
            layer: [f[layer][w][()] for w in names(f[layer].attrs, "weight_names")]
            for layer in names(f.attrs, "layer_names")
            if len(f[layer].attrs["weight_names"])
        }


def assert_weights_equal_file(model, path) -> None:
    expected = file_weights(path)
    weighted = [layer for layer in model.layers if layer.weights]
    assert sorted(layer.name for layer in weighted) == sorted(expected)
    for layer in weighted:
        got = [v.numpy() for v in layer.trainable_weights + layer.non_trainable_weights]
        assert len(got) == len(expected[layer.name])
        for a, b in zip(got, expected[layer.name]):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), layer.name


def snapshot(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.weights]


def assert_unchanged(model, before) -> None:
    after = snapshot(model)
    assert len(after) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(after, before))


def edit_copy(src, dst, edit) -> str:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return str(dst)


def set_layer_names(f, names) -> None:
    f.attrs["layer_names"] = np.array([n.encode() for n in names])


def layer_names(f) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]


# ---------------------------------------------------------------- loading real tf-keras files


@pytest.mark.tf_keras
@pytest.mark.parametrize("case", list(CASES))
def test_load_matches_tfkeras(refs, case):
    ref = refs(case)
    model = build(ref)
    wh5.load_weights(model, ref.path)
    assert_weights_equal_file(model, ref.path)
    assert_outputs_match(model, ref)


@pytest.mark.tf_keras
def test_read_weight_file_follows_weight_names(refs):
    ref = refs("resnet50v2_notop")
    plan = wh5.read_weight_file(ref.path)
    oracle = file_weights(ref.path)
    assert list(plan) == list(oracle)  # layer_names order, weightless layers dropped
    assert all(len(plan[k]) == len(oracle[k]) for k in plan)
    assert all(np.array_equal(a, b) for k in plan for a, b in zip(plan[k], oracle[k]))
    shapes = wh5.read_weight_shapes(ref.path)
    assert shapes["conv1_conv"] == [
        ("conv1_conv/kernel:0", (7, 7, 3, 64)), ("conv1_conv/bias:0", (64,))]
    assert shapes["conv2_block1_1_conv"] == [  # a conv without bias has one weight
        ("conv2_block1_1_conv/kernel:0", (1, 1, 64, 64))]
    bn = [w.split("/")[-1] for w, _ in shapes["conv2_block1_preact_bn"]]
    assert bn == ["gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"]


@pytest.mark.tf_keras
def test_keras_vggres_builders_load(refs):
    for case in ("resnet50_top", "resnet50v2_notop", "vgg16_notop"):
        ref = refs(case)
        builder = getattr(models, ref.model)
        model = builder(**ref.builder_kwargs())
        wh5.load_weights(model, ref.path)
        assert_weights_equal_file(model, ref.path)
        assert_outputs_match(model, ref)
        from_path = builder(**ref.builder_kwargs(weights=str(ref.path)))  # weights=<file>
        assert_weights_equal_file(from_path, ref.path)


@pytest.mark.tf_keras
@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_layer_order_in_file_does_not_matter(refs, tmp_path, order):
    ref = refs("resnet50_top")

    def reorder(f):
        names = layer_names(f)
        if order == "reversed":
            names.reverse()
        else:
            np.random.default_rng(3).shuffle(names)
        set_layer_names(f, names)

    path = edit_copy(ref.path, tmp_path / "reordered.h5", reorder)
    model = build(ref)
    wh5.load_weights(model, path)
    assert_weights_equal_file(model, ref.path)
    assert_outputs_match(model, ref)


def keras1_copy(ref: Reference, path) -> str:
    """Rewrite a file with Keras-1 flat names (``block1_conv1_W_1:0``), no top-level group."""
    suffix = {"kernel": "W", "bias": "b"}
    layers, shapes_by_layer = [], wh5.read_weight_shapes(ref.path)
    for layer, arrays in wh5.read_weight_file(ref.path).items():
        short = [w.split("/")[-1][: -len(":0")] for w, _ in shapes_by_layer[layer]]
        flat = [f"{layer}_{suffix.get(w, w)}_1:0" for w in short]
        layers.append((layer, list(zip(flat, arrays))))
    with h5py.File(ref.path, "r") as f:
        all_names = layer_names(f)
    wh5.write_weight_file(path, layers, layer_names=all_names)
    with h5py.File(path, "r+") as f:
        del f[wh5.TOP_LEVEL_GROUP]
        del f.attrs["keras_version"]
    return str(path)


@pytest.mark.tf_keras
@pytest.mark.parametrize("case", ["vgg16_notop", "resnet50v2_notop"])
def test_keras1_flat_weight_names(refs, tmp_path, case):
    ref = refs(case)
    path = keras1_copy(ref, tmp_path / "keras1.h5")
    with h5py.File(path, "r") as f:
        first = next(n for n in layer_names(f) if len(f[n].attrs["weight_names"]))
        assert all("/" not in n.decode() for n in f[first].attrs["weight_names"])
        assert "_W_1:0" in f[first].attrs["weight_names"][0].decode()
    model = build(ref)
    wh5.load_weights(model, path)
    assert_weights_equal_file(model, ref.path)
    assert_outputs_match(model, ref)


@pytest.mark.tf_keras
def test_split_attrs_vlen_strings_and_full_model_file(refs, tmp_path):
    ref = refs("vgg16_notop")

    def split(f):  # layer_names0/1 (vlen str), as Keras writes attrs over 64 KB
        names = layer_names(f)
        del f.attrs["layer_names"]
        f.attrs["layer_names0"] = names[:7]
        f.attrs["layer_names1"] = names[7:]

    def nest(f):  # a full-model file keeps the weights in a `model_weights` group
        group = f.create_group("model_weights")
        for key in [k for k in f if k != "model_weights"]:
            f.move(key, f"model_weights/{key}")
        for key, value in list(f.attrs.items()):
            group.attrs[key] = value
            del f.attrs[key]

    for edit in (split, nest):
        path = edit_copy(ref.path, tmp_path / f"{edit.__name__}.h5", edit)
        model = build(ref)
        wh5.load_weights(model, path)
        assert_outputs_match(model, ref)


@pytest.mark.tf_keras
def test_chunked_compressed_datasets(refs, tmp_path):
    ref = refs("vgg16_notop")
    path = tmp_path / "gzip.h5"
    with h5py.File(ref.path, "r") as src, h5py.File(path, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        src.visititems(lambda name, obj: _copy_node(dst, name, obj))
    model = build(ref)
    wh5.load_weights(model, path)
    assert_outputs_match(model, ref)


def _copy_node(dst, name, obj):
    if isinstance(obj, h5py.Group):
        group = dst.require_group(name)
        for key, value in obj.attrs.items():
            group.attrs[key] = value
    else:
        dst.create_dataset(name, data=obj[()], compression="gzip", chunks=True)


# ---------------------------------------------------------------- errors: clear, model untouched


@pytest.fixture()
def vgg_notop(refs):
    ref = refs("vgg16_notop")
    model = build(ref)
    wh5.load_weights(model, refs("vgg16_notop").path)
    # a different state than the file, so an accidental partial load would show
    for v in model.weights:
        v.assign(v * 0.5 + 1.0)
    return ref, model, snapshot(model)


def _wrong_shape(f):
    del f["block5_conv3/block5_conv3/kernel:0"]
    f.create_dataset("block5_conv3/block5_conv3/kernel:0", data=np.zeros((3, 3, 512, 256), "f4"))


def _missing_layer(f):
    set_layer_names(f, [n for n in layer_names(f) if n != "block3_conv2"])
    del f["block3_conv2"]


def _extra_layer(f):
    set_layer_names(f, layer_names(f) + ["extra_dense"])
    group = f.create_group("extra_dense")
    group.attrs["weight_names"] = [b"extra_dense/kernel:0"]
    group.create_dataset("extra_dense/kernel:0", data=np.ones((4, 4), np.float32))


def _dropped_bias(f):
    f["block4_conv1"].attrs["weight_names"] = [b"block4_conv1/kernel:0"]


def _dangling_weight_name(f):
    f["block2_conv1"].attrs["weight_names"] = [b"block2_conv1/kernel:0", b"block2_conv1/nothing:0"]


def _string_data(f):
    del f["block5_conv3/block5_conv3/bias:0"]
    f.create_dataset("block5_conv3/block5_conv3/bias:0", data=np.array([b"x"] * 512))


@pytest.mark.parametrize(
    "edit, words",
    [
        (_wrong_shape, ["block5_conv3/kernel", "model (3, 3, 512, 512) vs file (3, 3, 512, 256)",
                        "1 shape"]),
        (_missing_layer, ["block3_conv2", "missing from the file", "1 missing"]),
        (_extra_layer, ["extra_dense", "not in the model", "1 unexpected"]),
        (_dropped_bias, ["block4_conv1", "model has 2 weights (kernel, bias), file has 1"]),
        (_dangling_weight_name, ["block2_conv1", "nothing:0", "no such dataset"]),
        (_string_data, ["block5_conv3", "not numeric"]),
    ],
)
def test_bad_file_raises_and_leaves_model_unchanged(vgg_notop, tmp_path, edit, words):
    ref, model, before = vgg_notop
    path = edit_copy(ref.path, tmp_path / "bad.h5", edit)
    with pytest.raises(ValueError) as err:
        wh5.load_weights(model, path)
    for word in words + [str(path)]:
        assert word in str(err.value)
    assert_unchanged(model, before)


def test_checks_read_no_data_and_each_weight_is_read_once(vgg_notop, tmp_path, monkeypatch):
    """Pass 1 uses metadata only; pass 2 reads each dataset once (peak memory ~ one tensor)."""
    ref, model, _ = vgg_notop
    reads = []
    real = h5py.Dataset.__array__

    def counting(self, *args, **kwargs):
        reads.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__array__", counting)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("unexpected read"))
    with pytest.raises(ValueError, match="block5_conv3"):
        wh5.load_weights(model, edit_copy(ref.path, tmp_path / "bad.h5", _wrong_shape))
    assert reads == []
    wh5.load_weights(model, ref.path)
    assert len(reads) == len(set(reads)) == len(model.weights) == 26


@pytest.mark.parametrize("kind", ["truncated", "not_hdf5", "empty"])
def test_unreadable_file_raises_and_leaves_model_unchanged(vgg_notop, tmp_path, kind):
    ref, model, before = vgg_notop
    path = tmp_path / "bad.h5"
    data = ref.path.read_bytes()
    contents = {"truncated": data[: len(data) // 2], "not_hdf5": b"<html>404</html>", "empty": b""}
    path.write_bytes(contents[kind])
    with pytest.raises(ValueError, match="not a readable HDF5 weight file") as err:
        wh5.load_weights(model, path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="not a readable HDF5 weight file"):
        wh5.read_weight_file(path)
    assert_unchanged(model, before)


def test_missing_file(vgg_notop, tmp_path):
    _, model, before = vgg_notop
    for path in (tmp_path / "nope.h5", tmp_path / "nope.weights.h5"):
        with pytest.raises(FileNotFoundError, match="nope"):
            wh5.load_weights(model, path)
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        wh5.read_weight_file(tmp_path / "nope.h5")
    assert_unchanged(model, before)


@pytest.mark.tf_keras
def test_notop_file_into_top_model_and_wrong_architecture(refs):
    top = build(refs("vgg16_top"))
    before = snapshot(top)
    with pytest.raises(ValueError, match=r"3 missing layers[\s\S]*fc1: missing from the file"):
        wh5.load_weights(top, refs("vgg16_notop").path)
    wrong_family = r"0 layer names in common[\s\S]*conv1_conv: in the file but not in the model"
    with pytest.raises(ValueError, match=wrong_family):
        wh5.load_weights(top, refs("resnet50v2_notop").path)
    assert_unchanged(top, before)


def test_native_files_passed_to_legacy_reader_get_a_pointer(vgg_notop, tmp_path):
    _, model, _ = vgg_notop
    native = tmp_path / "model.weights.h5"
    model.save_weights(native)
    renamed = tmp_path / "renamed.h5"
    shutil.copyfile(native, renamed)
    with pytest.raises(ValueError, match=r"Keras 3 native weights file[\s\S]*\.weights\.h5"):
        wh5.read_weight_file(renamed)
    archive = tmp_path / "model.zip.h5"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(ValueError, match=r"\.keras"):
        wh5.load_weights(model, archive)


# ---------------------------------------------------------------- skip_mismatch, plans, nesting


@pytest.mark.tf_keras
def test_skip_mismatch_loads_body_and_keeps_head(refs):
    ref = refs("resnet50_top")
    model = build(ref, classes=10)
    head_before = [np.array(v.numpy()) for v in model.get_layer("predictions").weights]
    message = r"predictions/kernel: model \(2048, 10\) vs file \(2048, 1000\)"
    with pytest.raises(ValueError, match=message):
        wh5.load_weights(model, ref.path)
    with pytest.warns(UserWarning, match=r"skipped layers \['predictions'\]"):
        wh5.load_weights(model, ref.path, skip_mismatch=True)
    oracle = file_weights(ref.path)
    for layer in model.layers:
        values = [v.numpy() for v in layer.trainable_weights + layer.non_trainable_weights]
        if layer.name == "predictions":
            assert all(np.array_equal(a, b) for a, b in zip(values, head_before))
        elif values:
            assert all(np.array_equal(a, b) for a, b in zip(values, oracle[layer.name]))


def test_assign_plan_casts_dtype_and_checks_everything_first():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="a"),
         keras.layers.BatchNormalization(name="bn")]
    )
    rng = np.random.default_rng(0)
    plan = {
        "a": [rng.normal(size=(4, 3)), rng.normal(size=(3,))],  # float64, cast to float32
        "bn": [rng.uniform(0.5, 1.5, (3,)) for _ in range(4)],
    }
    wh5.assign_layer_weights(model, plan, source="converted.pth")
    assert model.get_layer("a").kernel.dtype == "float32"
    np.testing.assert_array_equal(model.get_layer("bn").moving_variance.numpy(),
                                  plan["bn"][3].astype(np.float32))
    before = snapshot(model)
    bad = {"a": [np.zeros((4, 3)), np.zeros((3,))], "bn": [np.zeros((4,))] * 4}
    message = r"converted\.pth[\s\S]*bn/gamma: model \(3,\) vs file \(4,\)"
    with pytest.raises(ValueError, match=message):
        wh5.assign_layer_weights(model, bad, source="converted.pth")
    assert_unchanged(model, before)


@pytest.mark.tf_keras
def test_nested_submodel(refs, tmp_path):
    """A backbone inside a bigger model: its layers by their own names, or as one group."""
    ref = refs("vgg16_notop")
    backbone = build(ref)
    inputs = keras.Input((64, 64, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5, name="head")(features))
    head = {"head": [np.ones((512, 5), np.float32), np.zeros(5, np.float32)]}
    head |= file_weights(ref.path)
    wh5.assign_layer_weights(model, head, source="plan")
    assert_weights_equal_file(backbone, ref.path)
    whole = tmp_path / "nested.h5"
    wh5.save_weights_h5(model, whole)  # one group for the backbone, as tf-keras writes it
    assert {"head", backbone.name} <= set(wh5.read_weight_shapes(whole))
    other_backbone = build(ref)
    other = keras.Model(inputs, keras.layers.Dense(5, name="head")(
        keras.layers.GlobalAveragePooling2D()(other_backbone(inputs))))
    wh5.load_weights(other, whole)
    assert all(np.array_equal(a, b) for a, b in zip(snapshot(other), snapshot(model)))


# ---------------------------------------------------------------- writing


def test_native_round_trip(vgg_notop, tmp_path):
    ref, model, before = vgg_notop
    for path in (tmp_path / "m.weights.h5", tmp_path / "m.keras"):
        model.save(path) if path.suffix == ".keras" else model.save_weights(path)
        fresh = build(ref)
        wh5.load_weights(fresh, path)
        assert all(np.array_equal(a, b) for a, b in zip(snapshot(fresh), before))


@pytest.mark.tf_keras
def test_save_weights_h5_layout_and_tfkeras_reads_it(refs, tmp_path):
    ref = refs("resnet50v2_notop")
    model = build(ref)
    rng = np.random.default_rng(7)
    for v in model.weights:
        v.assign(seeded_value(v.name, tuple(v.shape), rng))
    path = tmp_path / "ours.h5"
    wh5.save_weights_h5(model, path)
    with h5py.File(path, "r") as f:
        assert layer_names(f) == [layer.name for layer in model.layers]  # weightless included
        assert f.attrs["backend"] in (b"tensorflow", "tensorflow")
        assert list(f["conv2_block1_preact_bn"].attrs["weight_names"]) == [
            f"conv2_block1_preact_bn/{w}:0".encode()
            for w in ("gamma", "beta", "moving_mean", "moving_variance")]
        assert f["conv1_conv/conv1_conv/kernel:0"].shape == (7, 7, 3, 64)
        assert len(f[model.layers[0].name].attrs["weight_names"]) == 0  # the input layer
        assert len(f[wh5.TOP_LEVEL_GROUP].attrs["weight_names"]) == 0
    ours = outputs(model, ref.x)
    theirs = tfkeras_outputs(ref.model, path, ref.x, include_top=ref.include_top)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())
    fresh = build(ref)
    wh5.load_weights(fresh, path)
    assert all(np.array_equal(a, b) for a, b in zip(snapshot(fresh), snapshot(model)))


def test_write_is_atomic(tmp_path, monkeypatch):
    layers = [(f"l{i}", [(f"l{i}/kernel:0", np.full((2, 2), i, np.float32))]) for i in range(5)]
    final = tmp_path / "w.h5"
    wh5.write_weight_file(final, layers[:1])
    original = final.read_bytes()
    real, calls = h5py.Group.create_dataset, []

    def failing(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) % 3 == 0:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        wh5.write_weight_file(final, layers)
    with pytest.raises(OSError, match="disk full"):
        wh5.write_weight_file(tmp_path / "new.h5", layers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"]  # no temp file, no new.h5
    assert final.read_bytes() == original
    monkeypatch.undo()
    wh5.write_weight_file(final, layers)
    assert [a[0][0, 0] for a in wh5.read_weight_file(final).values()] == [0, 1, 2, 3, 4]


def test_write_weight_file_validates_and_splits_large_attrs(tmp_path):
    w = [("k:0", np.zeros(1, np.float32))]
    with pytest.raises(ValueError, match=r"`layers` names layers more than once: \['a'\]"):
        wh5.write_weight_file(tmp_path / "x.h5", [("a", w), ("a", w)])
    message = r"`layer_names` must include every layer written; missing \['b'\]"
    with pytest.raises(ValueError, match=message):
        wh5.write_weight_file(tmp_path / "x.h5", [("b", w)], layer_names=["a"])
    many = [f"layer_with_a_long_name_{i:05d}" for i in range(3000)]  # > 64 KB of names
    wh5.write_weight_file(tmp_path / "x.h5", [(many[-1], w)], layer_names=many)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
    assert list(wh5.read_weight_file(tmp_path / "x.h5")) == [many[-1]]
    assert not list(tmp_path.glob(".*tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wh5.legacy_weight_name("conv1_conv", "kernel") == "conv1_conv/kernel:0"
