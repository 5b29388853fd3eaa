"""Hostile HDF5 weight files: each attack is built with h5py and must be refused, model untouched.

Legacy attacks target the LAST layer's kernel, so a loader that assigned before checking would
already have overwritten the first layers when it noticed: `assert_unchanged` sees that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
import zlib

import h5py
import keras
import numpy as np
import pytest

from keras_vggres.weights import UnsafeWeightsError, load_weights
from keras_vggres.weights.assign import assign_layer_weights
from keras_vggres.weights.h5 import save_weights_h5

KERNEL = "d2/d2/kernel:0"  # the last layer's kernel in our legacy layout, shape (4, 3)
SHAPE = (4, 3)


def tiny_model(dtype=None):
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, name="d1", dtype=dtype)(inputs)
    x = keras.layers.BatchNormalization(name="bn", dtype=dtype)(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="d2", dtype=dtype)(x), name="tiny")


def randomized(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, tuple(v.shape)).astype(v.dtype))
    return model


def snapshot(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


@pytest.fixture()
def legacy(tmp_path):
    """A legacy file of one random model, a second file holding real-looking weights, and a
    differently-randomized model to load into."""
    source = randomized(tiny_model(), 1)
    path = tmp_path / "w.h5"
    save_weights_h5(source, path)
    with h5py.File(tmp_path / "other.h5", "w") as f:  # what an attacker links to
        f["kernel"] = keras.ops.convert_to_numpy(source.get_layer("d2").kernel)
        f["d2/d2/kernel:0"] = f["kernel"][()]
        f["d2/d2/bias:0"] = keras.ops.convert_to_numpy(source.get_layer("d2").bias)
    model = randomized(tiny_model(), 2)
    return path, model, snapshot(model)


def edited(path, name, edit):
    out = path.with_name(name)
    shutil.copyfile(path, out)
    with h5py.File(out, "r+") as f:
        edit(f, path.parent)
    return out


def replace_kernel(**create):
    def edit(f, folder):
        del f[KERNEL]
        f.create_dataset(KERNEL, **create)
    return edit


def _external_link(f, folder):
    del f[KERNEL]
    f[KERNEL] = h5py.ExternalLink(str(folder / "other.h5"), "/kernel")


def _external_layer_group(f, folder):
    del f["d2"]
    f["d2"] = h5py.ExternalLink(str(folder / "other.h5"), "/d2")


def _soft_link_out(f, folder):
    f["escape"] = h5py.ExternalLink(str(folder / "other.h5"), "/kernel")
    del f[KERNEL]
    f[KERNEL] = h5py.SoftLink("/escape")


def _vds(source_file, fillvalue=None):
    def edit(f, folder):
        layout = h5py.VirtualLayout(SHAPE, "f4")
        layout[:] = h5py.VirtualSource(str(folder / source_file), "kernel", shape=SHAPE)
        del f[KERNEL]
        f.create_virtual_dataset(KERNEL, layout, fillvalue=fillvalue)
    return edit


def _external_raw(f, folder):
    raw = folder / "raw.bin"
    raw.write_bytes(np.ones(SHAPE, "f4").tobytes())
    del f[KERNEL]
    f.create_dataset(KERNEL, shape=SHAPE, dtype="f4", external=[(str(raw), 0, 48)])


def _half_chunks(f, folder):
    del f[KERNEL]
    f.create_dataset(KERNEL, shape=SHAPE, dtype="f4", chunks=(2, 3))[:2] = 1.0


def _value(array):
    def edit(f, folder):
        del f[KERNEL]
        f[KERNEL] = array
    return edit


def _with(value, dtype="f8"):
    array = np.ones(SHAPE, dtype)
    array[2, 1] = value
    return array


HOSTILE_LEGACY = {
    "external_link": (_external_link, ["external link", "other.h5"]),
    "external_layer_group": (_external_layer_group, ["layer 'd2'", "external link"]),
    "soft_link_out": (_soft_link_out, ["external link", "other.h5"]),
    "vds_other_file": (_vds("other.h5"), ["virtual dataset", "other.h5"]),
    "vds_missing_source": (_vds("missing.h5", fillvalue=0), ["virtual dataset", "missing.h5"]),
    "external_raw": (_external_raw, ["external raw files", "raw.bin"]),
    "unallocated_chunks": (replace_kernel(shape=SHAPE, dtype="f4", chunks=(2, 3)),
                           ["only 0 of its 2 chunks"]),
    "half_written_chunks": (_half_chunks, ["only 1 of its 2 chunks"]),
    "contiguous_never_written": (replace_kernel(shape=SHAPE, dtype="f4"), ["never written"]),
    "chunk_bigger_than_data": (replace_kernel(data=np.ones(SHAPE, "f4"), chunks=(1 << 16, 3),
                                              maxshape=(None, 3)), ["chunk shape (65536, 3)"]),
    "nan": (_value(_with(np.nan, "f4")), ["not finite", "nan", "(2, 1)", "allow_nonfinite"]),
    "inf": (_value(_with(-np.inf, "f4")), ["not finite", "-inf", "(2, 1)"]),
    "float64_overflow": (_value(_with(1e300)), ["1e+300", "overflows float32", "(2, 1)"]),
    "bool": (_value(np.ones(SHAPE, bool)), ["dtype bool", "not a floating-point type",
                                            "float32 weight is expected"]),
    "int64_huge": (_value(np.full(SHAPE, 2**62, np.int64)), ["dtype int64",
                                                            "not a floating-point type"]),
    "strings": (_value(np.full(SHAPE, b"0.5")), ["dtype |S3", "not numeric"]),
    "compound": (_value(np.zeros(SHAPE, [("a", "f4"), ("b", "f4")])), ["not numeric"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_LEGACY))
def test_hostile_legacy_file_is_refused_and_model_unchanged(legacy, case):
    path, model, before = legacy
    edit, words = HOSTILE_LEGACY[case]
    bad = edited(path, f"{case}.h5", edit)
    with pytest.raises(UnsafeWeightsError) as err:
        load_weights(model, bad)
    for word in words + [str(bad), "'d2'"]:
        assert word in str(err.value), (word, str(err.value))
    assert_unchanged(model, before)


def test_allow_nonfinite_loads_nan_but_not_bool(legacy):
    path, model, _ = legacy
    load_weights(model, edited(path, "nan.h5", _value(_with(np.nan, "f4"))), allow_nonfinite=True)
    kernel = keras.ops.convert_to_numpy(model.get_layer("d2").kernel)
    assert np.isnan(kernel[2, 1]) and np.isfinite(np.delete(kernel.ravel(), 7)).all()
    with pytest.raises(UnsafeWeightsError, match="dtype bool"):
        load_weights(model, edited(path, "bool.h5", _value(np.ones(SHAPE, bool))),
                     allow_nonfinite=True)
    with pytest.raises(TypeError, match="allow_nonfinite"):
        load_weights(model, path, allow_nonfinite="yes")


def test_soft_link_inside_the_file_is_followed(legacy):
    path, model, _ = legacy

    def alias(f, folder):
        f["spare"] = f[KERNEL][()] * 2
        del f[KERNEL]
        f[KERNEL] = h5py.SoftLink("/spare")

    load_weights(model, edited(path, "alias.h5", alias))
    with h5py.File(path) as f:
        expected = f[KERNEL][()] * 2
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("d2").kernel),
                                  expected)


def test_converted_plan_with_nan_is_refused():
    """The `.pth` path assigns NumPy plans through the same checks."""
    model = randomized(tiny_model(), 3)
    before = snapshot(model)
    plan = {layer.name: [np.array(keras.ops.convert_to_numpy(v)) for v in
                         layer.trainable_weights + layer.non_trainable_weights]
            for layer in model.layers if layer.weights}
    plan["d2"][0][1, 1] = np.inf
    with pytest.raises(UnsafeWeightsError, match=r"converted\.pth', layer 'd2'.*not finite"):
        assign_layer_weights(model, plan, source="converted.pth")
    assert_unchanged(model, before)


# ---------------------------------------------------------------- Keras 3 native files


def native_file(tmp_path, name="w.weights.h5"):
    source = randomized(tiny_model(), 1)
    path = tmp_path / name
    source.save(path) if name.endswith(".keras") else source.save_weights(path)
    return path


def native_kernel(f):
    """The native dataset holding d2's kernel (Keras names groups by class, not layer)."""
    found = []
    f.visititems(lambda n, o: found.append(n) if getattr(o, "shape", None) == SHAPE else None)
    assert len(found) == 1, found
    return found[0]


