"""First vs second `ResNet50(weights="tv2")` load: conversion from .pth, then the cached HDF5.

The real file cannot be downloaded here, so a torchvision-layout ResNet50 state dict with
random weights (same size and keys as resnet50-11ad3fa6.pth) is generated with PyTorch, served
from a directory mirror through a private manifest, and loaded the way a user's would be.

    python benchmarks/bench_torchvision_load.py [--model resnet50]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
import keras_vggres
keras_vggres.get_model(sys.argv[1], weights=None)  # warm-up: first build pays one-off costs
t = time.perf_counter()
keras_vggres.get_model(sys.argv[1], weights=None)
t_random = time.perf_counter() - t
t = time.perf_counter()
keras_vggres.get_model(sys.argv[1], weights="tv1")
print(f"RESULT {time.perf_counter() - t:.3f} {t_random:.3f}")
"""


def make_fixture(model_name, folder):
    """A generated torchvision .pth in `folder` and a manifest that points tv1 at it."""
    sys.path.insert(0, str(REPO))
    from tests.support.torch_reference import make_state_dict_file

    tmp = folder / "tmp.pth"
    make_state_dict_file(model_name, tmp)
    body = tmp.read_bytes()
    name = f"{model_name}-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    mirror = folder / "mirror"
    mirror.mkdir()
    tmp.rename(mirror / name)
    record = {"source": "torchvision", "format": "torch-pth", "variant": "v1.5",
              "files": {"top": {"name": name, "url": f"https://example.invalid/{name}",
                                "size": len(body), "sha256_prefix": name[-12:-4]}},
              "preprocess": "torch",
              "transform": {"resize": 256, "crop": 224, "interpolation": "bilinear"},
              "metrics": {"top1": None, "top5": None}, "params": None, "gflops": None,
              "license": "test"}
    if model_name in ("resnet18", "resnet34") or model_name.startswith("vgg"):
        record["variant"] = None
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"schema": 1, "models": {model_name: {
        "default": "tv1", "tags": {"tv1": record}}}}))
    return mirror, manifest, len(body)


def timed_load(model_name, env):
    out = subprocess.run([sys.executable, "-c", CHILD, model_name], env=env, check=True,
                         capture_output=True, text=True).stdout
    build_load, build_random = (float(v) for v in out.split("RESULT ")[1].split())
    return build_load, build_random


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mirror, manifest, size = make_fixture(args.model, folder)
        env = dict(os.environ, KERAS_VGGRES_MANIFEST=str(manifest), KERAS_VGGRES_MIRROR=str(mirror),
                   KERAS_VGGRES_HOME=str(folder / "cache"), KERAS_VGGRES_OFFLINE="1",
                   TF_CPP_MIN_LOG_LEVEL="3")
        first, random_first = timed_load(args.model, env)
        second, random_second = timed_load(args.model, env)
        cached = sorted(p.name for p in (folder / "cache").iterdir())
    print(json.dumps({"model": args.model, "pth_bytes": size, "first_load_s": round(first, 2),
                      "second_load_s": round(second, 2),
                      "build_weights_none_s": round(min(random_first, random_second), 2),
                      "cache": cached}, indent=1))


if __name__ == "__main__":
    main()
