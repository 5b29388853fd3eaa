"""benchmarks/gpu.py: its MAC counter against torchvision's published GFLOPS, a `--smoke` run on
the CPU under JAX (the JSON it writes), and a real run refusing a machine without GPU/TPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import keras_vggres
from keras_vggres.costs import count_costs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"
RESULTS = REPO / "benchmarks" / "results_gpu.json"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module




def _published_gmacs(model_name, tag):
    """torchvision's GFLOPS in our manifest (which are multiply-accumulates)."""
    with open(REPO / "keras_vggres" / "weights_manifest.json") as f:
        return json.load(f)["models"][model_name]["tags"][tag]["gflops"]


@pytest.mark.parametrize("builder, kwargs, model_name", [
    ("ResNet18", {}, "resnet18"), ("ResNet50", {"variant": "v1.5"}, "resnet50"),
    ("VGG16", {}, "vgg16"),
])
def test_mac_counter_matches_torchvision_gflops(builder, kwargs, model_name):
    model = getattr(keras_vggres, builder)(weights=None, **kwargs)
    counted = count_costs(model).macs / 1e9
    assert counted == pytest.approx(_published_gmacs(model_name, "tv1"), rel=1e-3)
    keras.backend.clear_session()


def _run(*args, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.jax
def test_smoke_run_on_jax_writes_its_json(tmp_path):
    before = RESULTS.stat().st_mtime_ns if RESULTS.exists() else None
    out = tmp_path / "smoke.json"
    result = _run("--smoke", "--models", "resnet18,vgg16", "--peak-tflops", "0.5",
                  "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    env = report["environment"]
    assert (env["backend"], env["policy"], env["xla"], env["smoke"]) == (
        "jax", "mixed_bfloat16", True, True)
    assert env["devices"]["count"] >= 1 and env["distribution"].startswith("DataParallel")
    assert (env["image_size"], env["steps"], env["warmup_steps"]) == (32, 2, 1)
    assert list(report["models"]) == ["resnet18", "vgg16"]
    for name, builder in (("resnet18", "ResNet18"), ("vgg16", "VGG16")):
        entry = report["models"][name]
        model = getattr(keras_vggres, builder)(weights=None, input_shape=(32, 32, 3))
        assert entry["forward_gmacs_per_image"] == round(count_costs(model).macs / 1e9, 4)
        assert entry["train_gflops_per_image"] == pytest.approx(
            6 * entry["forward_gmacs_per_image"], abs=1e-3)
        for phase, batch in (("train", "2"), ("inference", "1")):
            figures = entry[phase][batch]
            step = figures["step_ms"]
            assert figures["images_per_s"] > 0 and figures["timed_steps"] == 2
            assert 0 < step["p10"] <= step["median"] <= step["p90"]
            assert figures["mfu"] == pytest.approx(figures["achieved_tflops"] / 0.5, abs=2e-4)
        keras.backend.clear_session()
    assert (RESULTS.stat().st_mtime_ns if RESULTS.exists() else None) == before


@pytest.mark.jax
def test_a_real_run_needs_a_gpu_and_writes_nothing():
    before = RESULTS.stat().st_mtime_ns if RESULTS.exists() else None
    result = _run("--models", "resnet18", timeout=300)
    assert result.returncode != 0
    assert "No GPU or TPU visible to JAX" in result.stderr and "--smoke" in result.stderr
    assert (RESULTS.stat().st_mtime_ns if RESULTS.exists() else None) == before