def edit_native(path, edit):
    with h5py.File(path, "r+") as f:
        name = native_kernel(f)
        edit(f, name)
    return path


def _native_replace(**create):
    def edit(f, name):
        del f[name]
        f.create_dataset(name, **create)
    return edit


def test_native_bad_last_layer_leaves_model_unchanged(tmp_path):
    path = edit_native(native_file(tmp_path), _native_replace(data=np.ones((4, 2), "f4")))
    keras_own = randomized(tiny_model(), 2)
    own_before = snapshot(keras_own)
    with pytest.raises(ValueError), pytest.warns(UserWarning, match="Skipping nested container"):
        keras_own.load_weights(path)  # the control: Keras alone leaves the model half-loaded
    assert any(not np.array_equal(a, b) for a, b in zip(snapshot(keras_own), own_before))

    model = randomized(tiny_model(), 2)
    before = snapshot(model)
    with pytest.raises(ValueError) as err:
        load_weights(model, path)
    assert "nothing was loaded" in "\n".join(getattr(err.value, "__notes__", []))
    assert_unchanged(model, before)


class NestedPair(keras.layers.Layer):
    """Two Dense layers kept in a list of lists: Keras writes each inner list as a `container`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [[keras.layers.Dense(2)], [keras.layers.Dense(2)]]

    def build(self, shape):
        for (dense,) in self.blocks:
            dense.build(shape)

    def call(self, x):
        return self.blocks[0][0](x) + self.blocks[1][0](x)


def _nested_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    return keras.Model(inputs, NestedPair()(inputs))


def test_native_file_missing_a_nested_container_is_a_partial_load_and_refused(tmp_path):
    """A file like those older Keras wrote, without one nested-container group: Keras loads it
    with only a warning and leaves that Dense freshly initialised; strict loading refuses it."""
    path = str(tmp_path / "nested.weights.h5")
    _nested_model(1).save_weights(path)
    with h5py.File(path, "a") as f:
        del f["layers/nested_pair/blocks/container"]  # Keras names the group by class

    keras_own = _nested_model(2)
    own_before = snapshot(keras_own)
    with pytest.warns(UserWarning, match="Skipping nested container"):
        keras_own.load_weights(path)  # the control: no error, first kernel left as it was
    np.testing.assert_array_equal(snapshot(keras_own)[0], own_before[0])

    model = _nested_model(2)
    before = snapshot(model)
    with pytest.raises(ValueError, match="does not hold every variable.*skip_mismatch=True") as err:
        load_weights(model, path)
    assert "nothing was loaded" in "\n".join(getattr(err.value, "__notes__", []))
    assert_unchanged(model, before)

    with pytest.warns(UserWarning, match="Skipping nested container"):
        load_weights(model, path, skip_mismatch=True)  # the best-effort mode still says so
    assert not np.array_equal(snapshot(model)[2], before[2])  # the second Dense did load


def test_keras_archive_missing_a_nested_container_is_refused_too(tmp_path):
    """The same partial file inside a `.keras` archive: refused, not loaded by the nested-model
    fallback (which would load the archive whole and meet the same silent skip)."""
    original = str(tmp_path / "nested.keras")
    _nested_model(1).save(original)
    weights = tmp_path / "model.weights.h5"
    with zipfile.ZipFile(original) as archive:
        weights.write_bytes(archive.read("model.weights.h5"))
        others = {n: archive.read(n) for n in archive.namelist() if n != "model.weights.h5"}
    with h5py.File(weights, "a") as f:
        del f["layers/nested_pair/blocks/container"]
    path = str(tmp_path / "partial.keras")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in others.items():
            archive.writestr(name, data)
        archive.write(weights, "model.weights.h5")
    model = _nested_model(2)
    before = snapshot(model)
    with pytest.raises(ValueError, match="does not hold every variable"):
        load_weights(model, path)
    assert_unchanged(model, before)


HOSTILE_NATIVE = {
    "nan": (_native_replace(data=_with(np.nan, "f4")), ["not finite", "nan"]),
    "float64_overflow": (_native_replace(data=_with(-1e39)), ["overflows float32"]),
    "int64": (_native_replace(data=np.full(SHAPE, 2**62, np.int64)), ["dtype int64"]),
    "unallocated": (_native_replace(shape=SHAPE, dtype="f4", chunks=(1, 3)), ["only 0 of its 4"]),
    "huge_claim": (_native_replace(shape=(30000, 30000), dtype="f4", chunks=(1000, 1000)),
                   ["declares shape (30000, 30000)", "largest variable"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_NATIVE))
def test_hostile_native_weights_are_refused(tmp_path, case):
    edit, words = HOSTILE_NATIVE[case]
    path = edit_native(native_file(tmp_path), edit)
    model = randomized(tiny_model(), 2)
    before = snapshot(model)
    with pytest.raises(UnsafeWeightsError) as err:
        load_weights(model, path)
    for word in words + [str(path), "dataset 'layers/"]:
        assert word in str(err.value), (word, str(err.value))
    assert_unchanged(model, before)


def test_native_external_link_and_vds_are_refused(tmp_path):
    path = native_file(tmp_path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["kernel"] = np.ones(SHAPE, "f4")
    model = randomized(tiny_model(), 2)
    before = snapshot(model)

    def link(f, name):
        del f[name]
        f[name] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/kernel")

    def vds(f, name):
        layout = h5py.VirtualLayout(SHAPE, "f4")
        layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "kernel", shape=SHAPE)
        del f[name]
        f.create_virtual_dataset(name, layout)

    for edit, word in ((link, "external link"), (vds, "virtual dataset")):
        bad = tmp_path / f"{edit.__name__}.weights.h5"
        shutil.copyfile(path, bad)
        with pytest.raises(UnsafeWeightsError, match=word):
            load_weights(model, edit_native(bad, edit))
        assert_unchanged(model, before)


def test_keras_archive_with_nan_inside_is_refused(tmp_path):
    path = native_file(tmp_path, "m.keras")
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model.weights.h5":
                inner = tmp_path / "inner.h5"
                inner.write_bytes(data)
                edit_native(inner, _native_replace(data=_with(np.nan, "f4")))
                data = inner.read_bytes()
            dst.writestr(item, data)
    model = randomized(tiny_model(), 2)
    before = snapshot(model)
    with pytest.raises(UnsafeWeightsError, match=r"bad\.keras' \(its model\.weights\.h5\)"
                                                 r"[\s\S]*not finite"):
        load_weights(model, bad)
    assert_unchanged(model, before)
    load_weights(model, bad, allow_nonfinite=True)
    assert np.isnan(keras.ops.convert_to_numpy(model.get_layer("d2").kernel)[2, 1])


def test_native_round_trips_still_load(tmp_path):
    """Legit native files pass the checks: .keras with optimizer state, bfloat16 weights."""
    source = randomized(tiny_model(), 1)
    source.compile("adam", "mse")
    source.fit(np.ones((4, 5)), np.ones((4, 3)), verbose=0)  # optimizer: int64 `iterations`
    source.save(tmp_path / "m.keras")
    model = tiny_model()
    load_weights(model, tmp_path / "m.keras")
    for a, b in zip(snapshot(model), snapshot(source)):
        np.testing.assert_array_equal(a, b)
    half = randomized(tiny_model("bfloat16"), 4)
    half.save_weights(tmp_path / "half.weights.h5")
    fresh = tiny_model("bfloat16")
    load_weights(fresh, tmp_path / "half.weights.h5")
    for a, b in zip(snapshot(fresh), snapshot(half)):
        np.testing.assert_array_equal(a, b)


def test_sharded_weights_index_checks_every_shard(tmp_path):
    source = randomized(tiny_model(), 1)
    index = tmp_path / "w.weights.json"
    source.save_weights(index, max_shard_size=1e-7)  # ~100 bytes: one shard per layer
    model = randomized(tiny_model(), 2)
    load_weights(model, index)
    for a, b in zip(snapshot(model), snapshot(source)):
        np.testing.assert_array_equal(a, b)
    model = randomized(tiny_model(), 2)
    before = snapshot(model)
    shards = json.loads(index.read_text())["weight_map"]
    last = tmp_path / shards["/layers/dense_1/vars"][0]
    edit_native(last, _native_replace(data=_with(np.inf, "f4")))
    with pytest.raises(UnsafeWeightsError, match=rf"shard '{last.name}'.*not finite"):
        load_weights(model, index)
    config = json.loads(index.read_text())
    config["weight_map"]["/layers/dense_1/vars"] = ["../elsewhere.weights.h5"]
    index.write_text(json.dumps(config))
    with pytest.raises(UnsafeWeightsError, match=r"'\.\./elsewhere\.weights\.h5' is not a plain"):
        load_weights(model, index)
    assert_unchanged(model, before)


# ---------------------------------------------------------------- bounded memory


_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import keras
    from keras_vggres.weights import load_weights
    sys.path.insert(0, sys.argv[1])
    from test_h5_hostile import tiny_model

    model = tiny_model()
    model(keras.ops.ones((1, 5)))
    def peak_mb():  # VmHWM: this process's own peak (ru_maxrss can carry the parent's)
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"before_mb": peak_mb(), "backend": keras.backend.backend(),
              "tensorflow": "tensorflow" in sys.modules}
    for path in sys.argv[2:]:
        try:
            load_weights(model, path)
            report[path] = "loaded"
        except ValueError as err:
            report[path] = str(err)
        report[path + " peak_mb"] = peak_mb()
    print(json.dumps(report))
""")


