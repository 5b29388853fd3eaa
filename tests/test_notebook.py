"""The quick-start notebook runs top to bottom, offline, with its reload in a fresh kernel.

This is the acceptance test of the user's journey: a model from a local weights file, the
sample photos classified, VGG vs ResNet measured, fine-tuning on a generated folder, Grad-CAM,
the saved model reloaded in a new kernel (and by plain Keras) predicting with the run's class
names, features extracted.
"""

import importlib.util
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebook",
                                                  REPO / "examples" / "run_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def test_the_committed_notebook_has_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    assert "same outputs: True" in _stdout(nb)
    fresh = [c for c in code if "fresh-kernel" in c.metadata.get("tags", [])]
    assert len(fresh) == 1 and "load_run" in fresh[0].source


def test_the_notebook_runs_top_to_bottom_offline(tmp_path, monkeypatch):
    start = time.perf_counter()
    nb, _ = _runner().run_notebook(NOTEBOOK, env={"KERAS_VGGRES_QUICKSTART_DIR":
                                                  str(tmp_path / "work"),
                                                  "KERAS_VGGRES_OFFLINE": "1"})
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    out = _stdout(nb)
    assert "same outputs: True" in out and "classes: ('blue_squares'" in out
    assert "vgg19" in out and "resnet152" in out and "GMACs" in out
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 4  # the comparison plot, the curves, the confusion matrix, Grad-CAM
    assert (tmp_path / "work" / "run" / "model.keras").is_file()
    assert time.perf_counter() - start < 600
