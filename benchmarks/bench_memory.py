"""Peak memory of `finetune` against the dataset size: streaming vs an in-memory cache.

Generates folders of N photos-like JPEGs (random smooth colour fields, 256x192, 2 classes),
runs `finetune` in a fresh process per (N, cache) on ResNet18 at 112 px, batch 32, one head
epoch on cached embeddings + one fine-tuning epoch, and reads the child's peak RSS (VmHWM).
The target (issue: "fine-tuning at any dataset size"): with the default `cache=None`, the
peak at 4,000 images is within 300 MB of the peak at 400.

    python benchmarks/bench_memory.py                  # 400 and 4000 images, ~10 min here
    python benchmarks/bench_memory.py --sizes 40 80 --image-size 32   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

CHILD = textwrap.dedent("""
    import json, sys, time
    from keras_vggres.transfer import finetune
    start = time.perf_counter()
    finetune(sys.argv[1], model="resnet18", weights=None, image_size=int(sys.argv[3]),
             batch_size=32, epochs_head=1, epochs_finetune=1, validation_split=0.1,
             early_stopping_patience=None, verbose=0, out_dir=sys.argv[2],
             cache=None if sys.argv[4] == "none" else sys.argv[4])
    with open("/proc/self/status") as f:
        peak = int([l for l in f if l.startswith("VmHWM")][0].split()[1]) // 1024
    print(json.dumps({"peak_rss_mb": peak, "seconds": round(time.perf_counter() - start, 1)}))
""")
TARGET_MB = 300


def make_folder(root, count, *, size=(256, 192), seed=0):
    """`count` JPEGs in two class folders: smooth random colour fields (photo-like entropy)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = Path(root) / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
        img.save(folder / f"img_{i:05d}.jpg", quality=90)
    return root


def measure(data_dir, image_size, cache):
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(data_dir), out, str(image_size),
                               cache], capture_output=True, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(400, 4000))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--caches", nargs="+", default=["none", "memory"])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = {"machine": f"{os.cpu_count()} CPUs", "image_size": args.image_size, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {n: make_folder(Path(tmp) / f"n{n}", n) for n in args.sizes}
        for cache in args.caches:
            peaks = {}
            for n in args.sizes:
                run = measure(folders[n], args.image_size, cache)
                peaks[n] = run["peak_rss_mb"]
                results["runs"].append({"images": n, "cache": cache, **run})
                print(f"cache={cache:<6} {n:>6} images: peak RSS {run['peak_rss_mb']:>6} MB "
                      f"({run['seconds']} s)", flush=True)
            small, large = args.sizes
            growth = peaks[large] - peaks[small]
            verdict = "within" if growth <= TARGET_MB else "OVER"
            print(f"cache={cache}: {large} vs {small} images: +{growth} MB ({verdict} the "
                  f"{TARGET_MB} MB target{'' if cache == 'none' else '; informational'})")
    results["date"] = time.strftime("%Y-%m-%d")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
