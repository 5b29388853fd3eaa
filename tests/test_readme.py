"""The README's Python snippets run as written (offline: the manifest is pointed at generated
weight files with the same names, so `weights="imagenet"` / `"tv2"` resolve locally)."""

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python_blocks():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _block(start):
    return next(b for b in _python_blocks() if b.startswith(start))


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    """Generated ResNet50 files for the `keras` (v1, with top) and `tv2` (v1.5, no top) tags,
    under the manifest's own file names, and a manifest override pointing at them."""
    import keras_vggres
    from keras_vggres.weights import manifest
    from keras_vggres.weights.h5 import save_weights_h5

    cache = tmp_path_factory.mktemp("cache")
    records = {}
    for tag, kwargs in (("keras", dict(variant="v1")),
                        ("tv2", dict(variant="v1.5", include_top=False))):
        model = keras_vggres.ResNet50(weights=None, **kwargs)
        real = manifest.get_weights("resnet50", tag)
        kind = "top" if kwargs.get("include_top", True) else "notop"
        name = f"readme_{tag}_{kind}.h5"
        save_weights_h5(model, cache / name)
        body = (cache / name).read_bytes()
        record = json.loads(json.dumps(manifest.list_weights("resnet50")[tag]))
        record = {k: record[k] for k in ("source", "variant", "preprocess", "transform",
                                         "metrics", "params", "gflops", "license")}
        record.update(format="keras-h5", files={kind: {
            "name": name, "url": "https://example.invalid/" + name, "size": len(body),
            "md5": hashlib.md5(body).hexdigest()}})
        records[tag] = record
        assert real.preprocess == record["preprocess"]
    path = cache / "manifest.json"
    path.write_text(json.dumps({"schema": 1, "models": {"resnet50": {"tags": records}}}))
    return {"KERAS_VGGRES_MANIFEST": str(path), "KERAS_VGGRES_HOME": str(cache),
            "KERAS_VGGRES_OFFLINE": "1"}


def _run(code, env, tmp_path):
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quick_start_runs_as_written(local_weights, tmp_path):
    out = _run(_block("from keras_vggres import ResNet50, load_images"), local_weights, tmp_path)
    assert out.count("n0") >= 5  # five (wnid, name, score) tuples printed


def test_reload_anywhere_snippet_runs_as_written(local_weights, tmp_path):
    code = "import keras_vggres\n" + _block("model = keras_vggres.ResNet50(weights=\"tv2\"")
    _run(f"import os\nos.chdir({str(tmp_path)!r})\n" + code, local_weights, tmp_path)
    assert (tmp_path / "backbone.keras").is_file()


def test_every_python_block_is_valid_and_the_readme_is_finished():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "@@" not in text  # no placeholder left for a figure
    blocks = _python_blocks()
    assert len(blocks) >= 8
    for block in blocks:
        compile(textwrap.dedent(block), "README.md", "exec")