def test_huge_chunked_claims_cost_no_memory(legacy, tmp_path):
    """30000 x 30000 float32 (3.6 GB) claimed by small files: refused from metadata alone."""
    path, _, _ = legacy
    claim = dict(shape=(30000, 30000), dtype="f4", chunks=(1000, 1000), compression="gzip")

    def written(f, folder):  # every chunk really written: 900 compressed zero chunks
        del f[KERNEL]
        dset = f.create_dataset(KERNEL, **claim)
        compressed = zlib.compress(np.zeros((1000, 1000), "f4").tobytes(), 9)
        for i in range(30):
            for j in range(30):
                dset.id.write_direct_chunk((i * 1000, j * 1000), compressed)

    unwritten = edited(path, "claim_unwritten.h5", replace_kernel(**claim))
    full = edited(path, "claim_written.h5", written)
    native = edit_native(native_file(tmp_path, "claim.weights.h5"), _native_replace(**claim))
    files = [str(unwritten), str(full), str(native)]
    env = dict(os.environ, KERAS_BACKEND="numpy", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, os.path.dirname(__file__), *files],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    shape_error = "d2/kernel: model (4, 3) vs file (30000, 30000)"
    assert shape_error in report[files[0]] and shape_error in report[files[1]]
    assert "declares shape (30000, 30000)" in report[files[2]]
    peak = max(report[f + " peak_mb"] for f in files)
    print(f"peak RSS {peak:.0f} MB (before loading: {report['before_mb']:.0f} MB)")
    assert peak < 1024 and peak - report["before_mb"] < 100, report
